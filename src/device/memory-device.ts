import { DeviceClosedError, ReadOnlyDeviceError } from './errors.js';
import { pushExtent } from './extents.js';
import { checkRange } from './range.js';
import type { BlockDevice, DeviceExtent } from './types.js';

/** Granularity of MemoryDevice's allocation map: an all-zero 4 KiB block is reported as a hole. */
export const MEMORY_MAP_BLOCK = 4096;
const ZERO_BLOCK = Buffer.alloc(MEMORY_MAP_BLOCK);

export interface MemoryDeviceOptions {
  readOnly?: boolean;
}

/**
 * An in-memory BlockDevice for tests of other modules. Its size is fixed by
 * the caller at construction (tests only: never sized by untrusted input).
 * Reads return copies, so callers may keep or mutate them freely.
 */
export class MemoryDevice implements BlockDevice {
  readonly size: number;
  readonly readOnly: boolean;
  private data: Buffer;
  private closed = false;
  /** Number of flush() calls, for tests that check FUA/flush plumbing. */
  flushCount = 0;

  /** `init` is either a size in bytes (zero-filled) or initial contents (copied). */
  constructor(init: number | Uint8Array, opts: MemoryDeviceOptions = {}) {
    this.data = typeof init === 'number' ? Buffer.alloc(init) : Buffer.from(init);
    this.size = this.data.length;
    this.readOnly = opts.readOnly ?? false;
  }

  async read(offset: number, length: number): Promise<Buffer> {
    this.checkOpen();
    checkRange(this.size, offset, length, 'read');
    return Buffer.from(this.data.subarray(offset, offset + length));
  }

  async write(offset: number, data: Uint8Array, opts?: { fua?: boolean }): Promise<void> {
    this.checkWritable('write');
    checkRange(this.size, offset, data.length, 'write');
    this.data.set(data, offset);
    if (opts?.fua) this.flushCount++;
  }

  async writeZeroes(offset: number, length: number, opts?: { fua?: boolean; mayTrim?: boolean }): Promise<void> {
    this.checkWritable('write zeroes');
    checkRange(this.size, offset, length, 'write zeroes');
    this.data.fill(0, offset, offset + length);
    if (opts?.fua) this.flushCount++;
  }

  async trim(offset: number, length: number): Promise<void> {
    this.checkWritable('trim');
    checkRange(this.size, offset, length, 'trim');
    this.data.fill(0, offset, offset + length);
  }

  /**
   * Every all-zero 4 KiB block (aligned to the device start) is a hole that
   * reads as zeroes, like a sparse array: what tests of block status need.
   */
  async mapExtents(offset: number, length: number): Promise<DeviceExtent[]> {
    this.checkOpen();
    checkRange(this.size, offset, length, 'map');
    const out: DeviceExtent[] = [];
    const end = offset + length;
    for (let pos = offset; pos < end; ) {
      const next = Math.min(end, (Math.floor(pos / MEMORY_MAP_BLOCK) + 1) * MEMORY_MAP_BLOCK);
      const zero = this.data.subarray(pos, next).equals(ZERO_BLOCK.subarray(0, next - pos));
      pushExtent(out, next - pos, zero, zero);
      pos = next;
    }
    return out;
  }

  async flush(): Promise<void> {
    this.checkOpen();
    this.flushCount++;
  }

  async close(): Promise<void> {
    this.closed = true;
  }

  /** A copy of the whole contents (tests compare it byte for byte). */
  contents(): Buffer {
    return Buffer.from(this.data);
  }

  private checkOpen(): void {
    if (this.closed) throw new DeviceClosedError('memory device is closed');
  }

  private checkWritable(op: string): void {
    this.checkOpen();
    if (this.readOnly) throw new ReadOnlyDeviceError(`${op} on read-only memory device`);
  }
}
