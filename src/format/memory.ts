/**
 * In-memory ByteSink / RangeSource: for tests, small tools, and restore code
 * that already holds a byte range in memory.
 */
import { StoreError } from '../errors.js';
import type { ByteSink, RangeSource } from './sink.js';

export class MemoryByteSink implements ByteSink {
  private chunks: Buffer[] = [];
  private state: 'open' | 'closed' | 'aborted' = 'open';
  bytesWritten = 0;

  async write(chunk: Uint8Array): Promise<void> {
    if (this.state !== 'open') throw new StoreError(`write to a ${this.state} sink`);
    // A reference, not a copy, as the ByteSink contract allows: every
    // round-trip test through this sink thereby also checks that the archive
    // writer never modifies a buffer after writing it.
    this.chunks.push(Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength));
    this.bytesWritten += chunk.length;
  }

  async close(): Promise<void> {
    if (this.state !== 'open') throw new StoreError(`close of a ${this.state} sink`);
    this.state = 'closed';
  }

  async abort(_reason?: unknown): Promise<void> {
    this.state = 'aborted';
    this.chunks = [];
  }

  get closed(): boolean {
    return this.state === 'closed';
  }

  get aborted(): boolean {
    return this.state === 'aborted';
  }

  /** The whole stream so far. */
  toBuffer(): Buffer {
    return Buffer.concat(this.chunks);
  }
}

export class BufferRangeSource implements RangeSource {
  constructor(
    private readonly buf: Buffer,
    readonly name = 'memory',
  ) {}

  get size(): number {
    return this.buf.length;
  }

  async read(offset: number, length: number, into?: Buffer): Promise<Buffer> {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this.buf.length) {
      throw new StoreError(`${this.name}: read [${offset}, +${length}) outside 0..${this.buf.length}`);
    }
    const view = this.buf.subarray(offset, offset + length);
    if (into === undefined || into.length < length) return view;
    view.copy(into);
    return into.subarray(0, length);
  }

  async close(): Promise<void> {}
}
