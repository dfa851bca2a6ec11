/**
 * Restore engine: executes a RestorePlan.
 *
 *   plan.ranges ──(≤ parallel ranged GETs)──▶ decodeExtent (ZstdPool) ──▶ positional writes
 *
 * - Each PlanRange is one ranged read (adjacent extents coalesced by the planner).
 * - Up to `parallel` ranges are in flight; inside a range at most
 *   EXTENTS_IN_FLIGHT extents are decoded at once. Memory bound ≈
 *   parallel × (maxRangeBytes + EXTENTS_IN_FLIGHT × 2 × MAX_EXTENT_DATA),
 *   independent of disk size.
 * - Every extent's stored and plaintext SHA-256 are always checked, together
 *   with the decompression, in a pool worker (PayloadUnpacker): this thread
 *   only moves bytes. Range buffers and plaintext buffers are recycled, so a
 *   restore of any size allocates nothing per range or extent.
 *   Without --verify the first bad extent stops the restore; with --verify
 *   every extent is checked, all damaged clusters are named, and each
 *   written cluster is read back and compared.
 * - Zero runs: holes in fresh (sparse) files, explicit zeroes on block devices.
 */
import { unlink } from 'node:fs/promises';
import type { Compressor } from '../codec/types.js';
import { ChecksumError, CowstreamError, FormatError, RestoreError } from '../errors.js';
import { CLUSTER_SIZE } from '../format/constants.js';
import { decodeExtentLeased } from '../format/extent.js';
import type { RangeSource } from '../format/sink.js';
import type { ArchiveLocator, PlanExtent, RestorePlan } from './plan.js';
import { describeLocator } from './chain.js';
import { openTargets, type RestoreOutput } from './target.js';
import { authenticatePlan, checkPlanKey } from './authenticate.js';

export const DEFAULT_PARALLEL = 4;
export const MAX_PARALLEL = 64;
const EXTENTS_IN_FLIGHT = 2;
/** Buffers per writev (Linux IOV_MAX is 1024; an extent holds ≤ 64 clusters anyway). */
const WRITEV_MAX = 64;
const ZERO_CHUNK = Buffer.alloc(4 * 1024 * 1024);

export interface RestoreProgress {
  /** Device bytes restored so far (data clusters written + zero clusters handled). */
  bytesDone: number;
  bytesTotal: number;
  /** Archive bytes fetched so far. */
  fetchedBytes: number;
  rangesDone: number;
  rangesTotal: number;
}

export interface RestoreOptions {
  plan: RestorePlan;
  /** Opens an archive of the plan's chain (S3 ranged GETs or a local file). */
  openSource(locator: ArchiveLocator): Promise<RangeSource>;
  /** Directory (→ `<NAME>.raw`) or, for one device, a file / block device. */
  target: string;
  /** Restrict to these plan devices (default: all devices of the plan). */
  devices?: string[];
  parallel?: number;
  verify?: boolean;
  key?: Buffer;
  compressor: Compressor;
  force?: boolean;
  /**
   * Opens the targets instead of `target`/`force` (the agent's catalogue
   * restores: src/restore/confined.ts, never following a symlink).
   */
  openTargets?: (devices: { name: string; size: number }[]) => Promise<RestoreOutput[]>;
  onProgress?: (p: RestoreProgress) => void;
  signal?: AbortSignal;
}

export interface DamagedExtent {
  archive: string;
  offset: number;
  length: number;
  error: string;
  /** "<device>:<first>-<last>" cluster ranges the extent would have supplied. */
  clusters: string[];
}

export interface RestoreResult {
  archiveUuid: string;
  chainLength: number;
  devices: { name: string; path: string; size: number; dataClusters: number; zeroClusters: number }[];
  bytesTotal: number;
  fetchedBytes: number;
  writtenBytes: number;
  ranges: number;
  durationMs: number;
  verified: boolean;
}

/** Names the clusters an extent was to supply, for error messages. */
function clusterNames(plan: RestorePlan, ex: PlanExtent): string[] {
  return ex.runs.map(([pi, , s, c]) => `${plan.devices[pi]?.name ?? `#${pi}`}:${s}-${s + c - 1}`);
}

/** Bounded-concurrency map over an array; stops launching new work after the first error. */
async function pool<T>(items: T[], width: number, fn: (item: T, i: number) => Promise<void>, signal?: AbortSignal): Promise<void> {
  let next = 0;
  let failed: unknown = undefined;
  let hasFailed = false;
  const worker = async (): Promise<void> => {
    while (!hasFailed && next < items.length) {
      if (signal?.aborted) throw new RestoreError('restore cancelled', { cause: signal.reason });
      const i = next++;
      try {
        await fn(items[i]!, i);
      } catch (err) {
        if (!hasFailed) {
          hasFailed = true;
          failed = err;
        }
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(width, items.length) }, worker));
  if (hasFailed) throw failed;
}

export async function restoreArchive(opts: RestoreOptions): Promise<RestoreResult> {
  const started = Date.now();
  const plan = opts.plan;
  const parallel = opts.parallel ?? DEFAULT_PARALLEL;
  if (!Number.isInteger(parallel) || parallel < 1 || parallel > MAX_PARALLEL) {
    throw new RestoreError(`parallel must be 1..${MAX_PARALLEL}, got ${parallel}`);
  }
  // Device selection (by plan device index).
  let selected = plan.devices.map((_, i) => i);
  if (opts.devices && opts.devices.length > 0) {
    selected = opts.devices.map((n) => {
      const i = plan.devices.findIndex((d) => d.name === n);
      if (i < 0) throw new RestoreError(`the restore plan has no device "${n}" (devices: ${plan.devices.map((d) => d.name).join(', ')})`);
      return i;
    });
  }
  // Key problems are found before any target is touched.
  checkPlanKey(plan, opts.key);
  // With a key, nothing the plan says is trusted until every archive's header
  // and index verify under it and the plan matches them (docs/security.md).
  const headerTags = opts.key ? (await authenticatePlan(plan, opts.key, opts.openSource)).headerTags : [];
  const wantedDevices = selected.map((i) => ({ name: plan.devices[i]!.name, size: plan.devices[i]!.size }));
  const targets = opts.openTargets ? await opts.openTargets(wantedDevices) : await openTargets(opts.target, wantedDevices, opts.force ?? false);
  const targetOf = new Map<number, RestoreOutput>(selected.map((pi, k) => [pi, targets[k]!]));

  const bytesTotal = selected.reduce((n, i) => n + plan.devices[i]!.size, 0);
  const progress: RestoreProgress = { bytesDone: 0, bytesTotal, fetchedBytes: 0, rangesDone: 0, rangesTotal: 0 };
  let writtenBytes = 0;
  const report = (): void => opts.onProgress?.({ ...progress });

  const clusterBytes = (pi: number, first: number, count: number): number => {
    const size = plan.devices[pi]!.size;
    return Math.max(0, Math.min(size, (first + count) * CLUSTER_SIZE) - first * CLUSTER_SIZE);
  };

  // Only ranges that supply a selected device.
  const ranges = plan.ranges.filter((r) => r.extents.some((e) => e.runs.some(([pi]) => targetOf.has(pi))));
  progress.rangesTotal = ranges.length;

  const sources = new Map<number, Promise<RangeSource>>();
  const sourceFor = (ai: number): Promise<RangeSource> => {
    let p = sources.get(ai);
    if (!p) {
      const link = plan.chain[ai];
      if (!link) throw new RestoreError(`restore plan refers to archive #${ai}, chain has ${plan.chain.length}`);
      p = opts.openSource(link.locator).then((s) => {
        if (s.size !== link.size) {
          throw new RestoreError(`${describeLocator(link.locator)} is ${s.size} bytes, the plan expects ${link.size} (archive replaced?)`);
        }
        return s;
      });
      p.catch(() => undefined);
      sources.set(ai, p);
    }
    return p;
  };

  // Range buffers are reused (≤ `parallel` of them, the same bound as
  // before): allocating ~16 MiB per range made a restore's main thread spend
  // much of its time in GC, driven by external-memory pressure.
  // Every buffer is as large as the largest range, so any free one fits.
  const freeRangeBuffers: Buffer[] = [];
  let largestRange = 0;
  for (const r of ranges) largestRange = Math.max(largestRange, r.length);
  const takeRangeBuffer = (): Buffer => freeRangeBuffers.pop() ?? Buffer.allocUnsafeSlow(largestRange);
  const giveRangeBuffer = (b: Buffer): void => {
    if (freeRangeBuffers.length < parallel) freeRangeBuffers.push(b);
  };

  const damaged: DamagedExtent[] = [];
  const verify = opts.verify ?? false;
  const mismatched: string[] = [];
  let ok = false;
  try {
    // 1. Zero runs (and clusters no archive covers) on targets that are not fresh.
    for (const pi of selected) {
      const t = targetOf.get(pi)!;
      const d = plan.devices[pi]!;
      for (const [first, count] of [...d.zeroRuns, ...d.missingRuns]) {
        const start = first * CLUSTER_SIZE;
        const len = clusterBytes(pi, first, count);
        if (!t.fresh) {
          for (let off = 0; off < len; off += ZERO_CHUNK.length) {
            const n = Math.min(ZERO_CHUNK.length, len - off);
            await t.fh.write(ZERO_CHUNK, 0, n, start + off);
            writtenBytes += n;
          }
        }
        progress.bytesDone += len;
      }
    }
    report();

    // 2. Data: parallel ranged reads, decode, positional writes.
    await pool(
      ranges,
      parallel,
      async (range) => {
        const link = plan.chain[range.archive]!;
        const src = await sourceFor(range.archive);
        const rangeBuf = takeRangeBuffer();
        const bytes = await src.read(range.offset, range.length, rangeBuf);
        progress.fetchedBytes += bytes.length;
        const wanted = range.extents.filter((e) => e.runs.some(([pi]) => targetOf.has(pi)));
        await pool(wanted, EXTENTS_IN_FLIGHT, async (ex) => {
          const slice = bytes.subarray(ex.offset - range.offset, ex.offset - range.offset + ex.length);
          let leased;
          try {
            leased = await decodeExtentLeased(slice, {
              ...(opts.key ? { key: opts.key } : {}),
              keyFingerprint: link.keyFingerprint ?? null,
              compressor: opts.compressor,
              archiveUuid: link.uuid,
              headerTag: headerTags[range.archive] ?? null,
              what: `extent at ${ex.offset} of archive ${link.uuid}`,
            });
          } catch (err) {
            const names = clusterNames(plan, ex);
            if (err instanceof FormatError || (err instanceof CowstreamError && err.code === 'CODEC')) {
              if (verify) {
                damaged.push({ archive: link.uuid, offset: ex.offset, length: ex.length, error: err.message, clusters: names });
                return;
              }
              throw new ChecksumError(`${err.message}; affected clusters: ${names.join(', ')}`, { cause: err });
            }
            throw err;
          }
          // Index decoded clusters by (archive device id, cluster).
          const byKey = new Map<string, Buffer>();
          for (const c of leased.clusters) byKey.set(`${c.deviceId}:${c.cluster}`, c.data);
          try {
            for (const [pi, devId, first, count] of ex.runs) {
              const t = targetOf.get(pi);
              if (!t) continue;
              // One positional writev per run of consecutive clusters (≤ IOV_MAX
              // buffers) instead of a syscall per 64 KiB cluster.
              for (let c0 = first; c0 < first + count; c0 += WRITEV_MAX) {
                const end = Math.min(first + count, c0 + WRITEV_MAX);
                const bufs: Buffer[] = [];
                for (let c = c0; c < end; c++) {
                  const data = byKey.get(`${devId}:${c}`);
                  const expectLen = clusterBytes(pi, c, 1);
                  if (!data) throw new FormatError(`extent at ${ex.offset} of archive ${link.uuid} lacks cluster ${c} of device ${t.name} that its index promises`);
                  if (data.length < expectLen) throw new FormatError(`cluster ${c} of device ${t.name} in archive ${link.uuid} is ${data.length} bytes, expected ${expectLen}`);
                  bufs.push(data.length === expectLen ? data : data.subarray(0, expectLen));
                }
                const len = bufs.reduce((n, b) => n + b.length, 0);
                const { bytesWritten } = await t.fh.writev(bufs, c0 * CLUSTER_SIZE);
                if (bytesWritten !== len) throw new RestoreError(`short write to ${t.path}: ${bytesWritten} of ${len} bytes at cluster ${c0}`);
                writtenBytes += len;
                if (verify) {
                  // Read back what was just written (bounded: one run), catching
                  // short or misdirected writes on the target.
                  const back = Buffer.alloc(len);
                  await t.fh.read(back, 0, len, c0 * CLUSTER_SIZE);
                  let pos = 0;
                  bufs.forEach((b, k) => {
                    if (!back.subarray(pos, pos + b.length).equals(b)) mismatched.push(`${t.name}:${c0 + k}`);
                    pos += b.length;
                  });
                }
              }
              progress.bytesDone += clusterBytes(pi, first, count);
            }
          } finally {
            // Written (or failed): the plaintext buffer goes back to the pool.
            leased.release();
          }
        });
        // Every extent of the range is decoded (the workers got copies) and
        // written: its buffer serves the next range.
        giveRangeBuffer(rangeBuf);
        progress.rangesDone++;
        report();
      },
      opts.signal,
    );

    if (damaged.length > 0) {
      const list = damaged.map((d) => `archive ${d.archive} extent@${d.offset}: clusters ${d.clusters.join(', ')} (${d.error})`);
      const err = new ChecksumError(`restore verification failed: ${damaged.length} damaged extent(s): ${list.join('; ')}`);
      (err as ChecksumError & { damaged?: DamagedExtent[] }).damaged = damaged;
      throw err;
    }
    for (const t of targets) await t.fh.sync();

    if (mismatched.length > 0) {
      throw new ChecksumError(`read-back after restore differs in ${mismatched.length} cluster(s): ${mismatched.slice(0, 20).join(', ')}`);
    }
    ok = true;
  } finally {
    for (const t of targets) await t.fh.close().catch(() => undefined);
    for (const p of sources.values()) await p.then((s) => s.close()).catch(() => undefined);
    if (!ok) for (const t of targets) if (t.created) await (t.remove ? t.remove() : unlink(t.path)).catch(() => undefined);
    for (const t of targets) await t.release?.().catch(() => undefined);
  }
  report();
  return {
    archiveUuid: plan.archiveUuid,
    chainLength: plan.chain.length,
    devices: selected.map((pi) => ({
      name: plan.devices[pi]!.name,
      path: targetOf.get(pi)!.path,
      size: plan.devices[pi]!.size,
      dataClusters: plan.devices[pi]!.dataClusters,
      zeroClusters: plan.devices[pi]!.zeroClusters,
    })),
    bytesTotal,
    fetchedBytes: progress.fetchedBytes,
    writtenBytes,
    ranges: ranges.length,
    durationMs: Date.now() - started,
    verified: verify,
  };
}

