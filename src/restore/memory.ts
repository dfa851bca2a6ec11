/**
 * A restore's memory, bounded by configuration (docs/memory.md): never by
 * the disk size, the archive size or what a plan or an index claims.
 *
 *   peak RSS ≤ RUNTIME_RSS_BYTES                         (zstd-pool.ts: Node, bundle, SDK)
 *            + pool.memoryBound(MAX_EXTENT_DATA, false, decodeSlots(…))   (workers, transfer buffers)
 *            + parallel × rangeBufferSize(parallel, rangeBufferBytes)
 *            + parallel × EXTENTS_IN_FLIGHT × MAX_EXTENT_DATA   (only with --verify: read-back)
 *
 * Ranges of the plan longer than one range buffer are read in pieces, split
 * at extent boundaries (splitRange), so the range buffers total
 * max(rangeBufferBytes, parallel × MAX_EXTENT_SIZE) whatever the planner
 * coalesced.
 */
import { RUNTIME_RSS_BYTES } from '../codec/zstd-pool.js';
import { RestoreError } from '../errors.js';
import { MAX_EXTENT_DATA } from '../format/constants.js';
import { MAX_EXTENT_SIZE } from '../format/layout.js';
import type { PlanRange } from './plan.js';

const MiB = 1024 * 1024;

/**
 * Default total of the range buffers: 4 × 8 MiB at the default parallelism.
 * With the defaults on 2 cores the bound is 128 + 2 × 24 + 2 × 4 × 5 + 32 =
 * 248 MiB (docs/memory.md); 64 MiB measured 295–313 MiB for an S3 restore
 * at --parallel 8, at the 300 MiB goal.
 */
export const DEFAULT_RANGE_BUFFER_BYTES = 32 * MiB;
/** Extents of one range decoded at once; the rest of the range waits in its buffer. */
export const EXTENTS_IN_FLIGHT = 2;
/** What the bound depends on: the restore's settings and its pool's. */
export interface RestoreMemoryConfig {
  parallel: number;
  rangeBufferBytes?: number;
  verify?: boolean;
  /** ZstdPool.memoryBound(MAX_EXTENT_DATA, false, decodeSlots(parallel, pool)). */
  poolBytes: number;
}

/** The size of each of the `parallel` range buffers: an equal share of the total, but at least one whole extent. */
export function rangeBufferSize(parallel: number, rangeBufferBytes = DEFAULT_RANGE_BUFFER_BYTES): number {
  return Math.max(MAX_EXTENT_SIZE, Math.floor(rangeBufferBytes / parallel));
}

/** The peak resident memory a restore with this configuration stays under (formula above). */
export function restoreMemoryBound(c: RestoreMemoryConfig): number {
  const ranges = c.parallel * rangeBufferSize(c.parallel, c.rangeBufferBytes);
  const readBack = c.verify ? c.parallel * EXTENTS_IN_FLIGHT * MAX_EXTENT_DATA : 0;
  return RUNTIME_RSS_BYTES + c.poolBytes + ranges + readBack;
}

/**
 * Splits a plan range into pieces of at most `maxBytes` at extent boundaries
 * (a piece holds ≥ 1 extent). An extent longer than MAX_EXTENT_SIZE cannot be
 * in a valid archive: refused here, before a buffer is sized by it.
 */
export function splitRange(range: PlanRange, maxBytes: number): PlanRange[] {
  const pieces: PlanRange[] = [];
  let cur: PlanRange | null = null;
  for (const ex of range.extents) {
    if (ex.length > MAX_EXTENT_SIZE) {
      throw new RestoreError(`extent at ${ex.offset} claims ${ex.length} bytes, more than any extent can hold (${MAX_EXTENT_SIZE})`);
    }
    if (cur !== null && ex.offset >= cur.offset && ex.offset + ex.length - cur.offset <= maxBytes) {
      cur.extents.push(ex);
      cur.length = Math.max(cur.length, ex.offset + ex.length - cur.offset);
      continue;
    }
    cur = { archive: range.archive, offset: ex.offset, length: ex.length, extents: [ex] };
    pieces.push(cur);
  }
  return pieces;
}

/**
 * Counts extents between "decode submitted" and "plaintext released", across
 * all ranges. Each holds up to two pool buffers (input, plaintext), so the
 * pool's buffers stay under pool.memoryBound(…, decodeSlots(…)). Two per
 * worker keep every worker busy (one job running, the next one ready).
 */
export class DecodeSlots {
  private free: number;
  private readonly waiting: Array<() => void> = [];

  constructor(readonly size: number) {
    this.free = size;
  }

  async acquire(): Promise<void> {
    if (this.free > 0) {
      this.free--;
      return;
    }
    await new Promise<void>((wake) => this.waiting.push(wake));
  }

  /** Hands the slot to the next waiter, else frees it. */
  release(): void {
    const next = this.waiting.shift();
    if (next) next();
    else this.free++;
  }
}

/** Extents in flight for a restore: EXTENTS_IN_FLIGHT per range, at most two per pool worker. */
export function decodeSlots(parallel: number, compressor: object): number {
  const workers = (compressor as { workerCount?: unknown }).workerCount;
  const perRange = parallel * EXTENTS_IN_FLIGHT;
  return typeof workers === 'number' ? Math.min(perRange, 2 * workers) : perRange;
}
