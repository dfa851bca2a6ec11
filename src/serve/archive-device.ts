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
import type { ClusterCache } from './cluster-cache.js';
import { clusterLength, forEachSegment, type DeviceMap, type ServedExtent } from './cluster-map.js';
import type { ExtentClusters, ExtentFetcher } from './extent-fetcher.js';

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
    private readonly cache: ClusterCache,
    private readonly readAheadBytes: number,
    private readonly counters: ArchiveDeviceCounters,
  ) {
    this.size = map.size;
  }

  async read(offset: number, length: number): Promise<Buffer> {
    if (this.closed) throw new DeviceClosedError('archive export is closed');
    checkRange(this.size, offset, length, 'read');
    const out = Buffer.alloc(length);
    if (length === 0) return out;
    const c0 = Math.floor(offset / CLUSTER_SIZE);
    const c1 = Math.floor((offset + length - 1) / CLUSTER_SIZE);
    const found = new Map<number, Buffer>();
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
    for (const clusters of got) for (const [k, v] of clusters) found.set(k, v);
    this.copyOut(out, offset, c0, c1, found);
    return out;
  }

  /**
   * The uncached extents holding clusters [c0, c1], in disk order; cached
   * clusters go to `found` (so a later eviction cannot lose them).
   */
  private missingExtents(c0: number, c1: number, found: Map<number, Buffer> | null, count: boolean): ServedExtent[] {
    const want = new Map<string, ServedExtent>();
    forEachSegment(this.map, c0, c1, (first, n, seg) => {
      if (!seg?.extent) return;
      for (let c = first; c < first + n; c++) {
        const key = this.fetcher.cacheKey(this.pi, c);
        const hit = found ? this.cache.get(key) : this.cache.has(key) ? true : undefined;
        if (hit !== undefined) {
          if (count) this.counters.cacheHits++;
          if (found && hit !== true) found.set(key, hit);
        } else {
          if (count) this.counters.cacheMisses++;
          want.set(seg.extent.key, seg.extent);
        }
      }
    });
    return [...want.values()];
  }

  private readAheadExtents(from: number, already: ServedExtent[]): ServedExtent[] {
    if (from >= this.map.clusters) return [];
    const to = Math.min(this.map.clusters - 1, from + Math.ceil(this.readAheadBytes / CLUSTER_SIZE) - 1);
    const keys = new Set(already.map((e) => e.key));
    return this.missingExtents(from, to, null, false).filter((e) => !keys.has(e.key));
  }

  private copyOut(out: Buffer, offset: number, c0: number, c1: number, found: ExtentClusters): void {
    forEachSegment(this.map, c0, c1, (first, n, seg) => {
      if (!seg?.extent) return; // zeroes: `out` starts zeroed
      for (let c = first; c < first + n; c++) {
        const data = found.get(this.fetcher.cacheKey(this.pi, c))!;
        const start = c * CLUSTER_SIZE;
        const from = Math.max(offset, start);
        const to = Math.min(offset + out.length, start + clusterLength(this.map, c));
        data.copy(out, from - offset, from - start, to - start);
      }
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
