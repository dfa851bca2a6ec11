/**
 * QMP client over a Unix socket (qemu/docs/interop/qmp-spec.rst in QEMU's sources).
 *
 * Wire: one JSON object per line ("\r\n" terminated). On connect the server
 * sends a greeting {"QMP": {version, capabilities}}; the client must send
 * `qmp_capabilities` before any other command. Replies are {"return"} or
 * {"error": {class, desc}} and echo the command's "id"; events
 * {"event", "data", "timestamp"} can arrive at any time, interleaved.
 *
 * We tag every command with a unique id and correlate replies by it, so
 * several commands may be in flight. Lines are bounded (maxLineBytes): a
 * peer that never sends a newline cannot make us buffer without limit.
 */
import { EventEmitter } from 'node:events';
import { connect, type Socket } from 'node:net';
import { QmpCommandError, QmpConnectionError, QmpTimeoutError } from './errors.js';

export interface QmpVersion {
  major: number;
  minor: number;
  micro: number;
  package: string;
}

export interface QmpEvent {
  event: string;
  data: Record<string, unknown>;
  timestamp?: { seconds: number; microseconds: number };
}

export interface QmpClientOptions {
  /** Connect + greeting + negotiation timeout (ms). */
  connectTimeoutMs?: number;
  /** Default per-command timeout (ms). */
  commandTimeoutMs?: number;
  /** Longest accepted line; query-qmp-schema is ~200 KiB on 7.2. */
  maxLineBytes?: number;
  /** Events kept for waitForEvent() callers that subscribe late. */
  eventBacklog?: number;
}

interface Pending {
  command: string;
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout | null;
}

const DEFAULTS = {
  connectTimeoutMs: 5_000,
  commandTimeoutMs: 30_000,
  maxLineBytes: 16 * 1024 * 1024,
  eventBacklog: 256,
};

/** Splits a byte stream into lines, bounded by maxLineBytes. Exported for unit tests. */
export class LineSplitter {
  private parts: Buffer[] = [];
  private size = 0;

  constructor(private readonly maxLineBytes: number) {}

  /** Feeds a chunk; returns complete lines (without the terminator). Throws when a line is too long. */
  push(chunk: Buffer): string[] {
    const lines: string[] = [];
    let start = 0;
    for (;;) {
      const nl = chunk.indexOf(0x0a, start);
      if (nl < 0) break;
      const piece = chunk.subarray(start, nl);
      if (this.size + piece.length > this.maxLineBytes) throw new QmpConnectionError(`QMP line longer than ${this.maxLineBytes} bytes`);
      this.parts.push(piece);
      let line = Buffer.concat(this.parts).toString('utf8');
      if (line.endsWith('\r')) line = line.slice(0, -1);
      this.parts = [];
      this.size = 0;
      if (line.trim() !== '') lines.push(line);
      start = nl + 1;
    }
    const rest = chunk.subarray(start);
    if (rest.length > 0) {
      if (this.size + rest.length > this.maxLineBytes) throw new QmpConnectionError(`QMP line longer than ${this.maxLineBytes} bytes`);
      this.parts.push(Buffer.from(rest));
      this.size += rest.length;
    }
    return lines;
  }
}

/**
 * A connected, negotiated QMP session. Emits 'event' (QmpEvent) for every
 * asynchronous event and 'close' when the socket goes away.
 */
export class QmpClient extends EventEmitter {
  readonly version: QmpVersion;
  readonly capabilities: string[];
  private readonly pending = new Map<string, Pending>();
  private readonly backlog: QmpEvent[] = [];
  private nextId = 1;
  private closedError: Error | null = null;

  private constructor(
    private readonly socket: Socket,
    private readonly opts: Required<QmpClientOptions>,
    readonly path: string,
    greeting: { version: QmpVersion; capabilities: string[] },
  ) {
    super();
    this.version = greeting.version;
    this.capabilities = greeting.capabilities;
  }

  /** Connects to a QMP Unix socket, reads the greeting and negotiates capabilities. */
  static async connect(path: string, options: QmpClientOptions = {}): Promise<QmpClient> {
    const opts = { ...DEFAULTS, ...options };
    const socket = connect({ path });
    const splitter = new LineSplitter(opts.maxLineBytes);
    let client: QmpClient | null = null;
    const early: unknown[] = [];
    let earlyWaiter: ((v: unknown) => void) | null = null;
    let earlyFail: ((e: Error) => void) | null = null;

    const timer = setTimeout(() => {
      const e = new QmpTimeoutError(`no QMP greeting from ${path} within ${opts.connectTimeoutMs} ms (not a QMP socket, or another client holds it: a QEMU monitor serves one client at a time)`);
      earlyFail?.(e);
      socket.destroy();
    }, opts.connectTimeoutMs);

    const onMessage = (msg: unknown): void => {
      if (client) client.onMessage(msg);
      else if (earlyWaiter) {
        const w = earlyWaiter;
        earlyWaiter = null;
        w(msg);
      } else early.push(msg);
    };
    socket.on('data', (chunk: Buffer) => {
      let lines: string[];
      try {
        lines = splitter.push(chunk);
      } catch (err) {
        fail(err as Error);
        return;
      }
      for (const line of lines) {
        let msg: unknown;
        try {
          msg = JSON.parse(line);
        } catch (err) {
          fail(new QmpConnectionError(`QMP peer at ${path} sent a line that is not JSON: ${line.slice(0, 80)}`, { cause: err }));
          return;
        }
        onMessage(msg);
      }
    });
    const fail = (err: Error): void => {
      if (client) client.shutdown(err);
      else earlyFail?.(err);
      socket.destroy();
    };
    socket.on('error', (err: NodeJS.ErrnoException) => {
      const hint = err.code === 'ENOENT' ? 'no such socket' : err.code === 'ECONNREFUSED' ? 'nothing listens there' : err.code === 'EACCES' ? 'permission denied' : err.message;
      fail(new QmpConnectionError(`cannot connect to QMP socket ${path}: ${hint}`, { cause: err }));
    });
    socket.on('close', () => fail(new QmpConnectionError(`QMP connection to ${path} closed`)));

    const nextMessage = (): Promise<unknown> =>
      new Promise<unknown>((resolve, reject) => {
        if (early.length > 0) return resolve(early.shift());
        earlyWaiter = resolve;
        earlyFail = reject;
      });

    try {
      const greeting = (await nextMessage()) as { QMP?: { version?: { qemu?: { major: number; minor: number; micro: number }; package?: string }; capabilities?: string[] } };
      const g = greeting?.QMP;
      if (!g || typeof g.version?.qemu?.major !== 'number') throw new QmpConnectionError(`${path} is not a QMP socket (no {"QMP": ...} greeting)`);
      const version: QmpVersion = { ...g.version.qemu, package: String(g.version.package ?? '') };
      client = new QmpClient(socket, opts, path, { version, capabilities: Array.isArray(g.capabilities) ? g.capabilities : [] });
      socket.removeAllListeners('close');
      socket.on('close', () => client?.shutdown(new QmpConnectionError(`QMP connection to ${path} closed`)));
      for (const m of early.splice(0)) client.onMessage(m);
      earlyFail = null;
      await client.execute('qmp_capabilities', {}, opts.connectTimeoutMs);
      return client;
    } catch (err) {
      socket.destroy();
      throw err;
    } finally {
      clearTimeout(timer);
    }
  }

  get closed(): boolean {
    return this.closedError !== null;
  }

  /** Runs a command; resolves with its "return" value, rejects with QmpCommandError. */
  execute<T = unknown>(command: string, args?: Record<string, unknown>, timeoutMs = this.opts.commandTimeoutMs): Promise<T> {
    if (this.closedError) return Promise.reject(this.closedError);
    const id = `cs-${this.nextId++}`;
    const msg: Record<string, unknown> = { execute: command, id };
    if (args && Object.keys(args).length > 0) msg.arguments = args;
    return new Promise<T>((resolve, reject) => {
      const p: Pending = { command, resolve: resolve as (v: unknown) => void, reject, timer: null };
      if (timeoutMs > 0) {
        p.timer = setTimeout(() => {
          this.pending.delete(id);
          reject(new QmpTimeoutError(`QMP ${command} got no reply within ${timeoutMs} ms`));
        }, timeoutMs);
      }
      this.pending.set(id, p);
      this.socket.write(JSON.stringify(msg) + '\n');
    });
  }

  /**
   * Resolves with the first event matching `predicate` — including events
   * received shortly before the call (kept in a bounded backlog), so a
   * caller that issues a command and then waits cannot miss a fast event.
   */
  waitForEvent(predicate: (e: QmpEvent) => boolean, timeoutMs = this.opts.commandTimeoutMs, opts: { includeBacklog?: boolean } = {}): Promise<QmpEvent> {
    if (opts.includeBacklog !== false) {
      const hit = this.backlog.find(predicate);
      if (hit) return Promise.resolve(hit);
    }
    if (this.closedError) return Promise.reject(this.closedError);
    return new Promise<QmpEvent>((resolve, reject) => {
      const onEvent = (e: QmpEvent): void => {
        if (!predicate(e)) return;
        cleanup();
        resolve(e);
      };
      const onClose = (err: Error): void => {
        cleanup();
        reject(err);
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(new QmpTimeoutError(`awaited QMP event did not arrive within ${timeoutMs} ms`));
      }, timeoutMs);
      const cleanup = (): void => {
        clearTimeout(timer);
        this.off('event', onEvent);
        this.off('close', onClose);
      };
      this.on('event', onEvent);
      this.on('close', onClose);
    });
  }

  /** Async iterator over events from now on (ends when the connection closes). */
  async *events(): AsyncGenerator<QmpEvent> {
    const queue: QmpEvent[] = [];
    let wake: (() => void) | null = null;
    let done = false;
    const onEvent = (e: QmpEvent): void => {
      // Bounded: a consumer that stops pulling loses the oldest events, never memory.
      if (queue.length >= this.opts.eventBacklog) queue.shift();
      queue.push(e);
      wake?.();
    };
    const onClose = (): void => {
      done = true;
      wake?.();
    };
    this.on('event', onEvent);
    this.on('close', onClose);
    try {
      for (;;) {
        if (queue.length > 0) {
          yield queue.shift() as QmpEvent;
          continue;
        }
        if (done || this.closedError) return;
        await new Promise<void>((r) => (wake = r));
        wake = null;
      }
    } finally {
      this.off('event', onEvent);
      this.off('close', onClose);
    }
  }

  /** Closes the connection; pending commands fail. */
  async close(): Promise<void> {
    if (this.closedError) return;
    this.shutdown(new QmpConnectionError('QMP client closed'));
    await new Promise<void>((r) => {
      if (this.socket.destroyed) return r();
      this.socket.once('close', () => r());
      this.socket.end();
      setTimeout(() => {
        this.socket.destroy();
        r();
      }, 500).unref();
    });
  }

  private onMessage(msg: unknown): void {
    if (typeof msg !== 'object' || msg === null) return;
    const m = msg as { id?: unknown; return?: unknown; error?: { class?: unknown; desc?: unknown }; event?: unknown; data?: unknown; timestamp?: unknown };
    if (typeof m.event === 'string') {
      const ev: QmpEvent = { event: m.event, data: (m.data as Record<string, unknown>) ?? {}, timestamp: m.timestamp as QmpEvent['timestamp'] };
      this.backlog.push(ev);
      if (this.backlog.length > this.opts.eventBacklog) this.backlog.shift();
      this.emit('event', ev);
      return;
    }
    if (typeof m.id !== 'string') return; // replies to commands we did not send (no id) are ignored
    const p = this.pending.get(m.id);
    if (!p) return;
    this.pending.delete(m.id);
    if (p.timer) clearTimeout(p.timer);
    if (m.error) p.reject(new QmpCommandError(p.command, String(m.error.class ?? 'GenericError'), String(m.error.desc ?? 'unknown error')));
    else p.resolve(m.return);
  }

  private shutdown(err: Error): void {
    if (this.closedError) return;
    this.closedError = err;
    for (const [, p] of this.pending) {
      if (p.timer) clearTimeout(p.timer);
      p.reject(err);
    }
    this.pending.clear();
    this.emit('close', err);
  }
}
