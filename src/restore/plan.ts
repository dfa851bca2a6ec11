/**
 * Restore planner (pure): given an incremental chain, newest archive first,
 * decide for every cluster of every restored device which archive supplies
 * it — the newest archive that has the cluster (as data OR as a zero run)
 * wins; a cluster absent from an archive comes from its parent. Then group
 * the winning extents of each archive into coalesced byte ranges (~8–16 MiB)
 * so the restore can fetch them with few parallel ranged GETs.
 *
 * Works on runs, never on per-cluster arrays: memory is O(runs), not O(disk).
 * The result is a JSON-serialisable RestorePlan (the catalogue stores it as
 * `restore-plans/<id>.json`; the agent's poller executes it).
 */
import { CLUSTER_SIZE } from '../format/constants.js';
import { RestoreError } from '../errors.js';

export type ArchiveLocator =
  | { kind: 's3'; bucket: string; key: string }
  | { kind: 'file'; path: string };

export interface PlannerDevice {
  id: number;
  name: string;
  size: number;
}

export interface PlannerDataRun {
  deviceId: number;
  firstCluster: number;
  count: number;
  extentOffset: number;
  extentLength: number;
}

export interface PlannerZeroRun {
  deviceId: number;
  firstCluster: number;
  count: number;
}

/** What the planner needs of one archive: header identity + index runs. */
export interface PlannerArchive {
  uuid: string;
  parentUuid: string | null;
  hostId: string;
  createdAt?: number;
  locator: ArchiveLocator;
  /** Object/file size in bytes, for sanity checks of extent offsets. */
  size: number;
  /** Fingerprint of the encryption key (null/absent = not encrypted). */
  keyFingerprint?: string | null;
  devices: PlannerDevice[];
  dataRuns: PlannerDataRun[];
  zeroRuns: PlannerZeroRun[];
}

/** [firstCluster, count] */
export type ClusterRun = [number, number];

export interface PlanDevice {
  name: string;
  size: number;
  clusters: number;
  dataClusters: number;
  zeroClusters: number;
  /** Clusters no archive of the chain covers (only possible if the root is not a full archive). */
  missingClusters: number;
  /** Winning zero runs: holes in a fresh file, written as zeroes over an existing target. */
  zeroRuns: ClusterRun[];
  /** Clusters no archive covers, as runs (left untouched / zero). */
  missingRuns: ClusterRun[];
}

/** Winning clusters inside one extent: [planDeviceIndex, archiveDeviceId, firstCluster, count]. */
export type ExtentRun = [number, number, number, number];

export interface PlanExtent {
  /** Absolute offset of the extent in its archive. */
  offset: number;
  length: number;
  runs: ExtentRun[];
}

/** One ranged GET: a byte range of one archive covering ≥ 1 whole extents. */
export interface PlanRange {
  /** Index into `chain`. */
  archive: number;
  offset: number;
  length: number;
  extents: PlanExtent[];
}

export interface RestorePlan {
  version: 1;
  /** The archive the restore is "of" (chain[0]). */
  archiveUuid: string;
  hostId: string;
  /** Newest first; chain[last] is the full archive. */
  chain: { uuid: string; parentUuid: string | null; locator: ArchiveLocator; size: number; keyFingerprint?: string | null }[];
  devices: PlanDevice[];
  ranges: PlanRange[];
  totals: { deviceBytes: number; dataClusters: number; zeroClusters: number; missingClusters: number; fetchBytes: number };
}

export interface PlanOptions {
  /** Restrict to these device names (default: all devices of the newest archive). */
  devices?: string[];
  /** Upper bound of one coalesced range (default 16 MiB). */
  maxRangeBytes?: number;
  /** Largest hole between two extents still read through (default 256 KiB). */
  maxGapBytes?: number;
}

export const DEFAULT_MAX_RANGE_BYTES = 16 * 1024 * 1024;
export const DEFAULT_MAX_GAP_BYTES = 256 * 1024;

/** Sorted, disjoint, merged [start, end) intervals. */
type Interval = [number, number];

/**
 * a \ b for sorted disjoint interval lists (two-pointer sweep). `from`: an
 * index of b before which every interval ends at or before a's start (a
 * caller sweeping sorted pieces of a resumes where the last one stopped).
 */
function subtract(a: Interval[], b: Interval[], from = 0): Interval[] {
  const out: Interval[] = [];
  let j = from;
  for (const [s0, e] of a) {
    let s = s0;
    while (j < b.length && b[j]![1] <= s) j++;
    let k = j;
    while (s < e) {
      if (k >= b.length || b[k]![0] >= e) {
        out.push([s, e]);
        break;
      }
      const [bs, be] = b[k]!;
      if (bs > s) out.push([s, bs]);
      s = Math.max(s, be);
      k++;
    }
  }
  return out;
}

/** Union of two sorted disjoint interval lists. */
function union(a: Interval[], b: Interval[]): Interval[] {
  const all = [...a, ...b].sort((x, y) => x[0] - y[0]);
  const out: Interval[] = [];
  for (const iv of all) {
    const last = out[out.length - 1];
    if (last && iv[0] <= last[1]) last[1] = Math.max(last[1], iv[1]);
    else out.push([iv[0], iv[1]]);
  }
  return out;
}

function normalize(list: Interval[]): Interval[] {
  return union(list, []);
}

function checkRun(arch: PlannerArchive, first: number, count: number, clusters: number, what: string): void {
  if (!Number.isSafeInteger(first) || !Number.isSafeInteger(count) || first < 0 || count < 1 || first + count > clusters) {
    throw new RestoreError(`archive ${arch.uuid}: ${what} [${first}, +${count}) lies outside its device (${clusters} clusters)`);
  }
}

/**
 * Builds the plan. `chain` must be newest first and linked by parentUuid
 * (validated here). Throws RestoreError on inconsistent input.
 *
 * Steps: check the chain's links → pick the devices (the newest archive's) →
 * let each archive, newest first, claim the clusters no newer one claimed →
 * name what no archive covers → coalesce the winning extents into ranges.
 */
export function planRestore(chain: PlannerArchive[], opts: PlanOptions = {}): RestorePlan {
  checkChainLinks(chain);
  const newest = chain[0]!;
  const devices = selectDevices(newest, opts.devices).map(emptyPlanDevice);
  const claims: Claims = { devices, claimed: devices.map(() => []), extents: chain.map(() => new Map()) };
  chain.forEach((arch, ai) => claimArchive(claims, arch, ai));
  devices.forEach((d, pi) => finishDevice(d, claims.claimed[pi]!));
  const ranges = coalesceRanges(claims.extents, opts.maxGapBytes ?? DEFAULT_MAX_GAP_BYTES, opts.maxRangeBytes ?? DEFAULT_MAX_RANGE_BYTES);
  return {
    version: 1,
    archiveUuid: newest.uuid,
    hostId: newest.hostId,
    chain: chain.map((a) => ({ uuid: a.uuid, parentUuid: a.parentUuid, locator: a.locator, size: a.size, keyFingerprint: a.keyFingerprint ?? null })),
    devices,
    ranges,
    totals: planTotals(devices, ranges),
  };
}

/** What the archives of a chain have claimed so far, newest first. */
interface Claims {
  devices: PlanDevice[];
  /** Per plan device: clusters an archive already supplies (sorted, disjoint). */
  claimed: Interval[][];
  /** Per archive: its winning extents by offset. */
  extents: Map<number, PlanExtent>[];
}

/** A data or zero run of one archive device, as claimArchive sorts them. */
interface TaggedRun {
  first: number;
  count: number;
  data?: PlannerDataRun;
}

function checkChainLinks(chain: PlannerArchive[]): void {
  if (chain.length === 0) throw new RestoreError('empty archive chain');
  for (let i = 0; i + 1 < chain.length; i++) {
    if (chain[i]!.parentUuid !== chain[i + 1]!.uuid) {
      throw new RestoreError(`archive chain broken: ${chain[i]!.uuid} has parent ${chain[i]!.parentUuid}, not ${chain[i + 1]!.uuid}`);
    }
  }
}

/** The newest archive's devices, or those named (each must exist). */
function selectDevices(newest: PlannerArchive, names: string[] | undefined): PlannerDevice[] {
  if (!names || names.length === 0) return newest.devices;
  const byName = new Map(newest.devices.map((d) => [d.name, d]));
  return names.map((n) => {
    const d = byName.get(n);
    if (!d) throw new RestoreError(`archive ${newest.uuid} has no device "${n}" (devices: ${newest.devices.map((x) => x.name).join(', ')})`);
    return d;
  });
}

function emptyPlanDevice(d: PlannerDevice): PlanDevice {
  const clusters = Math.ceil(d.size / CLUSTER_SIZE);
  return { name: d.name, size: d.size, clusters, dataClusters: 0, zeroClusters: 0, missingClusters: 0, zeroRuns: [], missingRuns: [] };
}

/** One archive's turn: its runs (validated) claim the clusters of planned devices that no newer archive claimed. */
function claimArchive(claims: Claims, arch: PlannerArchive, ai: number): void {
  const planIndexByName = new Map(claims.devices.map((d, i) => [d.name, i]));
  // archive-local device id → plan device index
  const idMap = new Map<number, number>();
  for (const d of arch.devices) {
    const pi = planIndexByName.get(d.name);
    if (pi !== undefined) idMap.set(d.id, pi);
  }
  for (const [deviceId, runs] of archiveRuns(arch, idMap)) {
    const pi = idMap.get(deviceId)!;
    claimRuns(claims, ai, pi, deviceId, runs);
  }
}

/** The archive's data and zero runs of the planned devices, by archive device id; every run is checked against its device and the archive. */
function archiveRuns(arch: PlannerArchive, idMap: Map<number, number>): Map<number, TaggedRun[]> {
  const clustersOf = new Map(arch.devices.map((d) => [d.id, Math.ceil(d.size / CLUSTER_SIZE)]));
  const runsByDevice = new Map<number, TaggedRun[]>();
  const push = (deviceId: number, t: TaggedRun): void => {
    if (!idMap.has(deviceId)) return;
    let l = runsByDevice.get(deviceId);
    if (!l) runsByDevice.set(deviceId, (l = []));
    l.push(t);
  };
  for (const r of arch.dataRuns) {
    const c = clustersOf.get(r.deviceId);
    if (c === undefined) throw new RestoreError(`archive ${arch.uuid}: data run for unknown device id ${r.deviceId}`);
    checkRun(arch, r.firstCluster, r.count, c, 'data run');
    if (!Number.isSafeInteger(r.extentOffset) || r.extentOffset < 0 || r.extentLength < 1 || r.extentOffset + r.extentLength > arch.size) {
      throw new RestoreError(`archive ${arch.uuid}: extent at ${r.extentOffset}+${r.extentLength} lies outside the archive (${arch.size} bytes)`);
    }
    push(r.deviceId, { first: r.firstCluster, count: r.count, data: r });
  }
  for (const r of arch.zeroRuns) {
    const c = clustersOf.get(r.deviceId);
    if (c === undefined) throw new RestoreError(`archive ${arch.uuid}: zero run for unknown device id ${r.deviceId}`);
    checkRun(arch, r.firstCluster, r.count, c, 'zero run');
    push(r.deviceId, { first: r.firstCluster, count: r.count });
  }
  return runsByDevice;
}

/** Claims the unclaimed parts of `runs` for plan device `pi`: data parts join their extent, zero parts the device's zero runs. */
function claimRuns(claims: Claims, ai: number, pi: number, deviceId: number, runs: TaggedRun[]): void {
  const device = claims.devices[pi]!;
  const limit = device.clusters; // newest size wins; clusters beyond it are ignored
  runs.sort((a, b) => a.first - b.first);
  const taken = claims.claimed[pi]!;
  const added: Interval[] = [];
  // Runs go in order of their first cluster, so the claimed intervals that end
  // before a run's start only grow: skipping them once keeps this linear, not
  // runs × claimed intervals.
  let from = 0;
  for (const run of runs) {
    const end = Math.min(run.first + run.count, limit);
    if (end <= run.first) continue;
    while (from < taken.length && taken[from]![1] <= run.first) from++;
    for (const [s, e] of subtract([[run.first, end]], taken, from)) {
      added.push([s, e]);
      if (run.data) {
        const ex = claims.extents[ai]!;
        let pe = ex.get(run.data.extentOffset);
        if (!pe) ex.set(run.data.extentOffset, (pe = { offset: run.data.extentOffset, length: run.data.extentLength, runs: [] }));
        pe.runs.push([pi, deviceId, s, e - s]);
        device.dataClusters += e - s;
      } else {
        device.zeroRuns.push([s, e - s]);
        device.zeroClusters += e - s;
      }
    }
  }
  claims.claimed[pi] = union(taken, normalize(added));
}

/** Clusters no archive claimed become the device's missing runs; zero runs are merged. */
function finishDevice(d: PlanDevice, claimed: Interval[]): void {
  const missing = subtract([[0, d.clusters]], claimed);
  d.missingRuns = missing.map(([s, e]) => [s, e - s]);
  d.missingClusters = missing.reduce((n, [s, e]) => n + (e - s), 0);
  d.zeroRuns = mergeRuns(d.zeroRuns);
}

/** Groups each archive's winning extents, in offset order, into ranges of ≤ maxRange bytes with holes of ≤ maxGap. */
function coalesceRanges(perArchive: Map<number, PlanExtent>[], maxGap: number, maxRange: number): PlanRange[] {
  const ranges: PlanRange[] = [];
  perArchive.forEach((extents, ai) => {
    const sorted = [...extents.values()].sort((a, b) => a.offset - b.offset);
    let cur: PlanRange | undefined;
    for (const ex of sorted) {
      const end = cur ? cur.offset + cur.length : 0;
      if (cur && ex.offset >= end && ex.offset - end <= maxGap && ex.offset + ex.length - cur.offset <= maxRange) {
        cur.length = ex.offset + ex.length - cur.offset;
        cur.extents.push(ex);
      } else {
        cur = { archive: ai, offset: ex.offset, length: ex.length, extents: [ex] };
        ranges.push(cur);
      }
    }
  });
  return ranges;
}

function planTotals(devices: PlanDevice[], ranges: PlanRange[]): RestorePlan['totals'] {
  return {
    deviceBytes: devices.reduce((n, d) => n + d.size, 0),
    dataClusters: devices.reduce((n, d) => n + d.dataClusters, 0),
    zeroClusters: devices.reduce((n, d) => n + d.zeroClusters, 0),
    missingClusters: devices.reduce((n, d) => n + d.missingClusters, 0),
    fetchBytes: ranges.reduce((n, r) => n + r.length, 0),
  };
}

function mergeRuns(runs: ClusterRun[]): ClusterRun[] {
  const iv = normalize(runs.map(([s, c]) => [s, s + c] as Interval));
  return iv.map(([s, e]) => [s, e - s]);
}
