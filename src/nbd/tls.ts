/**
 * TLS for the NBD server (NBD_OPT_STARTTLS, proto.md "TLS support"), with
 * pre-shared keys (the psktool file format QEMU, nbdkit and libnbd use) and/or
 * X.509 certificates, optionally verifying client certificates.
 */
import { readFileSync, statSync } from 'node:fs';
import { createSecureContext, createServer, type SecureContextOptions, type TLSSocket } from 'node:tls';
import type { Socket } from 'node:net';
import { ConfigError, describeError, NbdProtocolError } from '../errors.js';

export interface NbdTlsOptions {
  /**
   * 'require' (FORCEDTLS): every option but STARTTLS and ABORT is refused
   * with NBD_REP_ERR_TLS_REQD until TLS is up. 'allow': a client may upgrade,
   * or stay in plaintext.
   */
  mode: 'require' | 'allow';
  /** PSK identity → key. A client that knows a key is authenticated. */
  psk?: ReadonlyMap<string, Buffer>;
  /** Server certificate chain and key (PEM). */
  cert?: string | Buffer;
  key?: string | Buffer;
  /** CA (PEM) that client certificates must chain to; when set, clients without one are refused. */
  ca?: string | Buffer;
}

/** Identity of the authenticated TLS peer: the PSK identity or the client certificate's subject. */
export type TlsUpgrade = (socket: Socket) => Promise<{ socket: TLSSocket; identity: string | null }>;

/**
 * TLS 1.2 PSK suites GnuTLS clients (qemu, libnbd) offer by default, plus the
 * certificate suites of OpenSSL's defaults. TLS 1.3 suites are separate in
 * OpenSSL and always on; PSK works over TLS 1.3 too (external PSK).
 */
const PSK_CIPHERS = 'ECDHE-PSK-AES256-CBC-SHA384:ECDHE-PSK-AES128-CBC-SHA256:ECDHE-PSK-CHACHA20-POLY1305:DHE-PSK-AES256-GCM-SHA384:DHE-PSK-AES128-GCM-SHA256:PSK-AES256-GCM-SHA384:PSK-AES128-GCM-SHA256';

/** Builds the server-side STARTTLS upgrade; throws ConfigError on unusable credentials. */
export function makeTlsUpgrade(opts: NbdTlsOptions): TlsUpgrade {
  const hasCert = opts.cert !== undefined || opts.key !== undefined;
  if (hasCert && (opts.cert === undefined || opts.key === undefined)) throw new ConfigError('NBD TLS: a certificate needs both cert and key');
  if (!hasCert && (opts.psk === undefined || opts.psk.size === 0)) throw new ConfigError('NBD TLS needs a PSK file or a certificate and key');
  if (opts.ca !== undefined && !hasCert) throw new ConfigError('NBD TLS: verifying client certificates (ca) needs a server certificate and key');
  const contextOptions: SecureContextOptions = {
    minVersion: 'TLSv1.2', // proto.md: MUST support 1.2, SHOULD NOT offer older versions by default
    ...(hasCert ? { cert: opts.cert, key: opts.key } : {}),
    ...(opts.ca !== undefined ? { ca: opts.ca } : {}),
    ...(opts.psk ? { ciphers: hasCert ? `${PSK_CIPHERS}:DEFAULT` : PSK_CIPHERS } : {}),
  };
  try {
    createSecureContext(contextOptions); // unusable credentials fail at start-up, not per client
  } catch (err) {
    throw new ConfigError(`NBD TLS: unusable credentials: ${describeError(err)}`, { cause: err });
  }
  const psk = opts.psk;
  const verifyClients = opts.ca !== undefined;
  return (socket) =>
    new Promise((resolve, reject) => {
      let pskIdentity: string | null = null;
      // A tls.Server that never listens: handing it the socket ('connection')
      // runs Node's own server-side handshake and client certificate checks.
      // rejectUnauthorized stays off so a PSK client (no certificate) can pass;
      // the decision is made below, for both kinds of credentials.
      // (tls.Server builds its own context from these options; it ignores a secureContext.)
      const srv = createServer({
        ...contextOptions,
        requestCert: verifyClients,
        rejectUnauthorized: false,
        ...(psk
          ? {
              pskCallback: (_s: TLSSocket, identity: string): Buffer | null => {
                const key = psk.get(identity);
                if (key) pskIdentity = identity;
                return key ?? null;
              },
            }
          : {}),
      });
      let settled = false;
      const fail = (err: Error, tls?: TLSSocket): void => {
        if (settled) return;
        settled = true;
        tls?.destroy();
        socket.destroy();
        reject(err);
      };
      // A peer that hangs up mid-handshake produces no TLS error, only a close.
      socket.once('close', () => fail(new NbdProtocolError('connection closed during the TLS handshake')));
      srv.once('tlsClientError', (err, tls) => fail(new NbdProtocolError(`TLS handshake failed: ${describeError(err)}`, { cause: err }), tls));
      srv.once('secureConnection', (tls: TLSSocket) => {
        if (verifyClients && pskIdentity === null && !tls.authorized) {
          fail(new NbdProtocolError(`client certificate refused: ${String(tls.authorizationError ?? 'none sent')}`), tls);
          return;
        }
        settled = true;
        const subject = pskIdentity === null && verifyClients ? tls.getPeerCertificate().subject : undefined;
        resolve({ socket: tls, identity: pskIdentity !== null ? `psk:${pskIdentity}` : subject ? `x509:${subject.CN ?? JSON.stringify(subject)}` : null });
      });
      // The NBD listener is half-open (plaintext clients may shut down their
      // sending side and still read replies); wrapped in TLS, a half-open socket
      // never reports a peer that leaves before its ClientHello, so the
      // connection would linger until the handshake timeout.
      socket.allowHalfOpen = false;
      srv.emit('connection', socket);
    });
}

/**
 * Reads a psktool-format key file: one `identity:hexkey` per line. The file
 * holds secrets, so one that other users can read is refused.
 */
export function loadPskFile(path: string): Map<string, Buffer> {
  let text: string;
  try {
    if ((statSync(path).mode & 0o007) !== 0) throw new ConfigError(`NBD TLS PSK file ${path} is accessible to other users (chmod 600 it)`);
    text = readFileSync(path, 'utf8');
  } catch (err) {
    if (err instanceof ConfigError) throw err;
    throw new ConfigError(`cannot read NBD TLS PSK file ${path}: ${describeError(err)}`, { cause: err });
  }
  const keys = new Map<string, Buffer>();
  text.split('\n').forEach((raw, i) => {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) return;
    const colon = line.lastIndexOf(':');
    const identity = line.slice(0, colon);
    const hex = line.slice(colon + 1);
    // RFC 4279: identities up to 128 bytes; keys are hex (psktool writes 32 bytes).
    if (colon <= 0 || identity.length > 128 || !/^(?:[0-9a-fA-F]{2}){16,64}$/.test(hex)) {
      throw new ConfigError(`NBD TLS PSK file ${path} line ${i + 1}: expected "identity:hexkey" with a key of 16 to 64 bytes`);
    }
    keys.set(identity, Buffer.from(hex, 'hex'));
  });
  if (keys.size === 0) throw new ConfigError(`NBD TLS PSK file ${path} holds no key`);
  return keys;
}
