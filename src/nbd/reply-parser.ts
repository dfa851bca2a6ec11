/**
 * Push parser for the transmission phase of an NBD client (proto.md
 * "Simple reply message", "Structured reply chunk message").
 *
 * It runs synchronously inside the socket's read callback and never keeps a
 * reference to the bytes it is fed: every payload byte is copied once, from
 * the socket's (reused) read buffer straight to where it belongs — the
 * read's destination buffer, or a small payload for BLOCK_STATUS / ERROR
 * chunks — and only a partial fixed-size field (< 20 bytes) is carried over
 * to the next callback. No promise and no allocation per reply apart from
 * a destination the caller did not supply.
 *
 * Framing only: the ReplyHandler (the client) matches cookies and checks
 * every length against what was asked before the parser copies anything,
 * so a wire field never sizes an allocation by itself. Handlers throw
 * NbdProtocolError to stop the parser.
 */
import { NbdProtocolError } from '../errors.js';
import { NBD_SIMPLE_REPLY_MAGIC, NBD_SIMPLE_REPLY_SIZE, NBD_STRUCTURED_HEADER_SIZE, NBD_STRUCTURED_REPLY_MAGIC } from './protocol.js';

export interface ChunkHeader {
  flags: number;
  type: number;
  cookie: bigint;
  length: number;
}

/** How a structured chunk's payload is read, decided by the handler from its header. */
export type PayloadPlan =
  /** Collect the whole payload (the handler has bounded `length`) and hand it to chunkPayload. */
  | 'collect'
  /** An OFFSET_DATA chunk: an 8-byte offset, then data streamed into dataTarget's buffer. */
  | 'data';

export interface ReplyHandler {
  simpleReply(error: number, cookie: bigint): void;
  /** Validates a chunk header (its length included) and says how to read the payload. */
  chunkStart(h: ChunkHeader): PayloadPlan;
  /** A collected payload (also called, with an empty buffer, for length 0). */
  chunkPayload(h: ChunkHeader, payload: Buffer): void;
  /** Validates an OFFSET_DATA chunk's offset; returns where its `h.length - 8` data bytes go. */
  dataTarget(h: ChunkHeader, offset: number): { buf: Buffer; at: number };
  /** The chunk and its payload are complete. */
  chunkEnd(h: ChunkHeader): void;
}

const enum State {
  Magic,
  Simple,
  Header,
  Collect,
  Offset,
  Data,
}

const EMPTY = Buffer.alloc(0);

export class ReplyParser {
  /** Bytes fed but not yet consumed: views of the current feed() argument, or one owned carry-over. */
  private readonly chunks: Buffer[] = [];
  /** Bytes of chunks[0] already consumed. */
  private headOff = 0;
  private buffered = 0;
  private state = State.Magic;
  /** Fixed fields (magic, headers, offsets) are assembled here: ≤ 20 bytes. */
  private readonly scratch = Buffer.allocUnsafe(NBD_STRUCTURED_HEADER_SIZE);
  private header: ChunkHeader = { flags: 0, type: 0, cookie: 0n, length: 0 };
  private dest: Buffer = EMPTY;
  private destAt = 0;
  private remaining = 0;
  private failed = false;

  constructor(
    private readonly handler: ReplyHandler,
    private readonly onError: (err: Error) => void,
  ) {}

  /**
   * Parses what `bytes` completes. `bytes` may be a view of a buffer the
   * caller reuses as soon as this returns: nothing of it is kept.
   */
  feed(bytes: Buffer): void {
    if (this.failed || bytes.length === 0) return;
    this.chunks.push(bytes);
    this.buffered += bytes.length;
    try {
      this.run();
    } catch (err) {
      this.failed = true;
      this.chunks.length = 0;
      this.buffered = 0;
      this.onError(err instanceof Error ? err : new NbdProtocolError(String(err)));
      return;
    }
    // Payload states consume everything they are fed, so what is left is a
    // partial fixed-size field (< 20 bytes): keep a copy of just that.
    if (this.buffered > 0) {
      const rest = Buffer.allocUnsafe(this.buffered);
      this.consume(rest, 0, this.buffered);
      this.chunks.push(rest);
      this.buffered = rest.length;
    }
  }

  private run(): void {
    for (;;) {
      switch (this.state) {
        case State.Magic: {
          if (!this.fill(4)) return;
          const magic = this.scratch.readUInt32BE(0);
          if (magic === NBD_SIMPLE_REPLY_MAGIC) this.state = State.Simple;
          else if (magic === NBD_STRUCTURED_REPLY_MAGIC) this.state = State.Header;
          else throw new NbdProtocolError(`bad reply magic 0x${magic.toString(16)}`);
          break;
        }
        case State.Simple: {
          if (!this.fill(NBD_SIMPLE_REPLY_SIZE - 4, 4)) return;
          this.state = State.Magic;
          this.handler.simpleReply(this.scratch.readUInt32BE(4), this.scratch.readBigUInt64BE(8));
          break;
        }
        case State.Header: {
          if (!this.fill(NBD_STRUCTURED_HEADER_SIZE - 4, 4)) return;
          const s = this.scratch;
          const h: ChunkHeader = { flags: s.readUInt16BE(4), type: s.readUInt16BE(6), cookie: s.readBigUInt64BE(8), length: s.readUInt32BE(16) };
          this.header = h;
          if (this.handler.chunkStart(h) === 'data') {
            if (h.length < 8) throw new NbdProtocolError(`OFFSET_DATA chunk of ${h.length} bytes`);
            this.state = State.Offset;
          } else if (h.length === 0) {
            this.handler.chunkPayload(h, EMPTY);
            this.endChunk();
          } else {
            this.dest = Buffer.allocUnsafe(h.length);
            this.destAt = 0;
            this.remaining = h.length;
            this.state = State.Collect;
          }
          break;
        }
        case State.Collect: {
          if (!this.stream()) return;
          const payload = this.dest;
          this.dest = EMPTY;
          this.handler.chunkPayload(this.header, payload);
          this.endChunk();
          break;
        }
        case State.Offset: {
          if (!this.fill(8)) return;
          const off = this.scratch.readBigUInt64BE(0);
          if (off > BigInt(Number.MAX_SAFE_INTEGER)) throw new NbdProtocolError(`OFFSET_DATA offset ${off} beyond 2^53`);
          const t = this.handler.dataTarget(this.header, Number(off));
          this.dest = t.buf;
          this.destAt = t.at;
          this.remaining = this.header.length - 8;
          this.state = State.Data;
          break;
        }
        case State.Data: {
          if (!this.stream()) return;
          this.dest = EMPTY;
          this.endChunk();
          break;
        }
      }
    }
  }

  private endChunk(): void {
    this.state = State.Magic;
    this.handler.chunkEnd(this.header);
  }

  /** Copies n bytes into scratch[at..] once all n are buffered; false = wait for more. */
  private fill(n: number, at = 0): boolean {
    if (this.buffered < n) return false;
    this.consume(this.scratch, at, n);
    return true;
  }

  /** Copies what is buffered of the current payload into dest; true once it is complete. */
  private stream(): boolean {
    const k = Math.min(this.remaining, this.buffered);
    if (k > 0) {
      this.consume(this.dest, this.destAt, k);
      this.destAt += k;
      this.remaining -= k;
    }
    return this.remaining === 0;
  }

  private consume(dst: Buffer, at: number, n: number): void {
    let pos = at;
    let left = n;
    while (left > 0) {
      const c = this.chunks[0] as Buffer;
      const avail = c.length - this.headOff;
      const k = avail < left ? avail : left;
      c.copy(dst, pos, this.headOff, this.headOff + k);
      pos += k;
      left -= k;
      if (k === avail) {
        this.chunks.shift();
        this.headOff = 0;
      } else {
        this.headOff += k;
      }
    }
    this.buffered -= n;
  }
}
