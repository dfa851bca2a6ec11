/**
 * Fetches, checks and decodes the extents a served read needs:
 *
 *   extents ──coalesced ranged reads──▶ decodeExtentLeased (zstd pool: both
 *   digests, decompression, GCM) ──▶ winning clusters copied into one
 *   buffer per extent, kept by the cache
 *
 * - Single flight: one fetch per extent, however many reads wait for it.
 * - Adjacent extents of one archive wanted at once share one ranged read
 *   (up to `maxFetchBytes`).
 * - An extent that fails its checks is remembered as damaged and logged
 *   once with its archive, offset and cluster ranges; reads touching it
 *   fail with ExtentDamagedError, every other extent keeps working. A fetch
 *   that fails (store error) is not remembered: a later read retries.
 */
import type { Compressor } from '../codec/types.js';
import { CowstreamError, FormatError, describeError } from '../errors.js';
import { decodeExtentLeased } from '../format/extent.js';
import type { RangeSource } from '../format/sink.js';
import type { Level } from '../log.js';
import { describeLocator } from '../restore/chain.js';
import type { ArchiveLocator, RestorePlan } from '../restore/plan.js';
import { clusterLength, type DeviceMap, type ServedExtent } from './cluster-map.js';
import type { DiskCache } from './disk-cache.js';
import { ExtentDamagedError, ExtentFetchError } from './errors.js';
import type { DecodedExtent, ExtentCache, StoredRun } from './extent-cache.js';
import { CLUSTER_SIZE } from '../format/constants.js';

export type ServeLog = (level: Level, message: string, fields?: Record<string, unknown>) => void;

export interface ExtentFetcherOptions {
  plan: RestorePlan;
  devices: DeviceMap[];
  openSource(locator: ArchiveLocator): Promise<RangeSource>;
  compressor: Compressor;
  key?: Buffer;
  /** Per chain index: the v2 header tag (authenticated chains only). */
  headerTags: (Buffer | null)[];
  cache: ExtentCache;
  diskCache?: DiskCache;
  maxFetchBytes: number;
  log: ServeLog;
}

export class ExtentFetcher {
  private readonly sources = new Map<number, Promise<RangeSource>>();
  private readonly inFlight = new Map<string, Promise<DecodedExtent>>();
  private readonly damaged = new Map<string, ExtentDamagedError>();
  readonly counters = { gets: 0, bytesFetched: 0, fetchErrors: 0 };
  private closed = false;

  constructor(private readonly o: ExtentFetcherOptions) {}

  get damagedCount(): number {
    return this.damaged.size;
  }

  /**
   * Starts (or joins) the fetch of every extent given; returns one promise
   * per extent, in order. Extents already damaged reject at once.
   */
  fetch(extents: ServedExtent[]): Promise<DecodedExtent>[] {
    const started = new Map<string, { resolve(v: DecodedExtent): void; reject(e: unknown): void }>();
    const result = extents.map((ex) => {
      const bad = this.damaged.get(ex.key);
      if (bad) return Promise.reject(bad);
      let p = this.inFlight.get(ex.key);
      if (!p) {
        p = new Promise<DecodedExtent>((resolve, reject) => started.set(ex.key, { resolve, reject }));
        p.catch(() => undefined);
        this.inFlight.set(ex.key, p);
        const done = (): void => void this.inFlight.delete(ex.key);
        p.then(done, done);
      }
      return p;
    });
    if (started.size > 0) {
      const fresh = extents.filter((e, i, all) => started.has(e.key) && all.findIndex((x) => x.key === e.key) === i);
      // run() settles every waiter itself; this only guards against a bug leaving one pending forever.
      this.run(fresh, started).catch((err: unknown) => {
        for (const w of started.values()) w.reject(new ExtentFetchError(`extent fetch failed: ${describeError(err)}`, { cause: err }));
      });
    }
    return result;
  }

  private async run(extents: ServedExtent[], waiters: Map<string, { resolve(v: DecodedExtent): void; reject(e: unknown): void }>): Promise<void> {
    const fromSource: ServedExtent[] = [];
    for (const ex of extents) {
      const stored = this.o.diskCache ? await this.o.diskCache.get(ex.key) : undefined;
      if (stored && stored.length === ex.length) {
        try {
          waiters.get(ex.key)!.resolve(await this.decode(ex, stored));
          continue;
        } catch {
          // A cache file that no longer decodes is dropped; the archive decides.
          this.o.diskCache!.drop(ex.key);
        }
      }
      fromSource.push(ex);
    }
    await Promise.all(
      this.coalesce(fromSource).map(async (group) => {
        try {
          const bytes = await this.readGroup(group);
          await Promise.all(group.map(async (ex) => {
            const w = waiters.get(ex.key)!;
            const slice = bytes.subarray(ex.offset - group[0]!.offset, ex.offset - group[0]!.offset + ex.length);
            try {
              const clusters = await this.decode(ex, slice);
              this.o.diskCache?.put(ex.key, Buffer.from(slice));
              w.resolve(clusters);
            } catch (err) {
              w.reject(this.classify(ex, err));
            }
          }));
        } catch (err) {
          this.counters.fetchErrors++;
          const e = new ExtentFetchError(`cannot fetch ${this.describe(group[0]!)}${group.length > 1 ? ` (and ${group.length - 1} adjacent extents)` : ''}: ${describeError(err)}`, { cause: err });
          for (const ex of group) waiters.get(ex.key)!.reject(e);
        }
      }),
    );
  }

  /** Adjacent extents of one archive become one read, at most maxFetchBytes long. */
  private coalesce(extents: ServedExtent[]): ServedExtent[][] {
    const sorted = [...extents].sort((a, b) => a.archive - b.archive || a.offset - b.offset);
    const groups: ServedExtent[][] = [];
    for (const ex of sorted) {
      const g = groups[groups.length - 1];
      const first = g?.[0];
      const last = g?.[g.length - 1];
      if (g && first && last && last.archive === ex.archive && last.offset + last.length === ex.offset && ex.offset + ex.length - first.offset <= this.o.maxFetchBytes) g.push(ex);
      else groups.push([ex]);
    }
    return groups;
  }

  private async readGroup(group: ServedExtent[]): Promise<Buffer> {
    if (this.closed) throw new CowstreamError('the export is closed');
    const first = group[0]!;
    const last = group[group.length - 1]!;
    const src = await this.sourceFor(first.archive);
    const length = last.offset + last.length - first.offset;
    this.counters.gets++;
    const bytes = await src.read(first.offset, length);
    this.counters.bytesFetched += bytes.length;
    return bytes;
  }

  private sourceFor(ai: number): Promise<RangeSource> {
    let p = this.sources.get(ai);
    if (!p) {
      const link = this.o.plan.chain[ai]!;
      p = this.o.openSource(link.locator).then(async (s) => {
        if (s.size !== link.size) {
          await s.close().catch(() => undefined);
          throw new FormatError(`${describeLocator(link.locator)} is ${s.size} bytes, its index said ${link.size} (archive replaced?)`);
        }
        return s;
      });
      p.catch(() => this.sources.delete(ai));
      this.sources.set(ai, p);
    }
    return p;
  }

  /** Checks and decodes one extent; returns the clusters it wins in one buffer, also put in the cache. */
  private async decode(ex: ServedExtent, bytes: Buffer): Promise<DecodedExtent> {
    const link = this.o.plan.chain[ex.archive]!;
    const leased = await decodeExtentLeased(bytes, {
      ...(this.o.key ? { key: this.o.key } : {}),
      keyFingerprint: link.keyFingerprint ?? null,
      compressor: this.o.compressor,
      archiveUuid: link.uuid,
      headerTag: this.o.headerTags[ex.archive] ?? null,
      what: `extent at ${ex.offset} of archive ${link.uuid}`,
    });
    try {
      const byCluster = new Map<string, Buffer>();
      for (const c of leased.clusters) byCluster.set(`${c.deviceId}:${c.cluster}`, c.data);
      const runs: StoredRun[] = [];
      let total = 0;
      for (const [pi, , first, count] of ex.runs) {
        runs.push({ pi, first, count, at: total });
        total += Math.max(0, Math.min(this.o.devices[pi]!.size, (first + count) * CLUSTER_SIZE) - first * CLUSTER_SIZE);
      }
      // A copy: the decoded buffer goes back to the pool below.
      const buf = Buffer.allocUnsafeSlow(total);
      ex.runs.forEach(([pi, devId, first, count], i) => {
        const map = this.o.devices[pi]!;
        for (let c = first; c < first + count; c++) {
          const data = byCluster.get(`${devId}:${c}`);
          const want = clusterLength(map, c);
          if (!data) throw new FormatError(`extent at ${ex.offset} of archive ${link.uuid} lacks cluster ${c} of device ${map.name} that its index promises`);
          if (data.length < want) throw new FormatError(`cluster ${c} of device ${map.name} in archive ${link.uuid} is ${data.length} bytes, expected ${want}`);
          data.copy(buf, runs[i]!.at + (c - first) * CLUSTER_SIZE, 0, want);
        }
      });
      const decoded = { buf, runs };
      this.keep(ex.key, decoded);
      return decoded;
    } finally {
      leased.release();
    }
  }

  /**
   * Caches a decoded extent. When the cache cannot hold it whole, it keeps
   * the extent's lowest clusters, which a sequential reader wants next, in a
   * buffer of their own (a view would pin the whole extent past the bound).
   */
  private keep(key: string, d: DecodedExtent): void {
    const limit = this.o.cache.limitBytes;
    if (d.buf.length <= limit) return this.o.cache.set(key, d);
    const runs: StoredRun[] = [];
    let used = 0;
    d.runs.forEach((r, i) => {
      const runBytes = (d.runs[i + 1]?.at ?? d.buf.length) - r.at;
      const fit = Math.min(r.count, Math.floor((limit - used) / CLUSTER_SIZE));
      if (fit <= 0 || runs.length < i) return;
      runs.push({ pi: r.pi, first: r.first, count: fit, at: used });
      used += Math.min(fit * CLUSTER_SIZE, runBytes);
    });
    if (used === 0) return;
    const buf = Buffer.allocUnsafeSlow(used);
    runs.forEach((r, i) => d.buf.copy(buf, r.at, d.runs[i]!.at, d.runs[i]!.at + (runs[i + 1]?.at ?? used) - r.at));
    this.o.cache.set(key, { buf, runs });
  }

  /** Format, digest, codec and key failures damage the extent for good; anything else is retried later. */
  private classify(ex: ServedExtent, err: unknown): Error {
    const permanent = err instanceof FormatError || (err instanceof CowstreamError && (err.code === 'CODEC' || err.code === 'KEY'));
    if (!permanent) {
      this.counters.fetchErrors++;
      return new ExtentFetchError(`cannot decode ${this.describe(ex)}: ${describeError(err)}`, { cause: err });
    }
    const ranges = this.clusterRanges(ex);
    const damaged = new ExtentDamagedError(`${this.describe(ex)} is damaged (clusters ${ranges.join(', ')}): ${describeError(err)}`, { cause: err });
    if (!this.damaged.has(ex.key)) {
      this.damaged.set(ex.key, damaged);
      const link = this.o.plan.chain[ex.archive]!;
      this.o.log('error', 'damaged extent: its clusters read as errors', {
        archive: link.uuid,
        source: describeLocator(link.locator),
        extentOffset: ex.offset,
        extentLength: ex.length,
        clusters: ranges,
        error: describeError(err),
      });
    }
    return this.damaged.get(ex.key)!;
  }

  private describe(ex: ServedExtent): string {
    return `extent at ${ex.offset} (+${ex.length}) of archive ${this.o.plan.chain[ex.archive]!.uuid}`;
  }

  /** "<device>:<first>-<last>" for every run the extent supplies. */
  clusterRanges(ex: ServedExtent): string[] {
    return ex.runs.map(([pi, , s, c]) => `${this.o.devices[pi]?.name ?? `#${pi}`}:${s}-${s + c - 1}`);
  }

  async close(): Promise<void> {
    this.closed = true;
    await Promise.allSettled([...this.inFlight.values()]);
    for (const p of this.sources.values()) await p.then((s) => s.close()).catch(() => undefined);
    this.sources.clear();
  }
}
