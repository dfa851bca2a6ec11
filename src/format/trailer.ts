/**
 * Trailer index encode/decode/validate (docs/FORMAT.md "Trailer").
 */
import { FormatError } from '../errors.js';
import { ByteReader, ByteWriter } from './bytes.js';
import { checkSha256, sha256 } from './checksum.js';
import { MAX_CLUSTERS_PER_EXTENT } from './constants.js';
import { clusterCountOf, type ArchiveHeader } from './header.js';
import {
  DATA_RUN_SIZE,
  EXTENT_REF_SIZE,
  MAX_EXTENT_SIZE,
  MIN_EXTENT_SIZE,
  FORMAT_V2,
  type FormatVersion,
  SHA256_SIZE,
  TAG_SIZE,
  TRAILER_FIXED_SIZE,
  TRAILER_MAGIC,
  TRAILER_MAGIC_V2,
  ZERO_RUN_SIZE,
} from './layout.js';

export interface ExtentRef {
  /** Sequence number = position in the extent table. */
  seq: number;
  offset: number;
  length: number;
  clusterCount: number;
}

export interface ZeroRun {
  deviceId: number;
  firstCluster: number;
  count: number;
}

export interface DataRunRecord extends ZeroRun {
  extentIndex: number;
}

export interface DataRun extends DataRunRecord {
  extentOffset: number;
  extentLength: number;
  extentSeq: number;
}

export interface TrailerIndex {
  extents: ExtentRef[];
  dataRuns: DataRun[];
  zeroRuns: ZeroRun[];
  /** v2: the stored index tag (zeros when not encrypted); v1: null. */
  tag: Buffer | null;
}

export interface TrailerInput {
  extents: Omit<ExtentRef, 'seq'>[];
  dataRuns: DataRunRecord[];
  zeroRuns: ZeroRun[];
}

/** Trailer bytes for E extents, R data runs, Z zero runs (v2 adds the index tag). */
export function trailerSize(e: number, r: number, z: number, version: FormatVersion = FORMAT_V2): number {
  return TRAILER_FIXED_SIZE + EXTENT_REF_SIZE * e + DATA_RUN_SIZE * r + ZERO_RUN_SIZE * z + (version === FORMAT_V2 ? TAG_SIZE : 0) + SHA256_SIZE;
}

/**
 * Encodes a v2 trailer. `tagOf` computes the index tag over the bytes before
 * it (docs/FORMAT.md "Index tag"); without it the tag is zeros (not encrypted).
 */
export function encodeTrailer(t: TrailerInput, tagOf?: (body: Buffer) => Buffer): Buffer {
  const size = trailerSize(t.extents.length, t.dataRuns.length, t.zeroRuns.length);
  const w = new ByteWriter(size);
  w.bytes(TRAILER_MAGIC_V2).u32(t.extents.length).u32(t.dataRuns.length).u32(t.zeroRuns.length);
  for (const e of t.extents) w.u64(e.offset).u32(e.length).u16(e.clusterCount).u16(0);
  for (const d of t.dataRuns) w.u8(d.deviceId).skip(3).u32(d.count).u64(d.firstCluster).u32(d.extentIndex);
  for (const z of t.zeroRuns) w.u8(z.deviceId).skip(3).u32(z.count).u64(z.firstCluster);
  const tagAt = size - TAG_SIZE - SHA256_SIZE;
  w.bytes(tagOf === undefined ? Buffer.alloc(TAG_SIZE) : tagOf(w.buf.subarray(0, tagAt)));
  w.bytes(sha256(w.buf.subarray(0, size - SHA256_SIZE)));
  return w.done();
}

/** Entry counts from the trailer's fixed 16 bytes (for limits checked before reading the rest). */
export function peekTrailerCounts(prefix: Buffer, version: FormatVersion): { extents: number; dataRuns: number; zeroRuns: number } {
  const r = new ByteReader(prefix.subarray(0, TRAILER_FIXED_SIZE), 'trailer');
  if (!r.bytes(TRAILER_MAGIC.length).equals(version === FORMAT_V2 ? TRAILER_MAGIC_V2 : TRAILER_MAGIC)) throw new FormatError('trailer: bad magic');
  return { extents: r.u32(), dataRuns: r.u32(), zeroRuns: r.u32() };
}

/**
 * Decodes the trailer. `expectedSha256` is the footer's trailer checksum;
 * counts are checked against the exact length before anything is allocated.
 */
export function decodeTrailer(buf: Buffer, expectedSha256: Uint8Array, version: FormatVersion): TrailerIndex {
  if (buf.length < trailerSize(0, 0, 0, version)) throw new FormatError(`trailer: ${buf.length} bytes is too short`);
  // The footer holds SHA-256 of the whole trailer (including its own checksum).
  checkSha256(buf, expectedSha256, 'trailer');
  checkSha256(buf.subarray(0, buf.length - SHA256_SIZE), buf.subarray(buf.length - SHA256_SIZE), 'trailer (own checksum)');
  const tagSize = version === FORMAT_V2 ? TAG_SIZE : 0;
  const r = new ByteReader(buf.subarray(0, buf.length - SHA256_SIZE - tagSize), 'trailer');
  if (!r.bytes(TRAILER_MAGIC.length).equals(version === FORMAT_V2 ? TRAILER_MAGIC_V2 : TRAILER_MAGIC)) throw new FormatError('trailer: bad magic');
  const e = r.u32();
  const nr = r.u32();
  const nz = r.u32();
  if (trailerSize(e, nr, nz, version) !== buf.length) {
    throw new FormatError(`trailer: counts (${e} extents, ${nr} data runs, ${nz} zero runs) do not match its ${buf.length} bytes`);
  }
  const extents: ExtentRef[] = new Array(e);
  for (let i = 0; i < e; i++) {
    const offset = r.u64('extent offset');
    const length = r.u32();
    const clusterCount = r.u16();
    r.zeros(2, 'extent entry reserved');
    extents[i] = { seq: i, offset, length, clusterCount };
  }
  const dataRuns: DataRun[] = new Array(nr);
  for (let i = 0; i < nr; i++) {
    const deviceId = r.u8();
    r.zeros(3, 'data run reserved');
    const count = r.u32();
    const firstCluster = r.u64('first cluster');
    const extentIndex = r.u32();
    const ref = extents[extentIndex];
    if (ref === undefined) throw new FormatError(`trailer: data run points at extent ${extentIndex} of ${e}`);
    dataRuns[i] = { deviceId, firstCluster, count, extentIndex, extentOffset: ref.offset, extentLength: ref.length, extentSeq: ref.seq };
  }
  const zeroRuns: ZeroRun[] = new Array(nz);
  for (let i = 0; i < nz; i++) {
    const deviceId = r.u8();
    r.zeros(3, 'zero run reserved');
    const count = r.u32();
    const firstCluster = r.u64('first cluster');
    zeroRuns[i] = { deviceId, firstCluster, count };
  }
  r.expectEnd();
  const tag = version === FORMAT_V2 ? Buffer.from(buf.subarray(buf.length - SHA256_SIZE - TAG_SIZE, buf.length - SHA256_SIZE)) : null;
  return { extents, dataRuns, zeroRuns, tag };
}

function checkRunList(runs: ZeroRun[], kind: string, sizes: Map<number, number>): void {
  let prev: ZeroRun | undefined;
  for (const run of runs) {
    const devClusters = sizes.get(run.deviceId);
    if (devClusters === undefined) throw new FormatError(`trailer: ${kind} run for unknown device ${run.deviceId}`);
    if (run.count < 1) throw new FormatError(`trailer: empty ${kind} run`);
    if (run.firstCluster + run.count > devClusters) {
      throw new FormatError(`trailer: ${kind} run ${run.firstCluster}+${run.count} beyond device ${run.deviceId} (${devClusters} clusters)`);
    }
    if (prev !== undefined && (run.deviceId < prev.deviceId || (run.deviceId === prev.deviceId && run.firstCluster < prev.firstCluster + prev.count))) {
      throw new FormatError(`trailer: ${kind} runs unsorted or overlapping at device ${run.deviceId} cluster ${run.firstCluster}`);
    }
    prev = run;
  }
}

/**
 * Semantic validation of a decoded index against the header and the file
 * layout (docs/FORMAT.md "Trailer"): contiguous extents, runs inside their
 * devices, no overlaps, per-extent cluster counts, full-archive coverage.
 */
export function validateIndex(index: TrailerIndex, header: ArchiveHeader, trailerOffset: number): void {
  let pos = header.headerLength;
  for (const x of index.extents) {
    if (x.offset !== pos) throw new FormatError(`trailer: extent ${x.seq} at offset ${x.offset}, expected ${pos} (extents must be contiguous)`);
    if (x.length < MIN_EXTENT_SIZE || x.length > MAX_EXTENT_SIZE) throw new FormatError(`trailer: extent ${x.seq} length ${x.length} out of range`);
    if (x.clusterCount < 1 || x.clusterCount > MAX_CLUSTERS_PER_EXTENT) throw new FormatError(`trailer: extent ${x.seq} cluster count ${x.clusterCount}`);
    pos += x.length;
  }
  if (pos !== trailerOffset) throw new FormatError(`trailer: extents end at ${pos}, trailer starts at ${trailerOffset}`);

  const sizes = new Map<number, number>(header.devices.map((d) => [d.id, clusterCountOf(d.size)]));
  checkRunList(index.dataRuns, 'data', sizes);
  checkRunList(index.zeroRuns, 'zero', sizes);

  const perExtent = new Array<number>(index.extents.length).fill(0);
  for (const d of index.dataRuns) perExtent[d.extentIndex] += d.count;
  for (const x of index.extents) {
    if (perExtent[x.seq] !== x.clusterCount) {
      throw new FormatError(`trailer: extent ${x.seq} holds ${x.clusterCount} clusters but its data runs cover ${perExtent[x.seq]}`);
    }
  }

  // Data and zero runs of one device must not overlap: merge the two sorted lists.
  const present = new Map<number, number>();
  let i = 0;
  let j = 0;
  let last: ZeroRun | undefined;
  while (i < index.dataRuns.length || j < index.zeroRuns.length) {
    const d = index.dataRuns[i];
    const z = index.zeroRuns[j];
    let next: ZeroRun;
    if (z === undefined || (d !== undefined && (d.deviceId < z.deviceId || (d.deviceId === z.deviceId && d.firstCluster <= z.firstCluster)))) {
      next = d as ZeroRun;
      i++;
    } else {
      next = z;
      j++;
    }
    if (last !== undefined && last.deviceId === next.deviceId && next.firstCluster < last.firstCluster + last.count) {
      throw new FormatError(`trailer: data and zero runs overlap at device ${next.deviceId} cluster ${next.firstCluster}`);
    }
    present.set(next.deviceId, (present.get(next.deviceId) ?? 0) + next.count);
    last = next;
  }
  if (header.parentUuid === null) {
    for (const dev of header.devices) {
      const want = clusterCountOf(dev.size);
      const have = present.get(dev.id) ?? 0;
      if (have !== want) throw new FormatError(`full archive: device ${dev.name} has ${have} of ${want} clusters`);
    }
  }
}
