/**
 * Instant restore: the disks of an archive (its incremental chain resolved,
 * like `cowstream restore`) as read-only BlockDevices that fetch extents
 * lazily with ranged reads (docs/serve.md). Opening reads only footers,
 * headers and indexes; memory is bounded by the cache configuration, the
 * plan's runs and the reads in flight, never by disk size.
 */
import type { Compressor } from '../codec/types.js';
import { UsageError } from '../errors.js';
import { authenticatePlan, checkPlanKey } from '../restore/authenticate.js';
import { resolveChain } from '../restore/chain.js';
import { parentLocator, resolveRef, sourceOpener, type ArchiveContext } from '../restore/locate.js';
import { planRestore, type ArchiveLocator, type PlannerArchive, type RestorePlan } from '../restore/plan.js';
import type { BlockDevice, DeviceExtent } from '../device/types.js';
import { ArchiveDevice } from './archive-device.js';
import { buildDeviceMaps } from './cluster-map.js';
import { DiskCache } from './disk-cache.js';
import { ExtentCache } from './extent-cache.js';
import { ExtentFetcher, type ServeLog } from './extent-fetcher.js';
import type { ServeStats } from './types.js';

export type { ServeStats } from './types.js';
export { ExtentDamagedError, ExtentFetchError } from './errors.js';

export const DEFAULT_CACHE_MEMORY_BYTES = 256 * 1024 * 1024;
export const DEFAULT_DISK_CACHE_BYTES = 4 * 1024 * 1024 * 1024;
export const DEFAULT_READ_AHEAD_BYTES = 32 * 1024 * 1024;
/** Largest single ranged read (coalesced extents); an extent is at most ~4 MiB. */
export const MAX_FETCH_BYTES = 16 * 1024 * 1024;

export interface ArchiveExportOptions {
  ref: string | ArchiveLocator;
  context: ArchiveContext;
  /** Archive key for encrypted chains. */
  key?: Buffer;
  /** Default: all devices of the archive. */
  devices?: string[];
  cache?: { memoryBytes?: number; dir?: string; diskBytes?: number };
  /** Extra bytes fetched after a read that continues the previous one (0: none). */
  readAheadBytes?: number;
  /** zstd pool; created and closed by the set when absent. */
  compressor?: Compressor;
  /** The JSON-lines logger's emit function (src/log.ts); default: silent. */
  log?: ServeLog;
}

export interface ArchiveExport {
  name: string;
  size: number;
  /** Read-only, with mapExtents. */
  device: BlockDevice & { mapExtents(offset: number, length: number): Promise<DeviceExtent[]> };
}

export interface ArchiveExportSet {
  archive: { uuid: string; host: string; created: string; chainDepth: number };
  exports: ArchiveExport[];
  stats(): ServeStats;
  close(): Promise<void>;
}

function checkBytes(n: number | undefined, what: string, fallback: number): number {
  const v = n ?? fallback;
  if (!Number.isSafeInteger(v) || v < 0) throw new UsageError(`${what} must be a whole number of bytes ≥ 0, got ${n}`);
  return v;
}

/** What buildRestorePlan does, keeping the newest archive's creation time; with a key, authenticated. */
interface OpenedPlan {
  chain: PlannerArchive[];
  plan: RestorePlan;
  headerTags: (Buffer | null)[];
}

async function readPlan(opts: ArchiveExportOptions, openSource: ReturnType<typeof sourceOpener>): Promise<OpenedPlan> {
  const start = typeof opts.ref === 'string' ? await resolveRef(opts.ref, opts.context) : opts.ref;
  const chain = await resolveChain(start, { openSource, locateParent: parentLocator(opts.context) });
  const plan = planRestore(chain, opts.devices && opts.devices.length > 0 ? { devices: opts.devices } : {});
  checkPlanKey(plan, opts.key);
  // With a key nothing the index says is trusted until it authenticates (docs/security.md).
  const headerTags = opts.key ? (await authenticatePlan(plan, opts.key, openSource)).headerTags : [];
  return { chain, plan, headerTags };
}

export async function openArchiveExports(opts: ArchiveExportOptions): Promise<ArchiveExportSet> {
  const memoryBytes = checkBytes(opts.cache?.memoryBytes, 'cache memory', DEFAULT_CACHE_MEMORY_BYTES);
  const diskBytes = checkBytes(opts.cache?.diskBytes, 'disk cache size', DEFAULT_DISK_CACHE_BYTES);
  // Read-ahead lands in the cache: more than half of it would evict itself.
  const readAheadBytes = Math.min(checkBytes(opts.readAheadBytes, 'read-ahead', DEFAULT_READ_AHEAD_BYTES), Math.floor(memoryBytes / 2));
  const openSource = sourceOpener(opts.context);
  const ownCompressor = opts.compressor === undefined;
  const compressor = opts.compressor ?? new (await import('../codec/zstd-pool.js')).ZstdPool({});
  // The first worker starts while the chain is read (round trips to the
  // store), not inside the first client read that needs a decode.
  compressor.prestart?.(1);
  let opened: OpenedPlan;
  try {
    opened = await readPlan(opts, openSource);
  } catch (err) {
    if (ownCompressor) await compressor.close();
    throw err;
  }
  const { chain, plan, headerTags } = opened;
  const devices = buildDeviceMaps(plan);
  const diskCache = opts.cache?.dir !== undefined ? await DiskCache.open(opts.cache.dir, diskBytes) : undefined;
  const cache = new ExtentCache(memoryBytes);
  const fetcher = new ExtentFetcher({
    plan,
    devices,
    openSource,
    compressor,
    ...(opts.key ? { key: opts.key } : {}),
    headerTags,
    cache,
    ...(diskCache ? { diskCache } : {}),
    maxFetchBytes: MAX_FETCH_BYTES,
    log: opts.log ?? (() => undefined),
  });
  const counters = { cacheHits: 0, cacheMisses: 0 };
  const exports = devices.map((d, pi) => ({ name: d.name, size: d.size, device: new ArchiveDevice(d, pi, fetcher, cache, readAheadBytes, counters) }));
  const created = new Date(chain[0]!.createdAt ?? 0).toISOString();
  let closing: Promise<void> | undefined;
  return {
    archive: { uuid: plan.archiveUuid, host: plan.hostId, created, chainDepth: plan.chain.length },
    exports,
    stats: (): ServeStats => ({
      gets: fetcher.counters.gets,
      bytesFetched: fetcher.counters.bytesFetched,
      cacheHits: counters.cacheHits,
      cacheMisses: counters.cacheMisses,
      cacheBytes: cache.bytes,
      cacheBytesPeak: cache.peakBytes,
      cacheLimitBytes: memoryBytes,
      diskCacheHits: diskCache?.hits ?? 0,
      diskCacheBytes: diskCache?.bytes ?? 0,
      extentErrors: fetcher.damagedCount,
      fetchErrors: fetcher.counters.fetchErrors,
    }),
    close: () =>
      (closing ??= (async () => {
        for (const e of exports) await e.device.close();
        await fetcher.close();
        cache.clear();
        await diskCache?.close();
        if (ownCompressor) await compressor.close();
      })()),
  };
}
