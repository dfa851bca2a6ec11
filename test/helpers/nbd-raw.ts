/**
 * A tiny raw-socket NBD client for tests of malformed and edge-case traffic.
 * Deliberately independent of the server's SocketReader so that a bug there
 * cannot hide itself; it uses only the pure encoders of src/nbd/protocol.ts.
 */
import { connect, type Socket } from 'node:net';
import {
  NBD_FLAG_C_FIXED_NEWSTYLE, NBD_FLAG_C_NO_ZEROES, NBD_INFO_EXPORT, NBD_OPT_GO,
  NBD_OPT_SET_META_CONTEXT, NBD_OPT_STRUCTURED_REPLY, NBD_REP_ACK, NBD_REP_INFO, NBD_REPLY_FLAG_DONE,
  NBD_SIMPLE_REPLY_MAGIC, NBD_STRUCTURED_REPLY_MAGIC, decodeInfo, decodeOptionReplyHeader, decodeServerGreeting,
  encodeClientFlags, encodeInfoRequest, encodeMetaContextRequest, encodeOption, encodeRequest,
  isOptionReplyError,
} from '../../src/nbd/protocol.js';

export type RawTarget = { host?: string; port: number; localAddress?: string } | { path: string };

export interface OptionReply {
  option: number;
  replyType: number;
  data: Buffer;
}

export interface Chunk {
  flags: number;
  type: number;
  cookie: bigint;
  payload: Buffer;
}

export class RawNbdClient {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private ended = false;
  private waiters: Array<() => void> = [];
  readonly closed: Promise<void>;
  private nextCookie = 1n;

  private constructor(readonly socket: Socket) {
    socket.on('data', (d: Buffer) => {
      this.chunks.push(d);
      this.buffered += d.length;
      this.wake();
    });
    socket.on('error', () => undefined);
    this.closed = new Promise((resolve) => {
      socket.on('close', () => {
        this.ended = true;
        this.wake();
        resolve();
      });
    });
    socket.on('end', () => {
      this.ended = true;
      this.wake();
    });
  }

  static connect(target: RawTarget): Promise<RawNbdClient> {
    return new Promise((resolve, reject) => {
      const s = 'path' in target ? connect({ path: target.path }) : connect({ host: target.host ?? '127.0.0.1', port: target.port, ...(target.localAddress ? { localAddress: target.localAddress } : {}) });
      s.once('connect', () => resolve(new RawNbdClient(s)));
      s.once('error', reject);
    });
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  write(b: Uint8Array): void {
    this.socket.write(b);
  }

  /** Exactly n bytes, or throws if the server closed first. */
  async read(n: number, timeoutMs = 10_000): Promise<Buffer> {
    const deadline = Date.now() + timeoutMs;
    while (this.buffered < n) {
      if (this.ended) throw new Error(`connection closed with ${this.buffered}/${n} bytes`);
      if (Date.now() > deadline) throw new Error(`timeout waiting for ${n} bytes`);
      await new Promise<void>((r) => {
        const t = setTimeout(r, 50);
        this.waiters.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
    const all = this.chunks.length === 1 ? (this.chunks[0] as Buffer) : Buffer.concat(this.chunks);
    const out = all.subarray(0, n);
    const rest = all.subarray(n);
    this.chunks = rest.length ? [rest] : [];
    this.buffered = rest.length;
    return out;
  }

  /** Resolves true if the server closes the connection within the timeout. */
  async closedWithin(ms: number): Promise<boolean> {
    let timer: NodeJS.Timeout | undefined;
    const r = await Promise.race([
      this.closed.then(() => true),
      new Promise<boolean>((res) => (timer = setTimeout(() => res(false), ms))),
    ]);
    clearTimeout(timer);
    return r;
  }

  destroy(): void {
    this.socket.destroy();
  }

  // ---- handshake ----

  async greeting(opts: { noZeroes?: boolean } = {}): Promise<number> {
    const g = decodeServerGreeting(await this.read(18));
    this.write(encodeClientFlags(NBD_FLAG_C_FIXED_NEWSTYLE | (opts.noZeroes === false ? 0 : NBD_FLAG_C_NO_ZEROES)));
    return g.handshakeFlags;
  }

  async optionReply(): Promise<OptionReply> {
    const h = decodeOptionReplyHeader(await this.read(20));
    const data = await this.read(h.length);
    return { option: h.option, replyType: h.replyType, data };
  }

  /** Sends an option and collects replies up to the final one (ACK or an error). */
  async option(option: number, data?: Uint8Array): Promise<OptionReply[]> {
    this.write(encodeOption(option, data));
    const out: OptionReply[] = [];
    for (;;) {
      const r = await this.optionReply();
      out.push(r);
      if (r.replyType === NBD_REP_ACK || isOptionReplyError(r.replyType)) return out;
    }
  }

  /** Full handshake with NBD_OPT_GO. Returns size and transmission flags. */
  async handshake(
    name: string,
    opts: { structured?: boolean; metaContext?: boolean } = {},
  ): Promise<{ size: bigint; flags: number }> {
    await this.greeting();
    if (opts.structured) {
      const r = await this.option(NBD_OPT_STRUCTURED_REPLY);
      if (r.at(-1)?.replyType !== NBD_REP_ACK) throw new Error('structured replies refused');
    }
    if (opts.metaContext) {
      const r = await this.option(NBD_OPT_SET_META_CONTEXT, encodeMetaContextRequest(name, ['base:allocation']));
      if (r.at(-1)?.replyType !== NBD_REP_ACK) throw new Error('meta context refused');
    }
    const replies = await this.option(NBD_OPT_GO, encodeInfoRequest(name, []));
    const last = replies.at(-1);
    if (last?.replyType !== NBD_REP_ACK) throw new Error(`GO failed: reply type 0x${last?.replyType.toString(16)}`);
    for (const r of replies) {
      if (r.replyType !== NBD_REP_INFO) continue;
      const info = decodeInfo(r.data);
      if (info.type === NBD_INFO_EXPORT && 'size' in info) return { size: info.size, flags: info.transmissionFlags };
    }
    throw new Error('no NBD_INFO_EXPORT');
  }

  // ---- transmission ----

  /** Sends a request; returns its cookie. */
  send(type: number, offset: bigint | number, length: number, opts: { flags?: number; data?: Uint8Array; cookie?: bigint; magic?: number } = {}): bigint {
    const cookie = opts.cookie ?? this.nextCookie++;
    this.write(encodeRequest({ magic: opts.magic, flags: opts.flags ?? 0, type, cookie, offset: BigInt(offset), length }));
    if (opts.data) this.write(opts.data);
    return cookie;
  }

  /** A simple reply; `dataLength` bytes of payload are read only when error is 0. */
  async simpleReply(dataLength = 0): Promise<{ error: number; cookie: bigint; data: Buffer }> {
    const h = await this.read(16);
    if (h.readUInt32BE(0) !== NBD_SIMPLE_REPLY_MAGIC) throw new Error(`bad simple reply magic 0x${h.readUInt32BE(0).toString(16)}`);
    const error = h.readUInt32BE(4);
    const data = error === 0 && dataLength > 0 ? await this.read(dataLength) : Buffer.alloc(0);
    return { error, cookie: h.readBigUInt64BE(8), data };
  }

  /** One reply in structured mode: either a simple reply or chunks up to DONE. */
  async structuredReply(): Promise<{ simple?: { error: number; cookie: bigint }; chunks: Chunk[] }> {
    const chunks: Chunk[] = [];
    for (;;) {
      const magic = (await this.read(4)).readUInt32BE(0);
      if (magic === NBD_SIMPLE_REPLY_MAGIC) {
        if (chunks.length) throw new Error('simple reply inside a structured reply');
        const rest = await this.read(12);
        return { simple: { error: rest.readUInt32BE(0), cookie: rest.readBigUInt64BE(4) }, chunks };
      }
      if (magic !== NBD_STRUCTURED_REPLY_MAGIC) throw new Error(`bad reply magic 0x${magic.toString(16)}`);
      const h = await this.read(16);
      const c: Chunk = { flags: h.readUInt16BE(0), type: h.readUInt16BE(2), cookie: h.readBigUInt64BE(4), payload: Buffer.alloc(0) };
      c.payload = await this.read(h.readUInt32BE(12));
      chunks.push(c);
      if (c.flags & NBD_REPLY_FLAG_DONE) return { chunks };
    }
  }
}
