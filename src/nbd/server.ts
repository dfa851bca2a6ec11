/**
 * NbdServer: serves named BlockDevices over NBD (fixed newstyle) on TCP and/or
 * a Unix socket, for real clients: qemu (nbd://), qemu-io, qemu-img, nbdcopy,
 * nbdinfo, Linux nbd-client.
 *
 * Access: the Unix socket is private from its first instant (unix-socket.ts);
 * TLS via NBD_OPT_STARTTLS (tls.ts), "require" refusing plaintext; a
 * per-peer connection limit and handshake/idle timeouts so that one client
 * cannot hold every slot.
 *
 * Memory is bounded by configuration: at most maxConnections connections, each
 * with at most maxInFlightPerConnection requests and maxInFlightBytes of
 * READ/WRITE payload in flight, plus a small read-ahead buffer.
 */
import { createServer, type Server, type Socket } from 'node:net';
import { rm } from 'node:fs/promises';
import { ConfigError, describeError } from '../errors.js';
import { NbdConnection, type ConnectionContext } from './connection.js';
import { NbdListenError } from './errors.js';
import { NBD_MAX_REQUEST_DEFAULT } from './protocol.js';
import type { NbdExportSource, NbdLogger } from './types.js';
import { makeTlsUpgrade, type NbdTlsOptions } from './tls.js';
import { listenPrivateSocket } from './unix-socket.js';

export interface NbdServerOptions {
  /** Named exports; a Map<string, NbdExport> works. */
  exports: NbdExportSource;
  /** Export used when a client asks for the empty name (e.g. `nbd://host:port`). */
  defaultExport?: string;
  /** TCP listener; port 0 picks an ephemeral port. Omit for Unix-socket only. */
  tcp?: { host?: string; port?: number };
  /**
   * Unix socket path. A stale socket file left by a dead process is replaced.
   * Mode 0600 from its first instant (see unix-socket.ts), then unixSocketMode/Gid.
   */
  unixSocket?: string;
  /** Permission bits of the Unix socket (default 0o600, at most 0o770). */
  unixSocketMode?: number;
  /** Group of the Unix socket (with a group-writable mode, the users who may connect). */
  unixSocketGid?: number;
  /** STARTTLS with PSK and/or X.509 credentials; absent: no TLS (NOTLS mode). */
  tls?: NbdTlsOptions;
  /** Concurrent connections across all listeners (default 64); extra ones are closed at once. */
  maxConnections?: number;
  /**
   * Concurrent connections per peer (default 16): per TCP address, and per
   * TLS identity once authenticated, so that one client cannot take every
   * slot. Unix-socket clients without TLS are not counted per peer (the
   * socket's mode and group decide who they are).
   */
  maxConnectionsPerPeer?: number;
  /** Close connections idle this long with nothing in flight (default 0: never; guests may idle for hours). */
  idleTimeoutMs?: number;
  /**
   * Largest READ/WRITE length (default 32 MiB, the size the spec says clients
   * should stay within); advertised as the maximum block size. Larger READs
   * get EINVAL; larger WRITEs get EINVAL and a disconnect (payload not buffered).
   */
  maxRequestBytes?: number;
  /** Requests processed concurrently per connection (default 16). */
  maxInFlightPerConnection?: number;
  /** READ+WRITE bytes in flight per connection (default 64 MiB, at least maxRequestBytes). */
  maxInFlightBytesPerConnection?: number;
  /** A client must finish option haggling, TLS included, within this time (default 10 s). */
  handshakeTimeoutMs?: number;
  logger?: NbdLogger;
}

export interface NbdServerAddresses {
  tcp?: { host: string; port: number };
  unixSocket?: string;
}

export interface NbdServerStats {
  connections: number;
  requests: number;
  requestsFailed: number;
}

const stderrLogger: NbdLogger = {
  warn: (msg) => process.stderr.write(`${msg}\n`),
};

export class NbdServer {
  private readonly ctx: ConnectionContext;
  private readonly maxConnections: number;
  private readonly maxPerPeer: number;
  /** Open connections per peer key (TCP address or TLS identity). */
  private readonly perPeer = new Map<string, number>();
  private readonly peerOf = new Map<NbdConnection, string>();
  private readonly servers: Server[] = [];
  private readonly connections = new Set<NbdConnection>();
  private nextId = 1;
  private closing: Promise<void> | null = null;
  private addrs: NbdServerAddresses = {};

  constructor(private readonly opts: NbdServerOptions) {
    if (!opts.tcp && !opts.unixSocket) throw new ConfigError('NbdServer needs a tcp listener and/or a unixSocket path');
    const maxRequestBytes = opts.maxRequestBytes ?? NBD_MAX_REQUEST_DEFAULT;
    // The advertised maximum block size must be a multiple of the minimum
    // block size (up to 64 KiB), so keep it a multiple of 64 KiB.
    if (!Number.isSafeInteger(maxRequestBytes) || maxRequestBytes < 65536 || maxRequestBytes % 65536 !== 0 || maxRequestBytes > 0xffffffff) {
      throw new ConfigError(`maxRequestBytes must be a multiple of 64 KiB below 4 GiB, got ${maxRequestBytes}`);
    }
    const maxInFlight = positiveInt(opts.maxInFlightPerConnection ?? 16, 'maxInFlightPerConnection');
    const maxInFlightBytes = Math.max(
      positiveInt(opts.maxInFlightBytesPerConnection ?? 64 * 1024 * 1024, 'maxInFlightBytesPerConnection'),
      maxRequestBytes,
    );
    this.maxConnections = positiveInt(opts.maxConnections ?? 64, 'maxConnections');
    this.maxPerPeer = positiveInt(opts.maxConnectionsPerPeer ?? 16, 'maxConnectionsPerPeer');
    const idleTimeoutMs = opts.idleTimeoutMs ?? 0;
    if (!Number.isSafeInteger(idleTimeoutMs) || idleTimeoutMs < 0) throw new ConfigError(`idleTimeoutMs must be a non-negative integer, got ${idleTimeoutMs}`);
    this.ctx = {
      stats: { requests: 0, requestsFailed: 0 },
      exports: opts.exports,
      defaultExport: opts.defaultExport,
      logger: opts.logger ?? stderrLogger,
      limits: {
        maxRequestBytes,
        maxInFlight,
        maxInFlightBytes,
        handshakeTimeoutMs: positiveInt(opts.handshakeTimeoutMs ?? 10_000, 'handshakeTimeoutMs'),
        idleTimeoutMs,
        maxOptionBytes: 64 * 1024,
      },
      ...(opts.tls
        ? { tls: { mode: opts.tls.mode, upgrade: makeTlsUpgrade(opts.tls), onAuthenticated: (c, id) => this.onAuthenticated(c, id) } }
        : {}),
    };
  }

  /** Starts the listeners; resolves with the bound addresses (the real TCP port if 0 was asked). */
  async listen(): Promise<NbdServerAddresses> {
    if (this.servers.length > 0) throw new NbdListenError('NbdServer is already listening');
    try {
      if (this.opts.tcp) {
        const srv = this.makeServer();
        const host = this.opts.tcp.host ?? '127.0.0.1';
        await this.listenOn(srv, { host, port: this.opts.tcp.port ?? 10809 });
        const a = srv.address();
        if (a && typeof a === 'object') this.addrs.tcp = { host: a.address, port: a.port };
      }
      if (this.opts.unixSocket) {
        const path = this.opts.unixSocket;
        const srv = this.makeServer();
        await listenPrivateSocket(srv, path, {
          ...(this.opts.unixSocketMode !== undefined ? { mode: this.opts.unixSocketMode } : {}),
          ...(this.opts.unixSocketGid !== undefined ? { gid: this.opts.unixSocketGid } : {}),
        });
        this.watchErrors(srv);
        this.addrs.unixSocket = path;
      }
    } catch (err) {
      await this.close();
      throw err instanceof NbdListenError ? err : new NbdListenError(`NBD listen failed: ${describeError(err)}`, { cause: err });
    }
    return this.addresses;
  }

  get addresses(): NbdServerAddresses {
    return { ...this.addrs };
  }

  /** Open connections (handshake or transmission). */
  get connectionCount(): number {
    return this.connections.size;
  }

  /** Counters for status output and tests: open connections, requests received, requests answered with an error. */
  stats(): NbdServerStats {
    return { connections: this.connections.size, ...this.ctx.stats };
  }

  /**
   * Closes the listeners and every connection. Connections in transmission
   * stop reading new requests, finish and answer the in-flight ones, then close.
   */
  close(): Promise<void> {
    this.closing ??= this.doClose();
    return this.closing;
  }

  private async doClose(): Promise<void> {
    const listenersClosed = this.servers.map(
      (s) => new Promise<void>((resolve) => (s.listening ? s.close(() => resolve()) : resolve())),
    );
    await Promise.all([...this.connections].map((c) => c.shutdown()));
    await Promise.all(listenersClosed);
    if (this.addrs.unixSocket) await rm(this.addrs.unixSocket, { force: true }).catch(() => undefined);
  }

  private listenOn(srv: Server, opts: { host: string; port: number }): Promise<void> {
    return new Promise((resolve, reject) => {
      const onError = (err: Error): void => reject(err);
      srv.once('error', onError);
      srv.listen(opts, () => {
        srv.off('error', onError);
        this.watchErrors(srv);
        resolve();
      });
    });
  }

  /** Later errors (e.g. EMFILE on accept) must not crash the process. */
  private watchErrors(srv: Server): void {
    srv.on('error', (err) => this.ctx.logger.warn(`nbd: listener error: ${describeError(err)}`));
  }

  private makeServer(): Server {
    // allowHalfOpen: a client that shuts down its sending side still gets the
    // replies to requests it already sent; we end the socket ourselves.
    const srv = createServer({ allowHalfOpen: true }, (socket) => this.onConnection(socket));
    this.servers.push(srv);
    return srv;
  }

  private onConnection(socket: Socket): void {
    if (this.closing) {
      socket.destroy();
      return;
    }
    if (this.connections.size >= this.maxConnections) {
      this.ctx.logger.warn(`nbd: refusing connection: ${this.maxConnections} connections already open`);
      socket.on('error', () => undefined);
      socket.destroy();
      return;
    }
    const address = socket.remoteAddress;
    const peer = address !== undefined ? `addr:${normalizeAddress(address)}` : null;
    if (peer !== null && (this.perPeer.get(peer) ?? 0) >= this.maxPerPeer) {
      this.ctx.logger.warn(`nbd: refusing connection from ${address}: it already has ${this.maxPerPeer} connections open`);
      socket.on('error', () => undefined);
      socket.destroy();
      return;
    }
    if (address !== undefined) socket.setNoDelay(true); // proto.md: disable Nagle on TCP
    const conn = new NbdConnection(socket, this.ctx, this.nextId++);
    this.connections.add(conn);
    if (peer !== null) this.countPeer(conn, peer);
    void conn.done.finally(() => {
      this.connections.delete(conn);
      this.uncountPeer(conn);
    });
  }

  /** After TLS: the connection counts against its authenticated identity instead of its address. */
  private onAuthenticated(conn: NbdConnection, identity: string | null): boolean {
    if (identity === null) return true;
    this.uncountPeer(conn);
    if ((this.perPeer.get(identity) ?? 0) >= this.maxPerPeer) {
      this.ctx.logger.warn(`nbd: refusing ${identity}: it already has ${this.maxPerPeer} connections open`);
      return false;
    }
    this.countPeer(conn, identity);
    return true;
  }

  private countPeer(conn: NbdConnection, peer: string): void {
    this.peerOf.set(conn, peer);
    this.perPeer.set(peer, (this.perPeer.get(peer) ?? 0) + 1);
  }

  private uncountPeer(conn: NbdConnection): void {
    const peer = this.peerOf.get(conn);
    if (peer === undefined) return;
    this.peerOf.delete(conn);
    const n = (this.perPeer.get(peer) ?? 1) - 1;
    if (n <= 0) this.perPeer.delete(peer);
    else this.perPeer.set(peer, n);
  }
}

/** '::ffff:10.0.0.1' and '10.0.0.1' are the same peer. */
function normalizeAddress(a: string): string {
  return a.startsWith('::ffff:') && a.includes('.') ? a.slice(7) : a.toLowerCase();
}

function positiveInt(v: number, name: string): number {
  if (!Number.isSafeInteger(v) || v <= 0) throw new ConfigError(`${name} must be a positive integer, got ${v}`);
  return v;
}


