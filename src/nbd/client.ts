/**
 * NBD client (doc/proto.md of NetworkBlockDevice/nbd): fixed newstyle
 * handshake, NBD_OPT_STRUCTURED_REPLY, NBD_OPT_SET_META_CONTEXT, NBD_OPT_GO;
 * READ with structured replies (OFFSET_DATA / OFFSET_HOLE / ERROR, parsed
 * synchronously as bytes arrive: reply-parser.ts),
 * BLOCK_STATUS and DISC. Requests are pipelined: up to `maxInFlight` are
 * outstanding, replies are matched by cookie in any order.
 *
 * Every length on the wire is checked against what we asked for before any
 * allocation, so a hostile server cannot make us allocate by a wire field.
 */
import { connect, type Socket } from 'node:net';
import { NbdProtocolError } from '../errors.js';
import {
  NBD_CMD_BLOCK_STATUS,
  NBD_CMD_DISC,
  NBD_CMD_READ,
  NBD_CMD_WRITE,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_FLAG_FIXED_NEWSTYLE,
  NBD_FLAG_NO_ZEROES,
  NBD_FLAG_READ_ONLY,
  NBD_GREETING_SIZE,
  NBD_INFO_BLOCK_SIZE,
  NBD_INFO_EXPORT,
  NBD_MAX_REQUEST_DEFAULT,
  NBD_OPT_GO,
  NBD_OPT_SET_META_CONTEXT,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_OPTION_REPLY_HEADER_SIZE,
  NBD_REP_ACK,
  NBD_REP_INFO,
  NBD_REP_META_CONTEXT,
  NBD_REPLY_FLAG_DONE,
  NBD_REPLY_TYPE_BLOCK_STATUS,
  NBD_REPLY_TYPE_NONE,
  NBD_REPLY_TYPE_OFFSET_DATA,
  NBD_REPLY_TYPE_OFFSET_HOLE,
  NBD_CMD_FLAG_REQ_ONE,
  NBD_CMD_FLAG_DF,
  NBD_FLAG_SEND_DF,
  decodeBlockStatusPayload,
  decodeInfo,
  decodeMetaContextReply,
  decodeOptionReplyHeader,
  decodeServerGreeting,
  decodeStructuredError,
  encodeClientFlags,
  encodeInfoRequest,
  encodeMetaContextRequest,
  encodeOption,
  encodeRequest,
  isOptionReplyError,
  isReplyTypeError,
  optionName,
  type BlockStatusExtent,
} from './protocol.js';
import {
  NBD_CLIENT_MAX_BLOCK_STATUS_PAYLOAD,
  NBD_CLIENT_MAX_ERROR_PAYLOAD,
  NBD_CLIENT_MAX_OPTION_REPLY,
  NbdOptionError,
  NbdRemoteError,
  nbdErrnoName,
} from './client-protocol.js';
import { NbdConnectionClosedError, SocketReader } from './socket-reader.js';
import { ReplyParser, type ReplyHandler } from './reply-parser.js';

/** The connection's one read buffer (net `onread`); replies stream through it. */
const READ_BUFFER_BYTES = 256 * 1024;

export type NbdClientAddress = { path: string } | { host: string; port: number };

export interface NbdClientOptions {
  exportName: string;
  /** Meta contexts to negotiate (e.g. base:allocation, qemu:dirty-bitmap:NAME). All must be granted. */
  metaContexts?: string[];
  /** Requests outstanding at once (pipelining bound). Default 8. */
  maxInFlight?: number;
  /** Handshake timeout (ms). Default 10 s. */
  connectTimeoutMs?: number;
}

export interface BlockStatusResult {
  /** Extents per negotiated context name, starting at the requested offset. */
  contexts: Map<string, BlockStatusExtent[]>;
}

interface PendingRead {
  kind: 'read';
  offset: number;
  length: number;
  /** The caller's `into` buffer, or allocated (sized by the request) when the first chunk arrives. */
  buf: Buffer | null;
  /** Bytes covered by data/hole chunks so far (chunks must not overlap, proto.md). */
  covered: number;
  error: NbdRemoteError | null;
  resolve: (b: Buffer) => void;
  reject: (e: Error) => void;
}

interface PendingStatus {
  kind: 'status';
  offset: number;
  length: number;
  contexts: Map<string, BlockStatusExtent[]>;
  error: NbdRemoteError | null;
  resolve: (r: BlockStatusResult) => void;
  reject: (e: Error) => void;
}

interface PendingWrite {
  kind: 'write';
  offset: number;
  length: number;
  error: NbdRemoteError | null;
  resolve: () => void;
  reject: (e: Error) => void;
}

type Pending = PendingRead | PendingStatus | PendingWrite;

/** A connected NBD client in transmission phase. */
export class NbdClient {
  readonly size: number;
  readonly transmissionFlags: number;
  readonly readOnly: boolean;
  /** Server block size constraints (NBD_INFO_BLOCK_SIZE) or defaults. */
  readonly blockSize: { min: number; preferred: number; max: number };
  /** Granted meta contexts: name → id. */
  readonly metaContexts: Map<string, number>;
  private readonly contextNames = new Map<number, string>();
  private readonly pending = new Map<bigint, Pending>();
  private nextCookie = 1n;
  private inFlight = 0;
  private readonly slotWaiters: (() => void)[] = [];
  private failure: Error | null = null;
  private readonly maxInFlight: number;
  /** Settles once the connection has failed or closed (close() waits for it). */
  private readonly ended: Promise<void>;
  private markEnded: () => void = () => undefined;
  private readonly parser: ReplyParser;

  private constructor(
    private readonly socket: Socket,
    transport: { leftover: Buffer[]; deliverTo(feed: (bytes: Buffer) => void): void },
    info: { size: number; flags: number; blockSize: { min: number; preferred: number; max: number }; contexts: Map<string, number> },
    maxInFlight: number,
  ) {
    this.size = info.size;
    this.transmissionFlags = info.flags;
    this.readOnly = (info.flags & NBD_FLAG_READ_ONLY) !== 0;
    this.blockSize = info.blockSize;
    this.metaContexts = info.contexts;
    for (const [name, id] of info.contexts) this.contextNames.set(id, name);
    this.maxInFlight = maxInFlight;
    this.ended = new Promise<void>((r) => (this.markEnded = r));
    // Replies are parsed synchronously in the socket's read callback
    // (reply-parser.ts). Nothing is held back: read data goes straight into
    // the requests' buffers (≤ maxInFlight × maxRequest), so the socket is
    // never paused and memory stays bounded by configuration.
    this.parser = new ReplyParser(this.replyHandler(), (err) => this.fail(err));
    for (const c of transport.leftover) this.parser.feed(c);
    transport.deliverTo((bytes) => this.parser.feed(bytes));
    const closed = (): void => this.fail(new NbdConnectionClosedError('NBD server closed the connection'));
    socket.on('end', closed);
    socket.on('close', closed);
    socket.on('error', (err) => this.fail(new NbdConnectionClosedError(`NBD connection failed: ${err.message}`, { cause: err })));
    // Flowing mode, so 'end' is emitted (the bytes themselves go through onread).
    socket.resume();
    if (socket.readableEnded || socket.destroyed) closed();
  }

  /** Connects, negotiates and enters transmission. */
  static async connect(address: NbdClientAddress, options: NbdClientOptions): Promise<NbdClient> {
    // One reused read buffer per connection (net `onread`): the socket
    // allocates nothing per read, and the reply parser copies each byte from
    // it straight to its destination. With 64 KiB reads that halves the
    // garbage of a pull-mode backup.
    let deliver: (bytes: Buffer) => void = () => undefined;
    const onread = {
      buffer: Buffer.allocUnsafe(READ_BUFFER_BYTES),
      callback: (n: number, buf: Uint8Array): boolean => {
        deliver((buf as Buffer).subarray(0, n));
        return true;
      },
    };
    const socket = 'path' in address ? connect({ path: address.path, onread }) : connect({ host: address.host, port: address.port, onread });
    socket.setNoDelay?.(true);
    const where = 'path' in address ? address.path : `${address.host}:${address.port}`;
    const reader = new SocketReader(socket, 8 * 1024 * 1024, { push: true });
    deliver = (bytes) => reader.push(bytes);
    const timeoutMs = options.connectTimeoutMs ?? 10_000;
    let timer: NodeJS.Timeout | undefined;
    const connectErr = new Promise<never>((_, reject) => {
      socket.once('error', (err: NodeJS.ErrnoException) =>
        reject(new NbdProtocolError(`cannot connect to NBD server ${where}: ${err.code ?? err.message}`, { cause: err })),
      );
      timer = setTimeout(() => reject(new NbdProtocolError(`NBD handshake with ${where} timed out after ${timeoutMs} ms`)), timeoutMs);
    });
    connectErr.catch(() => undefined);
    try {
      const info = await Promise.race([handshake(socket, reader, options), connectErr]);
      const transport = { leftover: reader.detach(), deliverTo: (feed: (bytes: Buffer) => void): void => void (deliver = feed) };
      return new NbdClient(socket, transport, info, Math.max(1, options.maxInFlight ?? 8));
    } catch (err) {
      socket.destroy();
      throw err;
    } finally {
      clearTimeout(timer);
    }
  }

  /** Largest single request we issue: the server's max block size, capped at 32 MiB (proto.md). */
  get maxRequest(): number {
    return Math.min(this.blockSize.max, NBD_MAX_REQUEST_DEFAULT);
  }

  /**
   * Reads `length` bytes at `offset` (holes come back as zeroes).
   * `noFragment` sets NBD_CMD_FLAG_DF (when the server offers it): one
   * OFFSET_DATA chunk, no server-side hole detection — see extent-reader.ts
   * for why QEMU 7.2's snapshot-access needs that.
   */
  async read(offset: number, length: number, opts: { noFragment?: boolean; into?: Buffer } = {}): Promise<Buffer> {
    this.checkRange(offset, length);
    if (opts.into !== undefined && opts.into.length < length) throw new NbdProtocolError(`read of ${length} bytes into a ${opts.into.length}-byte buffer`);
    await this.acquire();
    const df = opts.noFragment === true && (this.transmissionFlags & NBD_FLAG_SEND_DF) !== 0;
    return new Promise<Buffer>((resolve, reject) => {
      const buf = opts.into !== undefined ? opts.into.subarray(0, length) : null;
      const p: PendingRead = { kind: 'read', offset, length, buf, covered: 0, error: null, resolve, reject };
      this.send(p, NBD_CMD_READ, df ? NBD_CMD_FLAG_DF : 0);
    });
  }

  /** Writes `data` at `offset` (used by benchmarks/tests as a "guest"). */
  async write(offset: number, data: Buffer): Promise<void> {
    this.checkRange(offset, data.length);
    if (this.readOnly) throw new NbdProtocolError('export is read-only');
    await this.acquire();
    return new Promise<void>((resolve, reject) => {
      const p: PendingWrite = { kind: 'write', offset, length: data.length, error: null, resolve, reject };
      this.send(p, NBD_CMD_WRITE, 0, data);
    });
  }

  /**
   * BLOCK_STATUS for [offset, offset+length) in every negotiated context.
   * The server may describe less than asked (it must describe at least one byte).
   */
  async blockStatus(offset: number, length: number, opts: { reqOne?: boolean } = {}): Promise<BlockStatusResult> {
    // BLOCK_STATUS moves no data; its length is only bounded by the u32 field.
    this.checkRange(offset, length, 0xffffffff);
    if (this.metaContexts.size === 0) throw new NbdProtocolError('BLOCK_STATUS needs a negotiated meta context');
    await this.acquire();
    return new Promise<BlockStatusResult>((resolve, reject) => {
      const p: PendingStatus = { kind: 'status', offset, length, contexts: new Map(), error: null, resolve, reject };
      this.send(p, NBD_CMD_BLOCK_STATUS, opts.reqOne ? NBD_CMD_FLAG_REQ_ONE : 0);
    });
  }

  /** Sends NBD_CMD_DISC after outstanding requests finish, then closes. */
  async close(): Promise<void> {
    if (!this.failure) {
      while (this.inFlight > 0 && !this.failure) await new Promise<void>((r) => this.slotWaiters.push(r));
      if (!this.failure) {
        // DISC has no reply (proto.md "NBD_CMD_DISC"); the server closes after it.
        this.socket.write(encodeRequest({ flags: 0, type: NBD_CMD_DISC, cookie: this.nextCookie++, offset: 0n, length: 0 }));
        this.fail(new NbdConnectionClosedError('NBD client closed'));
      }
    }
    this.socket.end();
    await new Promise<void>((r) => {
      if (this.socket.destroyed) return r();
      const t = setTimeout(() => {
        this.socket.destroy();
        r();
      }, 1000);
      t.unref();
      this.socket.once('close', () => {
        clearTimeout(t);
        r();
      });
    });
    await this.ended;
  }

  /** Hard close (on errors/cancel): fails pending requests at once. */
  destroy(reason: Error = new NbdConnectionClosedError('NBD client destroyed')): void {
    this.fail(reason);
    this.socket.destroy();
  }

  private checkRange(offset: number, length: number, max = this.maxRequest): void {
    if (this.failure) throw this.failure;
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length <= 0 || offset + length > this.size) {
      throw new NbdProtocolError(`request [${offset}, +${length}) outside export of ${this.size} bytes`);
    }
    if (length > max) throw new NbdProtocolError(`request of ${length} bytes exceeds the ${max}-byte limit`);
  }

  private async acquire(): Promise<void> {
    while (this.inFlight >= this.maxInFlight) {
      if (this.failure) throw this.failure;
      await new Promise<void>((r) => this.slotWaiters.push(r));
    }
    if (this.failure) throw this.failure;
    this.inFlight++;
  }

  private release(): void {
    this.inFlight--;
    this.slotWaiters.shift()?.();
  }

  private send(p: Pending, type: number, flags: number, payload?: Buffer): void {
    if (this.failure) {
      this.release();
      p.reject(this.failure);
      return;
    }
    const cookie = this.nextCookie++;
    this.pending.set(cookie, p);
    this.socket.write(encodeRequest({ flags, type, cookie, offset: BigInt(p.offset), length: p.length }));
    if (payload) this.socket.write(payload);
  }

  private finish(cookie: bigint, p: Pending): void {
    this.pending.delete(cookie);
    this.release();
    if (p.error) p.reject(p.error);
    else if (p.kind === 'read') {
      // A successful read must be fully described by its chunks; an uncovered byte would be garbage.
      if (p.covered !== p.length || !p.buf) {
        this.fail(new NbdProtocolError(`READ reply covered ${p.covered} of ${p.length} bytes`));
        return;
      }
      p.resolve(p.buf);
    }
    else if (p.kind === 'write') p.resolve();
    else p.resolve({ contexts: p.contexts });
  }

  /** How the reply parser reaches this client's requests (proto.md "Transmission"). */
  private replyHandler(): ReplyHandler {
    const pendingFor = (cookie: bigint, what: string): Pending => {
      const p = this.pending.get(cookie);
      if (!p) throw new NbdProtocolError(`${what} for unknown cookie ${cookie}`);
      return p;
    };
    const cover = (p: PendingRead, off: number, n: number, what: string): number => {
      const rel = off - p.offset;
      if (rel < 0 || rel + n > p.length) throw new NbdProtocolError(`${what} [${off}, +${n}) outside the request`);
      p.covered += n;
      if (p.covered > p.length) throw new NbdProtocolError('READ reply chunks overlap');
      // Sized by what we asked for, never by the wire.
      p.buf ??= Buffer.allocUnsafe(p.length);
      return rel;
    };
    return {
      simpleReply: (error, cookie) => {
        const p = pendingFor(cookie, 'simple reply');
        // With structured replies negotiated, a simple reply is only allowed for errors on READ (proto.md).
        if (error === 0 && p.kind === 'read') throw new NbdProtocolError('simple success reply to READ after structured replies were negotiated');
        if (error !== 0) p.error = new NbdRemoteError(error, `NBD server error ${nbdErrnoName(error)}`);
        this.finish(cookie, p);
      },
      chunkStart: (h) => {
        const p = pendingFor(h.cookie, 'structured reply');
        if (isReplyTypeError(h.type)) {
          if (h.length > NBD_CLIENT_MAX_ERROR_PAYLOAD) throw new NbdProtocolError(`error chunk of ${h.length} bytes is too long`);
          return 'collect';
        }
        switch (h.type) {
          case NBD_REPLY_TYPE_NONE:
            if (h.length !== 0) throw new NbdProtocolError('NBD_REPLY_TYPE_NONE with a payload');
            return 'collect';
          case NBD_REPLY_TYPE_OFFSET_DATA:
            if (p.kind !== 'read') throw new NbdProtocolError('OFFSET_DATA chunk for a non-READ request');
            if (h.length < 9 || h.length - 8 > p.length) throw new NbdProtocolError(`OFFSET_DATA chunk of ${h.length} bytes for a ${p.length}-byte read`);
            return 'data';
          case NBD_REPLY_TYPE_OFFSET_HOLE:
            if (p.kind !== 'read') throw new NbdProtocolError('OFFSET_HOLE chunk for a non-READ request');
            if (h.length !== 12) throw new NbdProtocolError(`OFFSET_HOLE chunk of ${h.length} bytes`);
            return 'collect';
          case NBD_REPLY_TYPE_BLOCK_STATUS:
            if (p.kind !== 'status') throw new NbdProtocolError('BLOCK_STATUS chunk for a non-BLOCK_STATUS request');
            if (h.length > NBD_CLIENT_MAX_BLOCK_STATUS_PAYLOAD) throw new NbdProtocolError(`BLOCK_STATUS chunk of ${h.length} bytes is too long`);
            return 'collect';
          default:
            throw new NbdProtocolError(`unknown structured reply type ${h.type}`);
        }
      },
      chunkPayload: (h, payload) => {
        const p = pendingFor(h.cookie, 'structured reply');
        if (isReplyTypeError(h.type)) {
          const e = decodeStructuredError(h.type, payload);
          p.error ??= new NbdRemoteError(e.error, `NBD server error ${nbdErrnoName(e.error)}${e.message ? `: ${e.message}` : ''}`);
        } else if (h.type === NBD_REPLY_TYPE_OFFSET_HOLE && p.kind === 'read') {
          const n = payload.readUInt32BE(8);
          if (n === 0) throw new NbdProtocolError('OFFSET_HOLE of 0 bytes');
          const rel = cover(p, Number(payload.readBigUInt64BE(0)), n, 'OFFSET_HOLE');
          (p.buf as Buffer).fill(0, rel, rel + n);
        } else if (h.type === NBD_REPLY_TYPE_BLOCK_STATUS && p.kind === 'status') {
          const st = decodeBlockStatusPayload(payload);
          const name = this.contextNames.get(st.contextId);
          if (name === undefined) throw new NbdProtocolError(`BLOCK_STATUS for unknown context id ${st.contextId}`);
          if (st.extents.some((e) => e.length === 0)) throw new NbdProtocolError('BLOCK_STATUS extent of length 0');
          p.contexts.set(name, st.extents);
        }
      },
      dataTarget: (h, off) => {
        const p = pendingFor(h.cookie, 'OFFSET_DATA chunk') as PendingRead;
        const rel = cover(p, off, h.length - 8, 'OFFSET_DATA');
        return { buf: p.buf as Buffer, at: rel };
      },
      chunkEnd: (h) => {
        if (h.flags & NBD_REPLY_FLAG_DONE) this.finish(h.cookie, pendingFor(h.cookie, 'structured reply'));
      },
    };
  }

  private fail(err: Error): void {
    if (this.failure) return;
    this.failure = err;
    for (const [, p] of this.pending) p.reject(err);
    this.pending.clear();
    for (const w of this.slotWaiters.splice(0)) w();
    // A protocol violation leaves the stream unparseable: drop the connection.
    if (!(err instanceof NbdConnectionClosedError)) this.socket.destroy();
    this.markEnded();
  }
}

async function readOptionReply(reader: SocketReader, option: number): Promise<{ type: number; data: Buffer }> {
  const h = decodeOptionReplyHeader(await reader.read(NBD_OPTION_REPLY_HEADER_SIZE));
  if (h.option !== option) throw new NbdProtocolError(`reply for option ${optionName(h.option)} while waiting for ${optionName(option)}`);
  if (h.length > NBD_CLIENT_MAX_OPTION_REPLY) throw new NbdProtocolError(`option reply of ${h.length} bytes is too long`);
  const data = h.length > 0 ? await reader.read(h.length) : Buffer.alloc(0);
  if (isOptionReplyError(h.replyType)) {
    const msg = data.toString('utf8');
    throw new NbdOptionError(optionName(option), h.replyType, `NBD server refused ${optionName(option)}${msg ? `: ${msg}` : ` (reply type 0x${h.replyType.toString(16)})`}`);
  }
  return { type: h.replyType, data };
}

async function handshake(
  socket: Socket,
  reader: SocketReader,
  options: NbdClientOptions,
): Promise<{ size: number; flags: number; blockSize: { min: number; preferred: number; max: number }; contexts: Map<string, number> }> {
  const g = decodeServerGreeting(await reader.read(NBD_GREETING_SIZE));
  if (!(g.handshakeFlags & NBD_FLAG_FIXED_NEWSTYLE)) throw new NbdProtocolError('NBD server does not support fixed newstyle');
  const noZeroes = (g.handshakeFlags & NBD_FLAG_NO_ZEROES) !== 0;
  socket.write(encodeClientFlags(NBD_FLAG_C_FIXED_NEWSTYLE | (noZeroes ? NBD_FLAG_C_NO_ZEROES : 0)));

  socket.write(encodeOption(NBD_OPT_STRUCTURED_REPLY));
  const sr = await readOptionReply(reader, NBD_OPT_STRUCTURED_REPLY);
  if (sr.type !== NBD_REP_ACK) throw new NbdProtocolError('NBD_OPT_STRUCTURED_REPLY not acknowledged');

  const contexts = new Map<string, number>();
  const wanted = options.metaContexts ?? [];
  if (wanted.length > 0) {
    socket.write(encodeOption(NBD_OPT_SET_META_CONTEXT, encodeMetaContextRequest(options.exportName, wanted)));
    for (let i = 0; i <= wanted.length; i++) {
      const r = await readOptionReply(reader, NBD_OPT_SET_META_CONTEXT);
      if (r.type === NBD_REP_ACK) break;
      if (r.type !== NBD_REP_META_CONTEXT) throw new NbdProtocolError(`unexpected reply type ${r.type} to SET_META_CONTEXT`);
      const m = decodeMetaContextReply(r.data);
      if (!wanted.includes(m.name)) throw new NbdProtocolError(`server granted meta context "${m.name}" that was not asked for`);
      contexts.set(m.name, m.id);
    }
    const missing = wanted.filter((w) => !contexts.has(w));
    if (missing.length > 0) throw new NbdOptionError('SET_META_CONTEXT', 0, `NBD export "${options.exportName}" does not offer meta context(s) ${missing.join(', ')}`);
  }

  socket.write(encodeOption(NBD_OPT_GO, encodeInfoRequest(options.exportName, [NBD_INFO_BLOCK_SIZE])));
  let size = -1;
  let flags = 0;
  let blockSize = { min: 1, preferred: 4096, max: NBD_MAX_REQUEST_DEFAULT };
  for (let i = 0; i < 64; i++) {
    const r = await readOptionReply(reader, NBD_OPT_GO);
    if (r.type === NBD_REP_ACK) {
      if (size < 0) throw new NbdProtocolError('NBD_OPT_GO acknowledged without NBD_INFO_EXPORT');
      return { size, flags, blockSize, contexts };
    }
    if (r.type !== NBD_REP_INFO) throw new NbdProtocolError(`unexpected reply type ${r.type} to NBD_OPT_GO`);
    const info = decodeInfo(r.data);
    if (info.type === NBD_INFO_EXPORT && 'size' in info) {
      if (info.size > BigInt(Number.MAX_SAFE_INTEGER)) throw new NbdProtocolError('export size beyond 2^53');
      size = Number(info.size);
      flags = info.transmissionFlags;
    } else if (info.type === NBD_INFO_BLOCK_SIZE && 'max' in info) {
      blockSize = { min: info.min, preferred: info.preferred, max: info.max };
    }
  }
  throw new NbdProtocolError('too many NBD_REP_INFO replies');
}
