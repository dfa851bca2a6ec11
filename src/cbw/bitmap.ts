/**
 * A compact cluster bitmap (one bit per 64 KiB cluster, packed in 32-bit
 * words). Used as the per-job "done"/"need" bitmaps and as the persisted
 * dirty bitmaps. A 1 TiB disk has 16 Mi clusters = 2 MiB of bitmap, so the
 * memory is bounded by disk size / 512 Ki, which is acceptable for a bitmap
 * (the data path itself never buffers more than a few clusters).
 */
import { createHash } from 'node:crypto';
import { BitmapChecksumError, BitmapFormatError } from './errors.js';

const MAGIC = 0x4d425343; // "CSBM" little-endian
const VERSION = 1;
const HEADER_BYTES = 24; // magic u32, version u32, bits u64, popcount u64
const DIGEST_BYTES = 32; // sha256 over header + words
/** Refuse absurd bit counts from untrusted input: 2^40 clusters = 64 EiB of disk. */
export const MAX_BITMAP_BITS = 2 ** 40;

function popcount32(v: number): number {
  v = v - ((v >>> 1) & 0x55555555);
  v = (v & 0x33333333) + ((v >>> 2) & 0x33333333);
  return (((v + (v >>> 4)) & 0x0f0f0f0f) * 0x01010101) >>> 24;
}

/** Index of the lowest set bit of a non-zero word. */
function lowestBit(v: number): number {
  return 31 - Math.clz32(v & -v);
}

export class Bitmap {
  /** Number of bits (clusters). */
  readonly size: number;
  private readonly words: Uint32Array;
  private setCount = 0;

  constructor(size: number) {
    if (!Number.isSafeInteger(size) || size < 0 || size > MAX_BITMAP_BITS) {
      throw new RangeError(`bitmap size ${size} out of range`);
    }
    this.size = size;
    this.words = new Uint32Array(Math.ceil(size / 32));
  }

  /** A bitmap with every bit set. */
  static full(size: number): Bitmap {
    const b = new Bitmap(size);
    b.setRange(0, size);
    return b;
  }

  private check(i: number): void {
    if (!(i >= 0 && i < this.size && Number.isInteger(i))) throw new RangeError(`bit ${i} outside bitmap of ${this.size}`);
  }

  test(i: number): boolean {
    if (i < 0 || i >= this.size) return false;
    return (this.words[i >>> 5]! & (1 << (i & 31))) !== 0;
  }

  /** Sets bit i; returns true if it was clear before. */
  set(i: number): boolean {
    this.check(i);
    const w = i >>> 5;
    const m = 1 << (i & 31);
    const old = this.words[w]!;
    if (old & m) return false;
    this.words[w] = old | m;
    this.setCount++;
    return true;
  }

  /** Clears bit i; returns true if it was set before. */
  clear(i: number): boolean {
    this.check(i);
    const w = i >>> 5;
    const m = 1 << (i & 31);
    const old = this.words[w]!;
    if (!(old & m)) return false;
    this.words[w] = old & ~m;
    this.setCount--;
    return true;
  }

  setRange(start: number, count: number): void {
    this.applyRange(start, count, true);
  }

  clearRange(start: number, count: number): void {
    this.applyRange(start, count, false);
  }

  private applyRange(start: number, count: number, value: boolean): void {
    if (count <= 0) return;
    this.check(start);
    this.check(start + count - 1);
    let i = start;
    const end = start + count;
    while (i < end) {
      const w = i >>> 5;
      const bit = i & 31;
      const n = Math.min(32 - bit, end - i);
      const mask = n === 32 ? 0xffffffff : ((1 << n) - 1) << bit;
      const old = this.words[w]!;
      const next = value ? (old | mask) >>> 0 : (old & ~mask) >>> 0;
      this.setCount += popcount32(next) - popcount32(old);
      this.words[w] = next;
      i += n;
    }
  }

  /** Marks the clusters touched by the byte range [offset, offset+length). */
  setByteRange(offset: number, length: number, clusterSize: number): void {
    if (length <= 0) return;
    const first = Math.floor(offset / clusterSize);
    const last = Math.floor((offset + length - 1) / clusterSize);
    this.setRange(first, last - first + 1);
  }

  /** Number of set bits (maintained incrementally, O(1)). */
  count(): number {
    return this.setCount;
  }

  isEmpty(): boolean {
    return this.setCount === 0;
  }

  /** First set bit at or after `from`, or -1. */
  nextSet(from = 0): number {
    return this.scan(from, 0);
  }

  /** First clear bit at or after `from`, or -1. */
  nextClear(from = 0): number {
    return this.scan(from, 0xffffffff);
  }

  /** First bit at or after `from` whose value XOR `flip` is 1 (flip = all ones finds clear bits). */
  private scan(from: number, flip: number): number {
    if (from < 0) from = 0;
    if (from >= this.size) return -1;
    let w = from >>> 5;
    let word = (this.words[w]! ^ flip) & (0xffffffff << (from & 31));
    for (;;) {
      if (word !== 0) {
        const i = (w << 5) + lowestBit(word);
        return i < this.size ? i : -1;
      }
      w++;
      if (w >= this.words.length) return -1;
      word = this.words[w]! ^ flip;
    }
  }

  /** Runs of set bits as [start, count] pairs, in order. */
  *ranges(): Generator<[number, number]> {
    let i = this.nextSet(0);
    while (i !== -1) {
      const end = this.nextClear(i);
      const stop = end === -1 ? this.size : end;
      yield [i, stop - i];
      i = stop >= this.size ? -1 : this.nextSet(stop);
    }
  }

  /** this |= other (sizes must match). */
  or(other: Bitmap): void {
    if (other.size !== this.size) throw new RangeError(`bitmap size mismatch ${this.size} vs ${other.size}`);
    let count = 0;
    for (let w = 0; w < this.words.length; w++) {
      const v = (this.words[w]! | other.words[w]!) >>> 0;
      this.words[w] = v;
      count += popcount32(v);
    }
    this.setCount = count;
  }

  clone(): Bitmap {
    const b = new Bitmap(this.size);
    b.words.set(this.words);
    b.setCount = this.setCount;
    return b;
  }

  /** A copy with a different size: bits beyond the new size are dropped, new bits are `fill`. */
  resized(size: number, fill: boolean): Bitmap {
    const b = new Bitmap(size);
    const keep = Math.min(size, this.size);
    for (const [s, n] of this.ranges()) {
      if (s >= keep) break;
      b.setRange(s, Math.min(n, keep - s));
    }
    if (fill && size > keep) b.setRange(keep, size - keep);
    return b;
  }

  equals(other: Bitmap): boolean {
    if (other.size !== this.size || other.setCount !== this.setCount) return false;
    for (let w = 0; w < this.words.length; w++) if (this.words[w] !== other.words[w]) return false;
    return true;
  }

  /**
   * Serialized form: magic, version, bit count, popcount, the words
   * (little-endian), then a sha256 of everything before it.
   */
  serialize(): Buffer {
    const dataBytes = this.words.length * 4;
    const out = Buffer.alloc(HEADER_BYTES + dataBytes + DIGEST_BYTES);
    out.writeUInt32LE(MAGIC, 0);
    out.writeUInt32LE(VERSION, 4);
    out.writeBigUInt64LE(BigInt(this.size), 8);
    out.writeBigUInt64LE(BigInt(this.setCount), 16);
    for (let w = 0; w < this.words.length; w++) out.writeUInt32LE(this.words[w]!, HEADER_BYTES + w * 4);
    createHash('sha256').update(out.subarray(0, HEADER_BYTES + dataBytes)).digest().copy(out, HEADER_BYTES + dataBytes);
    return out;
  }

  /** Length in bytes of the serialized form of a bitmap of `size` bits. */
  static serializedLength(size: number): number {
    return HEADER_BYTES + Math.ceil(size / 32) * 4 + DIGEST_BYTES;
  }

  /**
   * Parses `serialize()` output. The bit count is validated against the
   * buffer length BEFORE anything is allocated, so a corrupt header can't
   * make us allocate an arbitrary amount of memory.
   */
  static deserialize(buf: Buffer): Bitmap {
    if (buf.length < HEADER_BYTES + DIGEST_BYTES) throw new BitmapFormatError(`bitmap too short (${buf.length} bytes)`);
    if (buf.readUInt32LE(0) !== MAGIC) throw new BitmapFormatError('not a cowstream bitmap (bad magic)');
    const version = buf.readUInt32LE(4);
    if (version !== VERSION) throw new BitmapFormatError(`unsupported bitmap version ${version}`);
    const bits = buf.readBigUInt64LE(8);
    if (bits > BigInt(MAX_BITMAP_BITS)) throw new BitmapFormatError(`bitmap bit count ${bits} too large`);
    const size = Number(bits);
    const expected = Bitmap.serializedLength(size);
    if (buf.length !== expected) {
      throw new BitmapFormatError(`bitmap length ${buf.length} does not match its bit count ${size} (expected ${expected})`);
    }
    const dataEnd = expected - DIGEST_BYTES;
    const digest = createHash('sha256').update(buf.subarray(0, dataEnd)).digest();
    if (!digest.equals(buf.subarray(dataEnd))) throw new BitmapChecksumError('bitmap checksum mismatch');
    const b = new Bitmap(size);
    let count = 0;
    for (let w = 0; w < b.words.length; w++) {
      let v = buf.readUInt32LE(HEADER_BYTES + w * 4);
      // Bits past `size` in the last word must be zero; mask them defensively.
      if (w === b.words.length - 1 && size % 32 !== 0) v = (v & ((1 << (size % 32)) - 1)) >>> 0;
      b.words[w] = v;
      count += popcount32(v);
    }
    if (BigInt(count) !== buf.readBigUInt64LE(16)) throw new BitmapChecksumError('bitmap popcount mismatch');
    b.setCount = count;
    return b;
  }
}

/** Number of clusters of a device of `size` bytes. */
export function clusterCount(size: number, clusterSize: number): number {
  return Math.ceil(size / clusterSize);
}
