/**
 * NbdServer: serves named BlockDevices over NBD (fixed newstyle) on TCP and/or
 * a Unix socket, for real clients: qemu (nbd://), qemu-io, qemu-img, nbdcopy,
 * nbdinfo, Linux nbd-client.
 *
 * Memory is bounded by configuration: at most maxConnections connections, each
 * with at most maxInFlightPerConnection requests and maxInFlightBytes of
 * READ/WRITE payload in flight, plus a small read-ahead buffer.
 */
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { lstat, rm } from 'node:fs/promises';
import { ConfigError, describeError } from '../errors.js';
import { NbdConnection, type ConnectionContext } from './connection.js';
import { NbdListenError } from './errors.js';
import { NBD_MAX_REQUEST_DEFAULT } from './protocol.js';
import type { NbdExportSource, NbdLogger } from './types.js';

export interface NbdServerOptions {
  /** Named exports; a Map<string, NbdExport> works. */
  exports: NbdExportSource;
  /** Export used when a client asks for the empty name (e.g. `nbd://host:port`). */
  defaultExport?: string;
  /** TCP listener; port 0 picks an ephemeral port. Omit for Unix-socket only. */
  tcp?: { host?: string; port?: number };
  /** Unix socket path. A stale socket file left by a dead process is replaced. */
  unixSocket?: string;
  /** Concurrent connections across all listeners (default 64); extra ones are closed at once. */
  maxConnections?: number;
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
  /** A client must finish option haggling within this time (default 30 s). */
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
    this.ctx = {
      stats: { requests: 0, requestsFailed: 0 },
      exports: opts.exports,
      defaultExport: opts.defaultExport,
      logger: opts.logger ?? stderrLogger,
      limits: {
        maxRequestBytes,
        maxInFlight,
        maxInFlightBytes,
        handshakeTimeoutMs: positiveInt(opts.handshakeTimeoutMs ?? 30_000, 'handshakeTimeoutMs'),
        maxOptionBytes: 64 * 1024,
      },
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
        await removeStaleSocket(path);
        const srv = this.makeServer();
        await this.listenOn(srv, { path });
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

  private listenOn(srv: Server, opts: { host: string; port: number } | { path: string }): Promise<void> {
    return new Promise((resolve, reject) => {
      const onError = (err: Error): void => reject(err);
      srv.once('error', onError);
      srv.listen(opts, () => {
        srv.off('error', onError);
        // Later errors (e.g. EMFILE on accept) must not crash the process.
        srv.on('error', (err) => this.ctx.logger.warn(`nbd: listener error: ${describeError(err)}`));
        resolve();
      });
    });
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
    if (socket.remoteAddress !== undefined) socket.setNoDelay(true); // proto.md: disable Nagle on TCP
    const conn = new NbdConnection(socket, this.ctx, this.nextId++);
    this.connections.add(conn);
    void conn.done.finally(() => this.connections.delete(conn));
  }
}

function positiveInt(v: number, name: string): number {
  if (!Number.isSafeInteger(v) || v <= 0) throw new ConfigError(`${name} must be a positive integer, got ${v}`);
  return v;
}


/**
 * A socket file left by a crashed agent makes listen() fail with EADDRINUSE.
 * Remove it only if it is a socket nobody answers on; never delete a live
 * server's socket or a non-socket file.
 */
async function removeStaleSocket(path: string): Promise<void> {
  let st;
  try {
    st = await lstat(path);
  } catch {
    return; // does not exist
  }
  if (!st.isSocket()) throw new NbdListenError(`${path} exists and is not a socket`);
  const alive = await new Promise<boolean>((resolve) => {
    const c = createConnection({ path });
    c.once('connect', () => {
      c.destroy();
      resolve(true);
    });
    c.once('error', () => resolve(false));
  });
  if (alive) throw new NbdListenError(`${path} is in use by a running server`);
  await rm(path, { force: true });
}
