/**
 * Bounds-checked little-endian cursor over untrusted bytes. Every read checks
 * the remaining length first and throws FormatError (never RangeError), so a
 * bad field can never crash a caller or trigger a large allocation.
 */
import { FormatError } from '../errors.js';

export class ByteReader {
  private pos = 0;

  constructor(
    private readonly buf: Buffer,
    private readonly what: string,
  ) {}

  get offset(): number {
    return this.pos;
  }

  get remaining(): number {
    return this.buf.length - this.pos;
  }

  private need(n: number): number {
    if (n > this.buf.length - this.pos) {
      throw new FormatError(`${this.what}: field at byte ${this.pos} needs ${n} bytes, only ${this.remaining} left`);
    }
    const at = this.pos;
    this.pos += n;
    return at;
  }

  u8(): number {
    return this.buf.readUInt8(this.need(1));
  }

  u16(): number {
    return this.buf.readUInt16LE(this.need(2));
  }

  u32(): number {
    return this.buf.readUInt32LE(this.need(4));
  }

  /** u64 limited to 2^53-1 (docs/FORMAT.md "Conventions"). */
  u64(field: string): number {
    const v = this.buf.readBigUInt64LE(this.need(8));
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) {
      throw new FormatError(`${this.what}: ${field} ${v} exceeds 2^53-1`);
    }
    return Number(v);
  }

  /** A view (no copy) of the next n bytes. */
  bytes(n: number): Buffer {
    const at = this.need(n);
    return this.buf.subarray(at, at + n);
  }

  /** Reserved bytes must be zero so future extensions are never misread. */
  zeros(n: number, field: string): void {
    const b = this.bytes(n);
    for (const x of b) {
      if (x !== 0) throw new FormatError(`${this.what}: reserved ${field} is not zero`);
    }
  }

  utf8(n: number, field: string): string {
    const b = this.bytes(n);
    try {
      return new TextDecoder('utf-8', { fatal: true }).decode(b);
    } catch (err) {
      throw new FormatError(`${this.what}: ${field} is not valid UTF-8`, { cause: err });
    }
  }

  expectEnd(): void {
    if (this.pos !== this.buf.length) {
      throw new FormatError(`${this.what}: ${this.buf.length - this.pos} unexpected trailing bytes`);
    }
  }
}

/** Fixed-size little-endian writer; the caller computes the exact size first. */
export class ByteWriter {
  readonly buf: Buffer;
  private pos = 0;

  constructor(size: number) {
    this.buf = Buffer.alloc(size);
  }

  get offset(): number {
    return this.pos;
  }

  u8(v: number): this {
    this.pos = this.buf.writeUInt8(v, this.pos);
    return this;
  }

  u16(v: number): this {
    this.pos = this.buf.writeUInt16LE(v, this.pos);
    return this;
  }

  u32(v: number): this {
    this.pos = this.buf.writeUInt32LE(v, this.pos);
    return this;
  }

  u64(v: number): this {
    this.pos = this.buf.writeBigUInt64LE(BigInt(v), this.pos);
    return this;
  }

  bytes(b: Uint8Array): this {
    this.buf.set(b, this.pos);
    this.pos += b.length;
    return this;
  }

  skip(n: number): this {
    this.pos += n;
    return this;
  }

  done(): Buffer {
    if (this.pos !== this.buf.length) {
      throw new Error(`internal: ByteWriter wrote ${this.pos} of ${this.buf.length} bytes`);
    }
    return this.buf;
  }
}

/**
 * 16 raw bytes → canonical 8-4-4-4-12 hex. Unlike uuid's stringify() this
 * never throws on bytes that are not a valid RFC 9562 UUID (untrusted input).
 */
export function uuidString(b: Uint8Array): string {
  const h = Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20, 32)}`;
}
