import { ConfigError } from '../errors.js';

/**
 * Parses an NBD listen address such as "127.0.0.1:10809", "[::1]:10809",
 * "localhost:10809", ":10809" (loopback) or "10809" (loopback). The port
 * defaults to 10809, the IANA NBD port, when only a host is given.
 */
export function parseListenAddress(s: string): { host: string; port: number } {
  const text = s.trim();
  let host: string;
  let portText: string | undefined;
  const v6 = /^\[([^\]]+)\](?::(\d*))?$/.exec(text);
  if (v6) {
    host = v6[1] as string;
    portText = v6[2];
  } else if (/^\d+$/.test(text)) {
    host = '127.0.0.1';
    portText = text;
  } else {
    const i = text.lastIndexOf(':');
    if (i >= 0 && text.indexOf(':') !== i) throw new ConfigError(`bad NBD listen address '${s}': put IPv6 hosts in brackets`);
    host = i >= 0 ? text.slice(0, i) : text;
    portText = i >= 0 ? text.slice(i + 1) : undefined;
    if (host === '') host = '127.0.0.1';
  }
  if (host === '' || /\s/.test(host)) throw new ConfigError(`bad NBD listen address '${s}': empty or invalid host`);
  if (portText === undefined || portText === '') return { host, port: 10809 };
  const port = Number(portText);
  if (!/^\d+$/.test(portText) || port > 65535) {
    throw new ConfigError(`bad NBD listen address '${s}': port must be 0-65535`);
  }
  return { host, port };
}
