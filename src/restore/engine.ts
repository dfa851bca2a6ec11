/**
 * Restore engine: executes a RestorePlan.
 *
 *   plan.ranges ──(≤ parallel ranged GETs)──▶ decodeExtent (ZstdPool) ──▶ positional writes
 *
 * - Each PlanRange is one ranged read (adjacent extents coalesced by the planner).
 * - Up to `parallel` ranges are in flight; inside a range at most
 *   EXTENTS_IN_FLIGHT extents are decoded at once. Ranges are read into
 *   `parallel` reused buffers that share `rangeBufferBytes` (longer plan
 *   ranges are read in pieces): the memory bound is restoreMemoryBound()
 *   in memory.ts, set by configuration, independent of disk size.
 * - Every extent's plaintext SHA-256 is always checked (end to end), and with
 *   --verify its stored-payload SHA-256 too, together with the decompression,
 *   in a pool worker (PayloadUnpacker): this thread only moves bytes. Range
 *   buffers and plaintext buffers are recycled, so a restore of any size
 *   allocates nothing per range or extent.
 *   Without --verify the first bad extent stops the restore; with --verify
 *   every extent is checked, all damaged clusters are named, and each
 *   written cluster is read back and compared.
 * - Zero runs: holes in fresh (sparse) files, explicit zeroes on block devices.
 */
import { unlink } from 'node:fs/promises';
import type { Compressor } from '../codec/types.js';
import { writeAll } from '../device/file-io.js';
import { ChecksumError, CowstreamError, FormatError, RestoreError } from '../errors.js';
import { CLUSTER_SIZE } from '../format/constants.js';
import { decodeExtentLeased, type LeasedClusters } from '../format/extent.js';
import type { RangeSource } from '../format/sink.js';
import type { ArchiveLocator, PlanExtent, PlanRange, RestorePlan } from './plan.js';
import { describeLocator } from './chain.js';
import { openTargets, type RestoreOutput } from './target.js';
import { pool } from './pool.js';
import { authenticatePlan, checkPlanKey } from './authenticate.js';
import { DecodeSlots, decodeSlots, DEFAULT_RANGE_BUFFER_BYTES, EXTENTS_IN_FLIGHT, rangeBufferSize, splitRange } from './memory.js';

export const DEFAULT_PARALLEL = 4;
export const MAX_PARALLEL = 64;
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
  /** Total of the range buffers (memory.ts); default DEFAULT_RANGE_BUFFER_BYTES. */
  rangeBufferBytes?: number;
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

/** Everything one restore shares between its steps. */
interface RestoreRun {
  plan: RestorePlan;
  opts: RestoreOptions;
  verify: boolean;
  /** Plan device index → its opened target (selected devices only). */
  targetOf: Map<number, RestoreOutput>;
  headerTags: (Buffer | null)[];
  progress: RestoreProgress;
  writtenBytes: number;
  damaged: DamagedExtent[];
  /** "<device>:<cluster>" of clusters whose read-back differed (--verify). */
  mismatched: string[];
  sources: Map<number, Promise<RangeSource>>;
  rangeBuffers: RangeBuffers;
  slots: DecodeSlots;
}

/**
 * Steps: check the options → choose the devices → check the key (and with a
 * key, authenticate the plan) → cut the ranges into pieces that fit the
 * range buffers → open the targets → zero runs → data ranges (read, decode,
 * write) → report damage, sync → close everything (removing targets it
 * created if anything failed).
 */
export async function restoreArchive(opts: RestoreOptions): Promise<RestoreResult> {
  const started = Date.now();
  const plan = opts.plan;
  const parallel = checkParallel(opts.parallel ?? DEFAULT_PARALLEL);
  const selected = selectDevices(plan, opts.devices);
  checkPlanKey(plan, opts.key);
  // With a key, nothing the plan says is trusted until every archive's header
  // and index verify under it and the plan matches them (docs/security.md).
  const headerTags = opts.key ? (await authenticatePlan(plan, opts.key, opts.openSource)).headerTags : [];
  // Refused before any target is touched if an extent is impossible (splitRange).
  const ranges = rangePieces(plan, new Set(selected), parallel, opts.rangeBufferBytes ?? DEFAULT_RANGE_BUFFER_BYTES);
  const wantedDevices = selected.map((i) => ({ name: plan.devices[i]!.name, size: plan.devices[i]!.size }));
  const targets = opts.openTargets ? await opts.openTargets(wantedDevices) : await openTargets(opts.target, wantedDevices, opts.force ?? false);
  const bytesTotal = selected.reduce((n, i) => n + plan.devices[i]!.size, 0);
  const run: RestoreRun = {
    plan,
    opts,
    verify: opts.verify ?? false,
    targetOf: new Map(selected.map((pi, k) => [pi, targets[k]!])),
    headerTags,
    progress: { bytesDone: 0, bytesTotal, fetchedBytes: 0, rangesDone: 0, rangesTotal: ranges.length },
    writtenBytes: 0,
    damaged: [],
    mismatched: [],
    sources: new Map(),
    rangeBuffers: new RangeBuffers(ranges, parallel),
    slots: new DecodeSlots(decodeSlots(parallel, opts.compressor)),
  };
  let ok = false;
  try {
    await writeZeroRuns(run, selected);
    report(run);
    await pool(ranges, parallel, (range) => restoreRange(run, range), opts.signal);
    await finishTargets(run, targets);
    ok = true;
  } finally {
    await closeAll(run, targets, ok);
  }
  report(run);
  return {
    archiveUuid: plan.archiveUuid,
    chainLength: plan.chain.length,
    devices: selected.map((pi) => ({
      name: plan.devices[pi]!.name,
      path: run.targetOf.get(pi)!.path,
      size: plan.devices[pi]!.size,
      dataClusters: plan.devices[pi]!.dataClusters,
      zeroClusters: plan.devices[pi]!.zeroClusters,
    })),
    bytesTotal,
    fetchedBytes: run.progress.fetchedBytes,
    writtenBytes: run.writtenBytes,
    ranges: ranges.length,
    durationMs: Date.now() - started,
    verified: run.verify,
  };
}

function checkParallel(parallel: number): number {
  if (!Number.isInteger(parallel) || parallel < 1 || parallel > MAX_PARALLEL) {
    throw new RestoreError(`parallel must be 1..${MAX_PARALLEL}, got ${parallel}`);
  }
  return parallel;
}

/** Plan device indexes to restore: all, or those named (each must exist). */
function selectDevices(plan: RestorePlan, names: string[] | undefined): number[] {
  if (!names || names.length === 0) return plan.devices.map((_, i) => i);
  return names.map((n) => {
    const i = plan.devices.findIndex((d) => d.name === n);
    if (i < 0) throw new RestoreError(`the restore plan has no device "${n}" (devices: ${plan.devices.map((d) => d.name).join(', ')})`);
    return i;
  });
}

/** Only ranges that supply a selected device, in pieces that fit a range buffer. */
function rangePieces(plan: RestorePlan, selected: Set<number>, parallel: number, rangeBufferBytes: number): PlanRange[] {
  const pieceBytes = rangeBufferSize(parallel, rangeBufferBytes);
  return plan.ranges.filter((r) => r.extents.some((e) => e.runs.some(([pi]) => selected.has(pi)))).flatMap((r) => splitRange(r, pieceBytes));
}

/**
 * Range buffers, reused (≤ `parallel` of them): allocating ~16 MiB per range
 * made a restore's main thread spend much of its time in GC, driven by
 * external-memory pressure. Every buffer is as large as the largest piece
 * (≤ the piece size, or one extent), so any free one fits.
 */
class RangeBuffers {
  private readonly free: Buffer[] = [];
  private readonly size: number;

  constructor(
    ranges: PlanRange[],
    private readonly parallel: number,
  ) {
    this.size = ranges.reduce((n, r) => Math.max(n, r.length), 0);
  }

  take(): Buffer {
    return this.free.pop() ?? Buffer.allocUnsafeSlow(this.size);
  }

  give(b: Buffer): void {
    if (this.free.length < this.parallel) this.free.push(b);
  }
}

function report(run: RestoreRun): void {
  run.opts.onProgress?.({ ...run.progress });
}

/** Bytes of clusters [first, first + count) of plan device `pi` (the last cluster may be partial). */
function clusterBytes(plan: RestorePlan, pi: number, first: number, count: number): number {
  const size = plan.devices[pi]!.size;
  return Math.max(0, Math.min(size, (first + count) * CLUSTER_SIZE) - first * CLUSTER_SIZE);
}

/** The archive's source, opened once per restore and checked against the plan's size. */
function sourceFor(run: RestoreRun, ai: number): Promise<RangeSource> {
  let p = run.sources.get(ai);
  if (!p) {
    const link = run.plan.chain[ai];
    if (!link) throw new RestoreError(`restore plan refers to archive #${ai}, chain has ${run.plan.chain.length}`);
    p = run.opts.openSource(link.locator).then((s) => {
      if (s.size !== link.size) {
        throw new RestoreError(`${describeLocator(link.locator)} is ${s.size} bytes, the plan expects ${link.size} (archive replaced?)`);
      }
      return s;
    });
    p.catch(() => undefined);
    run.sources.set(ai, p);
  }
  return p;
}

/** Zero runs (and clusters no archive covers) on targets that are not fresh; fresh files keep them as holes. */
async function writeZeroRuns(run: RestoreRun, selected: number[]): Promise<void> {
  for (const pi of selected) {
    const t = run.targetOf.get(pi)!;
    const d = run.plan.devices[pi]!;
    for (const [first, count] of [...d.zeroRuns, ...d.missingRuns]) {
      const start = first * CLUSTER_SIZE;
      const len = clusterBytes(run.plan, pi, first, count);
      if (!t.fresh) {
        for (let off = 0; off < len; off += ZERO_CHUNK.length) {
          const n = Math.min(ZERO_CHUNK.length, len - off);
          await writeAll(t.fh, ZERO_CHUNK.subarray(0, n), start + off);
          run.writtenBytes += n;
        }
      }
      run.progress.bytesDone += len;
    }
  }
}

/** One ranged read, then its extents decoded (EXTENTS_IN_FLIGHT at once) and written. */
async function restoreRange(run: RestoreRun, range: PlanRange): Promise<void> {
  const src = await sourceFor(run, range.archive);
  const rangeBuf = run.rangeBuffers.take();
  const bytes = await src.read(range.offset, range.length, rangeBuf);
  run.progress.fetchedBytes += bytes.length;
  const wanted = range.extents.filter((e) => e.runs.some(([pi]) => run.targetOf.has(pi)));
  await pool(wanted, EXTENTS_IN_FLIGHT, (ex) => restoreExtent(run, range, bytes.subarray(ex.offset - range.offset, ex.offset - range.offset + ex.length), ex));
  // Every extent of the range is decoded (the workers got copies) and
  // written: its buffer serves the next range.
  run.rangeBuffers.give(rangeBuf);
  run.progress.rangesDone++;
  report(run);
}

/** Decodes one extent (in a decode slot) and writes its winning clusters; damage is recorded (--verify) or thrown. */
async function restoreExtent(run: RestoreRun, range: PlanRange, slice: Buffer, ex: PlanExtent): Promise<void> {
  const link = run.plan.chain[range.archive]!;
  await run.slots.acquire();
  let leased: LeasedClusters;
  try {
    leased = await decodeExtentLeased(slice, {
      ...(run.opts.key ? { key: run.opts.key } : {}),
      keyFingerprint: link.keyFingerprint ?? null,
      compressor: run.opts.compressor,
      archiveUuid: link.uuid,
      headerTag: run.headerTags[range.archive] ?? null,
      // The plaintext digest is always checked; --verify checks the stored one too.
      checkStoredDigest: run.verify,
      what: `extent at ${ex.offset} of archive ${link.uuid}`,
    });
  } catch (err) {
    run.slots.release();
    const names = clusterNames(run.plan, ex);
    if (err instanceof FormatError || (err instanceof CowstreamError && err.code === 'CODEC')) {
      if (run.verify) {
        run.damaged.push({ archive: link.uuid, offset: ex.offset, length: ex.length, error: err.message, clusters: names });
        return;
      }
      throw new ChecksumError(`${err.message}; affected clusters: ${names.join(', ')}`, { cause: err });
    }
    throw err;
  }
  try {
    await writeExtentRuns(run, link.uuid, ex, leased);
  } finally {
    // Written (or failed): the plaintext buffer goes back to the pool.
    leased.release();
    run.slots.release();
  }
}

/** The extent's winning runs on selected devices, one positional writev per ≤ WRITEV_MAX consecutive clusters. */
async function writeExtentRuns(run: RestoreRun, archiveUuid: string, ex: PlanExtent, leased: LeasedClusters): Promise<void> {
  // Index decoded clusters by archive device id, then cluster (numeric keys:
  // no string is built per cluster on this hot path).
  const byDevice = new Map<number, Map<number, Buffer>>();
  for (const c of leased.clusters) {
    let m = byDevice.get(c.deviceId);
    if (!m) byDevice.set(c.deviceId, (m = new Map()));
    m.set(c.cluster, c.data);
  }
  for (const [pi, devId, first, count] of ex.runs) {
    const t = run.targetOf.get(pi);
    if (!t) continue;
    const byCluster = byDevice.get(devId);
    // One positional writev per run of consecutive clusters (≤ IOV_MAX
    // buffers) instead of a syscall per 64 KiB cluster.
    for (let c0 = first; c0 < first + count; c0 += WRITEV_MAX) {
      const end = Math.min(first + count, c0 + WRITEV_MAX);
      const bufs: Buffer[] = [];
      for (let c = c0; c < end; c++) {
        const data = byCluster?.get(c);
        const expectLen = clusterBytes(run.plan, pi, c, 1);
        if (!data) throw new FormatError(`extent at ${ex.offset} of archive ${archiveUuid} lacks cluster ${c} of device ${t.name} that its index promises`);
        if (data.length < expectLen) throw new FormatError(`cluster ${c} of device ${t.name} in archive ${archiveUuid} is ${data.length} bytes, expected ${expectLen}`);
        bufs.push(data.length === expectLen ? data : data.subarray(0, expectLen));
      }
      const len = bufs.reduce((n, b) => n + b.length, 0);
      const { bytesWritten } = await t.fh.writev(bufs, c0 * CLUSTER_SIZE);
      if (bytesWritten !== len) throw new RestoreError(`short write to ${t.path}: ${bytesWritten} of ${len} bytes at cluster ${c0}`);
      run.writtenBytes += len;
      if (run.verify) await readBack(run, t, c0, bufs, len);
    }
    run.progress.bytesDone += clusterBytes(run.plan, pi, first, count);
  }
}

/** Reads back what was just written (bounded: one run), catching short or misdirected writes on the target. */
async function readBack(run: RestoreRun, t: RestoreOutput, c0: number, bufs: Buffer[], len: number): Promise<void> {
  const back = Buffer.alloc(len);
  await t.fh.read(back, 0, len, c0 * CLUSTER_SIZE);
  let pos = 0;
  bufs.forEach((b, k) => {
    if (!back.subarray(pos, pos + b.length).equals(b)) run.mismatched.push(`${t.name}:${c0 + k}`);
    pos += b.length;
  });
}

/** Damage found by --verify fails the restore (naming every damaged extent); otherwise the targets are synced, then read-back differences fail it. */
async function finishTargets(run: RestoreRun, targets: RestoreOutput[]): Promise<void> {
  const damaged = run.damaged;
  if (damaged.length > 0) {
    const list = damaged.map((d) => `archive ${d.archive} extent@${d.offset}: clusters ${d.clusters.join(', ')} (${d.error})`);
    const err = new ChecksumError(`restore verification failed: ${damaged.length} damaged extent(s): ${list.join('; ')}`);
    (err as ChecksumError & { damaged?: DamagedExtent[] }).damaged = damaged;
    throw err;
  }
  for (const t of targets) await t.fh.sync();
  if (run.mismatched.length > 0) {
    throw new ChecksumError(`read-back after restore differs in ${run.mismatched.length} cluster(s): ${run.mismatched.slice(0, 20).join(', ')}`);
  }
}

/** Closes targets and sources; after a failure, removes the targets this restore created. */
async function closeAll(run: RestoreRun, targets: RestoreOutput[], ok: boolean): Promise<void> {
  for (const t of targets) await t.fh.close().catch(() => undefined);
  for (const p of run.sources.values()) await p.then((s) => s.close()).catch(() => undefined);
  if (!ok) for (const t of targets) if (t.created) await (t.remove ? t.remove() : unlink(t.path)).catch(() => undefined);
  for (const t of targets) await t.release?.().catch(() => undefined);
}
