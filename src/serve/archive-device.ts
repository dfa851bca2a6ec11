/**
 * One disk of an archive chain as a read-only BlockDevice that reads lazily:
 * a read maps its clusters to segments (binary search), answers zero runs
 * and uncovered clusters with zeroes, cached clusters from memory, and
 * fetches only the extents still missing (ExtentFetcher). A read that
 * continues the previous one also starts fetching the next `readAheadBytes`
 * of the disk, one ranged read per extent, for sequential copies.
 */
import { checkRange } from '../device/range.js';
import { DeviceClosedError, ReadOnlyDeviceError } from '../device/errors.js';
import { pushExtent } from '../device/extents.js';
import type { BlockDevice, DeviceExtent } from '../device/types.js';
import { CLUSTER_SIZE } from '../format/constants.js';
import { forEachSegment, type DeviceMap, type ServedExtent } from './cluster-map.js';
import { clusterAt, clustersHeld, type DecodedExtent, type ExtentCache } from './extent-cache.js';
import type { ExtentFetcher } from './extent-fetcher.js';

export interface ArchiveDeviceCounters {
  cacheHits: number;
  cacheMisses: number;
}

export class ArchiveDevice implements BlockDevice {
  readonly readOnly = true;
  readonly size: number;
  private nextSequential = -1;
  private closed = false;

  constructor(
    private readonly map: DeviceMap,
    private readonly pi: number,
    private readonly fetcher: ExtentFetcher,
    private readonly cache: ExtentCache,
    private readonly readAheadBytes: number,
    private readonly counters: ArchiveDeviceCounters,
  ) {
    this.size = map.size;
  }

  async read(offset: number, length: number): Promise<Buffer> {
    return this.readInto(offset, length, false);
  }

  /**
   * read() for callers that only send the bytes on (the NBD server): when
   * the range lies in one run of one decoded extent, a view of the cached
   * buffer instead of a copy, so a sequential copy allocates no reply per
   * read. Views are never recycled: an evicted extent stays valid while a
   * reply still holds it, and memory beyond the cache bound is the replies
   * in flight, as with copies.
   */
  async readShared(offset: number, length: number): Promise<Buffer> {
    return this.readInto(offset, length, true);
  }

  private async readInto(offset: number, length: number, shared: boolean): Promise<Buffer> {
    if (this.closed) throw new DeviceClosedError('archive export is closed');
    checkRange(this.size, offset, length, 'read');
    if (length === 0) return Buffer.alloc(0);
    const c0 = Math.floor(offset / CLUSTER_SIZE);
    const c1 = Math.floor((offset + length - 1) / CLUSTER_SIZE);
    const found = new Map<string, DecodedExtent>();
    const needed = this.missingExtents(c0, c1, found, true);
    const sequential = offset === this.nextSequential;
    this.nextSequential = offset + length;
    const pending = this.fetcher.fetch(needed);
    if (sequential && this.readAheadBytes > 0) {
      // One ranged read per extent ahead, not one coalesced read: a store
      // connection carries a bounded rate (S3: tens of MB/s per connection),
      // so the window travels on parallel connections, and this read does
      // not wait for the bytes ahead of it. Failures surface when (and if)
      // those clusters are read.
      for (const ex of this.readAheadExtents(c1 + 1, needed)) for (const p of this.fetcher.fetch([ex])) p.catch(() => undefined);
    }
    const got = await Promise.all(pending);
    got.forEach((d, i) => found.set(needed[i]!.key, d));
    const view = shared ? this.viewOf(offset, length, c0, c1, found) : undefined;
    if (view) return view;
    // The caller owns the reply (it may change it): a fresh buffer, every byte written below.
    const out = Buffer.allocUnsafe(length);
    this.copyOut(out, offset, c0, c1, found);
    return out;
  }

  /**
   * The extents holding clusters [c0, c1] that the cache lacks (wholly or
   * partly), in disk order; cached ones go to `found` (so a later eviction
   * cannot lose them).
   */
  private missingExtents(c0: number, c1: number, found: Map<string, DecodedExtent> | null, count: boolean): ServedExtent[] {
    const want = new Map<string, ServedExtent>();
    forEachSegment(this.map, c0, c1, (first, n, seg) => {
      if (!seg?.extent) return;
      const key = seg.extent.key;
      const d = found ? (found.get(key) ?? this.cache.get(key)) : this.cache.peek(key);
      const hits = d === undefined ? 0 : clustersHeld(d, this.pi, first, n);
      if (count) {
        this.counters.cacheHits += hits;
        this.counters.cacheMisses += n - hits;
      }
      if (hits < n) want.set(key, seg.extent);
      else if (found && d !== undefined) found.set(key, d);
    });
    return [...want.values()];
  }

  private readAheadExtents(from: number, already: ServedExtent[]): ServedExtent[] {
    if (from >= this.map.clusters) return [];
    const to = Math.min(this.map.clusters - 1, from + Math.ceil(this.readAheadBytes / CLUSTER_SIZE) - 1);
    const keys = new Set(already.map((e) => e.key));
    return this.missingExtents(from, to, null, false).filter((e) => !keys.has(e.key));
  }

  /** [offset, offset + length) as a view of one extent's buffer, when it lies in one stored run. */
  private viewOf(offset: number, length: number, c0: number, c1: number, found: Map<string, DecodedExtent>): Buffer | undefined {
    let view: Buffer | undefined;
    let segments = 0;
    forEachSegment(this.map, c0, c1, (first, n, seg) => {
      if (++segments > 1 || !seg?.extent) return;
      const d = found.get(seg.extent.key)!;
      const at0 = clusterAt(d, this.pi, c0);
      // Clusters of one run sit CLUSTER_SIZE apart: first and last in place means all between are.
      if (at0 >= 0 && clusterAt(d, this.pi, c1) === at0 + (c1 - c0) * CLUSTER_SIZE) {
        const from = at0 + offset - c0 * CLUSTER_SIZE;
        view = d.buf.subarray(from, from + length);
      }
    });
    return segments === 1 ? view : undefined;
  }

  /** Fills all of `out`: zero runs and uncovered clusters with zeroes, the rest from the extents found. */
  private copyOut(out: Buffer, offset: number, c0: number, c1: number, found: Map<string, DecodedExtent>): void {
    const end = offset + out.length;
    forEachSegment(this.map, c0, c1, (first, n, seg) => {
      if (!seg?.extent) {
        out.fill(0, Math.max(offset, first * CLUSTER_SIZE) - offset, Math.min(end, (first + n) * CLUSTER_SIZE) - offset);
        return;
      }
      // A segment is one run of its extent, stored CLUSTER_SIZE apart: one copy (end <= size clips a short last cluster).
      const d = found.get(seg.extent.key)!;
      const start = first * CLUSTER_SIZE;
      const from = Math.max(offset, start);
      const to = Math.min(end, (first + n) * CLUSTER_SIZE);
      const at = clusterAt(d, this.pi, first);
      d.buf.copy(out, from - offset, at + from - start, at + to - start);
    });
  }

  /** Allocation map: data extents allocated, zero runs and uncovered clusters holes that read as zero. */
  async mapExtents(offset: number, length: number): Promise<DeviceExtent[]> {
    if (this.closed) throw new DeviceClosedError('archive export is closed');
    checkRange(this.size, offset, length, 'block status');
    const out: DeviceExtent[] = [];
    if (length === 0) return out;
    const end = offset + length;
    const c0 = Math.floor(offset / CLUSTER_SIZE);
    const c1 = Math.floor((end - 1) / CLUSTER_SIZE);
    forEachSegment(this.map, c0, c1, (first, n, seg) => {
      const s = Math.max(offset, first * CLUSTER_SIZE);
      const e = Math.min(end, (first + n) * CLUSTER_SIZE);
      pushExtent(out, e - s, !seg?.extent, !seg?.extent);
    });
    return out;
  }

  async write(): Promise<void> {
    throw new ReadOnlyDeviceError('an archive export is read-only');
  }

  async writeZeroes(): Promise<void> {
    throw new ReadOnlyDeviceError('an archive export is read-only');
  }

  async trim(): Promise<void> {
    throw new ReadOnlyDeviceError('an archive export is read-only');
  }

  async flush(): Promise<void> {}

  async close(): Promise<void> {
    this.closed = true;
  }
}
