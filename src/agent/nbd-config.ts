/**
 * The agent's `nbd` config section: who may reach the exports.
 *
 * Default: a Unix socket in the state directory, mode 0600, no TCP. TCP only
 * when `listen` is set; TLS (STARTTLS) with a PSK file and/or an X.509
 * certificate, `tls: "require"` refusing plaintext.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { z } from 'zod';
import { ConfigError, describeError } from '../errors.js';
import { loadPskFile, type NbdTlsOptions } from '../nbd/index.js';

/** `"host:port"` of a TCP listener (also `metrics.listen`). */
export const listenSchema = z
  .string()
  .regex(/^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})$/, 'expected "host:port", e.g. "127.0.0.1:10809"')
  .refine((s) => Number(s.slice(s.lastIndexOf(':') + 1)) <= 65535, 'port must be 0..65535');

export const nbdConfigSchema = z
  .strictObject({
    /** TCP listener; none unless set. */
    listen: listenSchema.optional(),
    /** Unix socket path (default `<stateDir>/nbd.sock`); false: no Unix socket. */
    socket: z.union([z.string().min(1), z.literal(false)]).optional(),
    /** Octal permission bits of the socket, e.g. "0660"; never wider than 0770. */
    socketMode: z
      .string()
      .regex(/^0?[0-7]{3}$/, 'expected octal permission bits such as "0600" or "0660"')
      .refine((s) => (parseInt(s, 8) & 0o007) === 0, 'other users must not connect: use at most 0770')
      .optional(),
    /** Group (name or gid) owning the socket: with socketMode "0660", its members may connect. */
    socketGroup: z.union([z.string().regex(/^[A-Za-z_][A-Za-z0-9_.-]{0,31}$/, 'expected a group name'), z.number().int().min(0)]).optional(),
    /** "require": plaintext refused (NBD_REP_ERR_TLS_REQD); "allow": TLS optional; "off". Default: "require" when credentials are set, else "off". */
    tls: z.enum(['off', 'allow', 'require']).optional(),
    /** psktool-format key file (`identity:hexkey` lines). */
    tlsPsk: z.string().min(1).optional(),
    /** Server certificate chain and key (PEM). */
    tlsCert: z.string().min(1).optional(),
    tlsKey: z.string().min(1).optional(),
    /** CA (PEM) that client certificates must chain to: clients without a valid one are refused. */
    tlsCa: z.string().min(1).optional(),
    handshakeTimeoutMs: z.number().int().min(100).max(600_000).optional(),
    idleTimeoutMs: z.number().int().min(0).max(86_400_000).optional(),
    maxConnections: z.number().int().min(1).max(4096).optional(),
    maxConnectionsPerPeer: z.number().int().min(1).max(4096).optional(),
  })
  .default({});

type RawNbdConfig = z.output<typeof nbdConfigSchema>;

export interface AgentNbdConfig {
  tcp?: { host: string; port: number };
  socket?: string;
  socketMode: number;
  socketGid?: number;
  tls?: NbdTlsOptions;
  handshakeTimeoutMs?: number;
  idleTimeoutMs?: number;
  maxConnections?: number;
  maxConnectionsPerPeer?: number;
}

/** Resolves paths, reads TLS credentials and the group; throws ConfigError naming `nbd.<field>`. */
export function resolveNbdConfig(raw: RawNbdConfig, abs: (p: string) => string, stateDir: string): AgentNbdConfig {
  const socket = raw.socket === false ? undefined : raw.socket !== undefined ? abs(raw.socket) : join(stateDir, 'nbd.sock');
  const tcp = raw.listen !== undefined ? parseListen(raw.listen) : undefined;
  if (!socket && !tcp) throw new ConfigError('invalid agent config: nbd: with socket false, nbd.listen must be set');
  if (!socket && (raw.socketMode !== undefined || raw.socketGroup !== undefined)) {
    throw new ConfigError('invalid agent config: nbd.socketMode/socketGroup need a Unix socket');
  }
  const tls = resolveTls(raw, abs);
  const pick = <K extends 'handshakeTimeoutMs' | 'idleTimeoutMs' | 'maxConnections' | 'maxConnectionsPerPeer'>(k: K): Partial<Record<K, number>> =>
    (raw[k] !== undefined ? { [k]: raw[k] } : {}) as Partial<Record<K, number>>;
  return {
    ...(tcp ? { tcp } : {}),
    ...(socket ? { socket } : {}),
    socketMode: raw.socketMode !== undefined ? parseInt(raw.socketMode, 8) : 0o600,
    ...(raw.socketGroup !== undefined ? { socketGid: resolveGroup(raw.socketGroup) } : {}),
    ...(tls ? { tls } : {}),
    ...pick('handshakeTimeoutMs'),
    ...pick('idleTimeoutMs'),
    ...pick('maxConnections'),
    ...pick('maxConnectionsPerPeer'),
  };
}

export function parseListen(listen: string): { host: string; port: number } {
  const lastColon = listen.lastIndexOf(':');
  let host = listen.slice(0, lastColon);
  if (host.startsWith('[')) host = host.slice(1, -1);
  return { host, port: Number(listen.slice(lastColon + 1)) };
}

function resolveTls(raw: RawNbdConfig, abs: (p: string) => string): NbdTlsOptions | undefined {
  const hasCreds = raw.tlsPsk !== undefined || raw.tlsCert !== undefined || raw.tlsKey !== undefined || raw.tlsCa !== undefined;
  const mode = raw.tls ?? (hasCreds ? 'require' : 'off');
  if (mode === 'off') {
    if (hasCreds) throw new ConfigError('invalid agent config: nbd.tls is "off" but TLS credentials are set');
    return undefined;
  }
  if (!hasCreds) throw new ConfigError(`invalid agent config: nbd.tls "${mode}" needs nbd.tlsPsk or nbd.tlsCert + nbd.tlsKey`);
  if ((raw.tlsCert === undefined) !== (raw.tlsKey === undefined)) throw new ConfigError('invalid agent config: nbd.tlsCert and nbd.tlsKey go together');
  const pem = (field: string, p: string | undefined): Partial<Record<string, Buffer>> => {
    if (p === undefined) return {};
    try {
      return { [field]: readFileSync(abs(p)) };
    } catch (err) {
      throw new ConfigError(`invalid agent config: nbd.tls${field[0]!.toUpperCase()}${field.slice(1)}: cannot read "${abs(p)}": ${describeError(err)}`, { cause: err });
    }
  };
  return {
    mode,
    ...(raw.tlsPsk !== undefined ? { psk: loadPskFile(abs(raw.tlsPsk)) } : {}),
    ...pem('cert', raw.tlsCert),
    ...pem('key', raw.tlsKey),
    ...pem('ca', raw.tlsCa),
  };
}

/** A group name through NSS (`getent`), so LDAP/SSSD groups work as well as /etc/group. */
function resolveGroup(group: string | number): number {
  if (typeof group === 'number') return group;
  try {
    const line = execFileSync('getent', ['group', group], { encoding: 'utf8', timeout: 5000 });
    const gid = Number(line.split(':')[2]);
    if (Number.isInteger(gid) && gid >= 0) return gid;
  } catch (err) {
    throw new ConfigError(`invalid agent config: nbd.socketGroup: no group "${group}"`, { cause: err });
  }
  throw new ConfigError(`invalid agent config: nbd.socketGroup: no group "${group}"`);
}
