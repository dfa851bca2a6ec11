/**
 * Decoded extents, least recently used evicted first, bounded by a byte
 * budget that is configuration only. One buffer per extent (not one per
 * cluster): a sequential copy allocates, and the GC tracks, 64× fewer
 * external buffers. A Map keeps insertion order, so re-inserting on a hit
 * makes its first key the least recently used.
 */
import { CLUSTER_SIZE } from '../format/constants.js';

/** Clusters [first, first + count) of plan device `pi`, stored from byte `at` of the buffer. */
export interface StoredRun {
  pi: number;
  first: number;
  count: number;
  at: number;
}

/** Winning clusters of one extent in one buffer, run after run (each cluster at CLUSTER_SIZE steps). */
export interface DecodedExtent {
  buf: Buffer;
  runs: StoredRun[];
}

/** Where cluster `c` of device `pi` starts in `d.buf`, or -1 when `d` does not hold it. */
export function clusterAt(d: DecodedExtent, pi: number, c: number): number {
  for (const r of d.runs) if (r.pi === pi && c >= r.first && c < r.first + r.count) return r.at + (c - r.first) * CLUSTER_SIZE;
  return -1;
}

/** How many of clusters [first, first + n) of device `pi` `d` holds (its runs are disjoint: each cluster has one winner). */
export function clustersHeld(d: DecodedExtent, pi: number, first: number, n: number): number {
  let held = 0;
  for (const r of d.runs) if (r.pi === pi) held += Math.max(0, Math.min(first + n, r.first + r.count) - Math.max(first, r.first));
  return held;
}

export class ExtentCache {
  private readonly map = new Map<string, DecodedExtent>();
  private used = 0;
  private peak = 0;

  constructor(readonly limitBytes: number) {}

  get(key: string): DecodedExtent | undefined {
    const v = this.map.get(key);
    if (v === undefined) return undefined;
    this.map.delete(key);
    this.map.set(key, v);
    return v;
  }

  /** Like get, without refreshing its age (read-ahead planning). */
  peek(key: string): DecodedExtent | undefined {
    return this.map.get(key);
  }

  /** Keeps `data` (which the cache then owns, buffer included) unless it alone exceeds the budget. */
  set(key: string, data: DecodedExtent): void {
    if (data.buf.length > this.limitBytes) return;
    const old = this.map.get(key);
    if (old !== undefined) {
      this.map.delete(key);
      this.used -= old.buf.length;
    }
    // Evict before inserting: the budget holds at every instant.
    for (const [k, v] of this.map) {
      if (this.used + data.buf.length <= this.limitBytes) break;
      this.map.delete(k);
      this.used -= v.buf.length;
    }
    this.map.set(key, data);
    this.used += data.buf.length;
    if (this.used > this.peak) this.peak = this.used;
  }

  get bytes(): number {
    return this.used;
  }

  get peakBytes(): number {
    return this.peak;
  }

  clear(): void {
    this.map.clear();
    this.used = 0;
  }
}
