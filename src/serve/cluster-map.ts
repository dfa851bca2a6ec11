/**
 * Where each cluster of a served device comes from, built from a
 * RestorePlan: sorted, disjoint segments (a winning data run of one extent,
 * a zero run, or clusters no archive covers), found by binary search.
 * Memory is O(runs of the plan), never O(disk size): a 1 TiB sparse disk is
 * one segment.
 */
import { FormatError } from '../errors.js';
import { CLUSTER_SIZE } from '../format/constants.js';
import { MAX_EXTENT_SIZE } from '../format/layout.js';
import type { ExtentRun, RestorePlan } from '../restore/plan.js';

/** One extent of the chain that supplies clusters to the served devices. */
export interface ServedExtent {
  /** "<chain index>@<offset>": the single-flight and cache key. */
  key: string;
  /** Index into plan.chain. */
  archive: number;
  offset: number;
  length: number;
  /** The clusters it wins: [planDeviceIndex, archiveDeviceId, firstCluster, count]. */
  runs: ExtentRun[];
}

export interface Segment {
  first: number;
  count: number;
  /** The extent holding these clusters, with the archive's own device id; null: reads as zeroes. */
  extent: ServedExtent | null;
  deviceId: number;
}

export interface DeviceMap {
  name: string;
  size: number;
  clusters: number;
  /** Sorted by `first`, disjoint, covering [0, clusters). */
  segments: Segment[];
}

/** One map per plan device. */
export function buildDeviceMaps(plan: RestorePlan): DeviceMap[] {
  const segs: Segment[][] = plan.devices.map(() => []);
  for (const range of plan.ranges) {
    for (const ex of range.extents) {
      // The index is not trusted to bound a fetch: no extent is larger than this.
      if (ex.length > MAX_EXTENT_SIZE) throw new FormatError(`archive ${plan.chain[range.archive]?.uuid}: extent at ${ex.offset} claims ${ex.length} bytes, more than an extent can hold (${MAX_EXTENT_SIZE})`);
      const served: ServedExtent = { key: `${range.archive}@${ex.offset}`, archive: range.archive, offset: ex.offset, length: ex.length, runs: ex.runs };
      for (const [pi, deviceId, first, count] of ex.runs) segs[pi]?.push({ first, count, extent: served, deviceId });
    }
  }
  return plan.devices.map((d, pi) => {
    const list = segs[pi]!;
    for (const [first, count] of [...d.zeroRuns, ...d.missingRuns]) list.push({ first, count, extent: null, deviceId: -1 });
    list.sort((a, b) => a.first - b.first);
    return { name: d.name, size: d.size, clusters: d.clusters, segments: mergeZeroSegments(list) };
  });
}

/** Adjacent zero/missing segments become one (fewer extents to report, faster search). */
function mergeZeroSegments(list: Segment[]): Segment[] {
  const out: Segment[] = [];
  for (const s of list) {
    const last = out[out.length - 1];
    if (last && last.extent === null && s.extent === null && last.first + last.count === s.first) last.count += s.count;
    else out.push({ ...s });
  }
  return out;
}

/** Index of the segment holding `cluster`, or -1 (binary search). */
export function segmentAt(map: DeviceMap, cluster: number): number {
  const s = map.segments;
  let lo = 0;
  let hi = s.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >>> 1;
    const seg = s[mid]!;
    if (cluster < seg.first) hi = mid - 1;
    else if (cluster >= seg.first + seg.count) lo = mid + 1;
    else return mid;
  }
  return -1;
}

/** Bytes of cluster `c` inside the device (the last one may be short). */
export function clusterLength(map: DeviceMap, c: number): number {
  return Math.max(0, Math.min(map.size, (c + 1) * CLUSTER_SIZE) - c * CLUSTER_SIZE);
}

/**
 * Visits the segments overlapping clusters [c0, c1], clipped to it, in
 * order; clusters no segment covers (an inconsistent plan) are visited as zeroes.
 */
export function forEachSegment(map: DeviceMap, c0: number, c1: number, fn: (first: number, count: number, seg: Segment | null) => void): void {
  let c = c0;
  let i = segmentAt(map, c0);
  if (i < 0) i = map.segments.findIndex((s) => s.first > c0);
  while (c <= c1) {
    const seg = i >= 0 && i < map.segments.length ? map.segments[i]! : null;
    if (!seg || seg.first > c) {
      const end = Math.min(c1 + 1, seg ? seg.first : c1 + 1);
      fn(c, end - c, null);
      c = end;
      continue;
    }
    const end = Math.min(c1 + 1, seg.first + seg.count);
    fn(c, end - c, seg);
    c = end;
    i++;
  }
}
