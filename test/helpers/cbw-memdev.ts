/**
 * An in-memory BlockDevice for the CBW tests with seeded random latency, so
 * guest writes, CBW reads and background reads interleave differently per
 * seed. Every applied mutation is logged in application order, so a test can
 * replay the log on the initial image and check that the final contents are
 * exactly what the writes that got through should produce.
 */
import type { BlockDevice } from '../../src/device/types.js';
import { OutOfRangeError } from '../../src/errors.js';
import type { Rng } from './prng.js';

export type AppliedOp = { kind: 'write'; offset: number; data: Buffer } | { kind: 'zero'; offset: number; length: number };

/** Random short pause: mostly microtask/setImmediate yields, sometimes a 1 ms timer. */
export function jitter(rng: Rng | null, timerChance = 0.1): Promise<void> {
  if (!rng) return Promise.resolve();
  const r = rng();
  if (r < timerChance) return new Promise((res) => setTimeout(res, 1));
  if (r < 0.6) return new Promise((res) => setImmediate(res));
  return Promise.resolve();
}

export class JitterMemDevice implements BlockDevice {
  readonly readOnly = false;
  readonly size: number;
  readonly data: Buffer;
  readonly log: AppliedOp[] = [];
  reads = 0;
  /** When set, read() rejects with it (source failure injection). */
  failReads: Error | null = null;

  constructor(
    init: Buffer,
    private readonly rng: Rng | null,
  ) {
    this.data = Buffer.from(init);
    this.size = init.length;
  }

  private check(offset: number, length: number): void {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this.size) {
      throw new OutOfRangeError(`[${offset}, +${length}) outside ${this.size}`);
    }
  }

  async read(offset: number, length: number): Promise<Buffer> {
    this.check(offset, length);
    await jitter(this.rng);
    if (this.failReads) throw this.failReads;
    this.reads++;
    const out = Buffer.from(this.data.subarray(offset, offset + length));
    await jitter(this.rng);
    return out;
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    this.check(offset, data.length);
    await jitter(this.rng);
    this.data.set(data, offset);
    this.log.push({ kind: 'write', offset, data: Buffer.from(data) });
    await jitter(this.rng);
  }

  async writeZeroes(offset: number, length: number): Promise<void> {
    this.check(offset, length);
    await jitter(this.rng);
    this.data.fill(0, offset, offset + length);
    this.log.push({ kind: 'zero', offset, length });
    await jitter(this.rng);
  }

  trim(offset: number, length: number): Promise<void> {
    return this.writeZeroes(offset, length);
  }

  async flush(): Promise<void> {}
  async close(): Promise<void> {}
}

/** Replays an applied-op log on a copy of `initial`. */
export function replay(initial: Buffer, log: AppliedOp[]): Buffer {
  const out = Buffer.from(initial);
  for (const op of log) {
    if (op.kind === 'write') op.data.copy(out, op.offset);
    else out.fill(0, op.offset, op.offset + op.length);
  }
  return out;
}
