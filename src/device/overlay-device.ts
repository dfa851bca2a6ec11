/**
 * A writable view over a read-only base device: reads merge the base with
 * what was written; writes, zeroes and trims go to a local sparse overlay
 * file, never to the base. Used to boot a VM from a backup that is still in
 * the bucket (docs/overlay.md).
 *
 * One file holds everything (0600, created atomically, see `createOverlayFile`):
 *
 *   [0, 4096)                header: magic, version, cluster size, base size,
 *                            layout, SHA-256 of those fields and of the base
 *                            identity (e.g. `<archive uuid>/<disk>`), then that
 *                            identity (u16 length + UTF-8 at offset 80)
 *   [4096, dataOffset)       cluster states, 2 bits per cluster:
 *                            0 BASE (read the base), 1 DATA (read the overlay),
 *                            2 ZERO (reads as zeroes, nothing stored)
 *   [dataOffset, +baseSize)  cluster data at the same offsets as in the base
 *                            (sparse: only written clusters take space)
 *
 * Crash safety. A state is set in memory only after the cluster's data is in
 * the file (page cache). flush() then: (1) copies the changed state pages,
 * (2) fdatasyncs the file, so every cluster those pages call DATA is durable,
 * (3) writes the copies in place, (4) fdatasyncs again. A crash at any point
 * leaves each cluster in a state whose data is durable: its state of the last
 * completed flush or a later one (states set after the copy in (1) wait for
 * the next flush, because their data may not be covered by (2)). Writes not
 * yet flushed may be lost or torn, as NBD allows; flushed ones never are.
 * A failed fdatasync fails every later flush too (flushOnce says why).
 *
 * Concurrency. Every write, zero and trim holds the locks of the clusters it
 * touches (ascending order, FIFO; src/device/cluster-locks.ts). A partial
 * write to a cluster still in the base is a read-modify-write: read the base
 * cluster, patch it, write the whole cluster, then mark it DATA; holding the
 * lock means a second write to that cluster cannot copy the base over the
 * first one's bytes. Reads take no lock: a state flips only after its data is
 * complete in the file, so a read sees the old or the new contents of each
 * cluster, never a half-copied one.
 */
import { createHash, randomBytes } from 'node:crypto';
import { link, unlink, type FileHandle } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { DeviceError } from '../errors.js';
import { ClusterLocks } from './cluster-locks.js';
import { ClusterStates } from './cluster-states.js';
import { fsyncDir } from './durable.js';
import { DeviceClosedError, OverlayError } from './errors.js';
import { extentsLength, mapRange, pushExtent } from './extents.js';
import { readAll, writeAll } from './file-io.js';
import { createPrivateFile, openOwnPrivateFile } from './private-open.js';
import { checkRange } from './range.js';
import type { BlockDevice, DeviceExtent } from './types.js';

export const DEFAULT_OVERLAY_CLUSTER = 64 * 1024;
/** Cluster sizes allowed: powers of two in this range (a cluster is the unit of copy, and its buffer). */
export const MIN_OVERLAY_CLUSTER = 4096;
export const MAX_OVERLAY_CLUSTER = 4 * 1024 * 1024;

const MAGIC = Buffer.from('CWOVRLY1', 'latin1');
const VERSION = 2;
const HEADER_BYTES = 4096;
const HEADER_FIELDS = 48;
/** Where the base identity starts (after the fields and their SHA-256): u16 length, then UTF-8. */
const BASE_ID_OFFSET = HEADER_FIELDS + 32;
/** Longest base identity in bytes: it fits the header page with room to spare. */
export const MAX_BASE_ID_BYTES = 1024;
const STATE_PAGE = 4096;
/** mapExtents stops after this many extents (the contract allows a shorter answer). */
const MAX_MAP_EXTENTS = 16 * 1024;
/** Clusters one write, zero or trim locks at once (modify: larger requests go a window at a time). */
const MAX_LOCKED_CLUSTERS = 1024;

export const BASE = 0;
export const DATA = 1;
export const ZERO = 2;

export interface OverlayOptions {
  /** Bytes per cluster, the unit of copy-on-write (power of two, 4 KiB..4 MiB; default 64 KiB). An existing overlay keeps its own; a different value here is an error. */
  clusterSize?: number;
  /**
   * What the base is (e.g. `<archive uuid>/<disk>`), recorded when the overlay
   * is created and compared when it is reopened: an overlay's clusters only
   * make sense over the base they were written on, and two archives of one
   * disk have the same size. Absent: not recorded, and not checked.
   */
  baseId?: string;
}

interface Layout {
  clusterSize: number;
  baseSize: number;
  clusters: number;
  stateBytes: number;
  dataOffset: number;
}

function layoutFor(baseSize: number, clusterSize: number): Layout {
  const clusters = Math.ceil(baseSize / clusterSize);
  const stateBytes = ClusterStates.bytesFor(clusters);
  const stateSpan = Math.ceil(stateBytes / STATE_PAGE) * STATE_PAGE;
  const dataOffset = Math.ceil((HEADER_BYTES + stateSpan) / clusterSize) * clusterSize;
  return { clusterSize, baseSize, clusters, stateBytes, dataOffset };
}

function encodeHeader(l: Layout, baseId: string): Buffer {
  const h = Buffer.alloc(HEADER_BYTES);
  const id = Buffer.from(baseId, 'utf8');
  MAGIC.copy(h, 0);
  h.writeUInt32BE(VERSION, 8);
  h.writeUInt32BE(l.clusterSize, 12);
  h.writeBigUInt64BE(BigInt(l.baseSize), 16);
  h.writeBigUInt64BE(BigInt(HEADER_BYTES), 24);
  h.writeBigUInt64BE(BigInt(l.stateBytes), 32);
  h.writeBigUInt64BE(BigInt(l.dataOffset), 40);
  h.writeUInt16BE(id.length, BASE_ID_OFFSET);
  id.copy(h, BASE_ID_OFFSET + 2);
  headerSum(h, id.length).copy(h, HEADER_FIELDS);
  return h;
}

/** SHA-256 of the layout fields and the base identity (the bytes between them hold this sum). */
function headerSum(h: Buffer, idLength: number): Buffer {
  return createHash('sha256')
    .update(h.subarray(0, HEADER_FIELDS))
    .update(h.subarray(BASE_ID_OFFSET, BASE_ID_OFFSET + 2 + idLength))
    .digest();
}

function checkBaseId(baseId: string): void {
  if (Buffer.byteLength(baseId, 'utf8') > MAX_BASE_ID_BYTES) throw new OverlayError(`base identity longer than ${MAX_BASE_ID_BYTES} bytes`);
}

/** Parses and checks a header against the base; every field is recomputed, none trusted. */
function decodeHeader(path: string, h: Buffer, baseSize: number, want: OverlayOptions): Layout {
  const notOurs = (why: string): OverlayError => new OverlayError(`${path} is not a usable cowstream overlay: ${why}`);
  const wantCluster = want.clusterSize;
  if (h.length < HEADER_BYTES || !h.subarray(0, 8).equals(MAGIC)) throw notOurs('bad magic');
  const idLength = h.readUInt16BE(BASE_ID_OFFSET);
  if (idLength > MAX_BASE_ID_BYTES) throw notOurs('damaged header');
  if (!headerSum(h, idLength).equals(h.subarray(HEADER_FIELDS, HEADER_FIELDS + 32))) throw notOurs('header checksum mismatch');
  if (h.readUInt32BE(8) !== VERSION) throw notOurs(`unsupported version ${h.readUInt32BE(8)}`);
  const clusterSize = h.readUInt32BE(12);
  checkClusterSize(clusterSize);
  const size = h.readBigUInt64BE(16);
  if (size !== BigInt(baseSize)) throw notOurs(`made for a base of ${size} bytes, this base has ${baseSize}`);
  if (wantCluster !== undefined && wantCluster !== clusterSize) {
    throw notOurs(`its cluster size is ${clusterSize}, ${wantCluster} was asked for`);
  }
  const l = layoutFor(baseSize, clusterSize);
  const baseId = h.toString('utf8', BASE_ID_OFFSET + 2, BASE_ID_OFFSET + 2 + idLength);
  if (!encodeHeader(l, baseId).equals(h)) throw notOurs('inconsistent layout');
  if (want.baseId !== undefined && baseId !== want.baseId) {
    // Its clusters were written over another base: read over this one they would be a mix of two disks.
    throw notOurs(`made over ${baseId === '' ? 'an unnamed base' : JSON.stringify(baseId)}, not over ${JSON.stringify(want.baseId)}`);
  }
  return l;
}

function checkClusterSize(cs: number): void {
  if (!Number.isSafeInteger(cs) || cs < MIN_OVERLAY_CLUSTER || cs > MAX_OVERLAY_CLUSTER || (cs & (cs - 1)) !== 0) {
    throw new OverlayError(`cluster size must be a power of two from ${MIN_OVERLAY_CLUSTER} to ${MAX_OVERLAY_CLUSTER}, got ${cs}`);
  }
}

/**
 * Opens the overlay at `path` over `base`, creating it when absent. An
 * existing file is used only if it is a regular file owned by this user with
 * no group/other permission (never through a symlink) and a valid overlay
 * for a base of the same size.
 */
export async function openOverlay(base: BlockDevice, path: string, opts: OverlayOptions = {}): Promise<OverlayDevice> {
  if (opts.clusterSize !== undefined) checkClusterSize(opts.clusterSize);
  if (opts.baseId !== undefined) checkBaseId(opts.baseId);
  for (let attempt = 0; attempt < 3; attempt++) {
    let opened: { fh: FileHandle } | null = null;
    try {
      opened = await openOwnPrivateFile(path);
    } catch (err) {
      if (!(err instanceof OverlayError && (err.cause as { code?: string } | undefined)?.code === 'ENOENT')) throw err;
    }
    if (!opened) {
      // Created, or someone else created it first: either way open it, with the same checks.
      await createOverlayFile(path, layoutFor(base.size, opts.clusterSize ?? DEFAULT_OVERLAY_CLUSTER), opts.baseId ?? '');
      continue;
    }
    const { fh } = opened;
    try {
      return await OverlayDevice.load(base, path, fh, opts);
    } catch (err) {
      await fh.close().catch(() => undefined);
      throw err;
    }
  }
  throw new OverlayError(`${path} keeps appearing and disappearing; refusing to use it`);
}

/**
 * Creates a complete overlay (header, zero states, sparse data) under a
 * temporary name and links it into place, so `path` is either absent or a
 * whole overlay, even after a crash. Returns false if `path` appeared meanwhile.
 */
async function createOverlayFile(path: string, l: Layout, baseId: string): Promise<boolean> {
  const tmp = join(dirname(path), `.${randomBytes(8).toString('hex')}.overlay-tmp`);
  let fh: FileHandle;
  try {
    fh = await createPrivateFile(tmp);
  } catch (err) {
    throw new OverlayError(`cannot create overlay ${path}: ${(err as Error).message}`, { cause: err });
  }
  try {
    await fh.truncate(l.dataOffset + l.baseSize);
    await writeAll(fh, encodeHeader(l, baseId), 0);
    await fh.sync();
    await fh.close();
    try {
      await link(tmp, path);
    } catch (err) {
      if ((err as { code?: string }).code === 'EEXIST') return false;
      throw new OverlayError(`cannot create overlay ${path}: ${(err as Error).message}`, { cause: err });
    }
    await fsyncDir(dirname(path));
    return true;
  } finally {
    await fh.close().catch(() => undefined);
    await unlink(tmp).catch(() => undefined);
  }
}

/** One cluster-aligned piece of a request: [start, end) inside cluster c. */
interface Piece {
  c: number;
  start: number;
  end: number;
  full: boolean;
}

export class OverlayDevice implements BlockDevice {
  readonly size: number;
  readonly readOnly = false;
  readonly clusterSize: number;
  readonly path: string;
  private fh: FileHandle | null;
  private readonly states: ClusterStates;
  private readonly dataOffset: number;
  private readonly locks = new ClusterLocks();
  private flushTail: Promise<void> = Promise.resolve();
  private zeroCluster: Buffer | null = null;
  /** The first failed fdatasync (flushOnce: why it is never retried). */
  private syncFailure: unknown = null;

  private constructor(private readonly base: BlockDevice, path: string, fh: FileHandle, l: Layout, states: ClusterStates) {
    this.size = base.size;
    this.path = path;
    this.fh = fh;
    this.clusterSize = l.clusterSize;
    this.dataOffset = l.dataOffset;
    this.states = states;
  }

  /** Validates an opened overlay file and reads its states. */
  static async load(base: BlockDevice, path: string, fh: FileHandle, want: OverlayOptions): Promise<OverlayDevice> {
    const header = Buffer.alloc(HEADER_BYTES);
    const { bytesRead } = await fh.read(header, 0, HEADER_BYTES, 0);
    const l = decodeHeader(path, header.subarray(0, bytesRead), base.size, want);
    const st = await fh.stat();
    if (st.size !== l.dataOffset + l.baseSize) {
      throw new OverlayError(`${path} is ${st.size} bytes, a valid overlay for this base has ${l.dataOffset + l.baseSize}: truncated or not ours`);
    }
    const bytes = Buffer.alloc(l.stateBytes);
    await readAll(fh, bytes, HEADER_BYTES);
    const states = new ClusterStates(l.clusters, bytes);
    if (states.hasState3() || !states.paddingClear()) throw new OverlayError(`${path}: cluster states are damaged`);
    return new OverlayDevice(base, path, fh, l, states);
  }

  /** Clusters by state (tests, progress, `serve` statistics). */
  stats(): { clusters: number; written: number; zeroed: number } {
    return { clusters: this.states.count, written: this.states.countOf(DATA), zeroed: this.states.countOf(ZERO) };
  }

  /** The state of cluster c: BASE, DATA or ZERO. */
  clusterState(c: number): number {
    return this.states.get(c);
  }

  async read(offset: number, length: number): Promise<Buffer> {
    checkRange(this.size, offset, length, `read ${this.path}`);
    const fh = this.handle();
    // All of it still in the base (an overlay mostly unwritten): the base's
    // own buffer is the answer, no second buffer and copy per read.
    if (length > 0 && this.allBase(offset, length)) return this.readBase(offset, length);
    const out = Buffer.alloc(length);
    const jobs: Array<Promise<void>> = [];
    this.forRuns(offset, length, (state, start, end) => {
      const at = start - offset;
      if (state === ZERO) return; // already zero
      if (state === DATA) {
        jobs.push(this.io('read', start, () => readAll(fh, out.subarray(at, at + end - start), this.dataOffset + start)));
      } else {
        jobs.push(this.readBase(start, end - start).then((b) => void b.copy(out, at)));
      }
    });
    await Promise.all(jobs);
    return out;
  }

  async write(offset: number, data: Uint8Array, opts?: { fua?: boolean }): Promise<void> {
    checkRange(this.size, offset, data.length, `write ${this.path}`);
    await this.modify(offset, data.length, data, true);
    if (opts?.fua) await this.flush();
  }

  async writeZeroes(offset: number, length: number, opts?: { fua?: boolean; mayTrim?: boolean }): Promise<void> {
    checkRange(this.size, offset, length, `write zeroes ${this.path}`);
    // NO_HOLE (mayTrim false): the client wants the range allocated, so
    // whole clusters get real zeroes instead of the ZERO state.
    await this.modify(offset, length, null, opts?.mayTrim === false);
    if (opts?.fua) await this.flush();
  }

  async trim(offset: number, length: number): Promise<void> {
    checkRange(this.size, offset, length, `trim ${this.path}`);
    await this.modify(offset, length, null, false);
  }

  /** Makes every write completed before the call durable (module comment: the order). */
  flush(): Promise<void> {
    if (!this.fh) return Promise.reject(new DeviceClosedError(`overlay ${this.path} is closed`));
    const run = this.flushTail.then(() => this.flushOnce());
    this.flushTail = run.catch(() => undefined);
    return run;
  }

  async close(): Promise<void> {
    if (!this.fh) return;
    try {
      await this.flush();
    } finally {
      const fh = this.fh;
      this.fh = null;
      await fh?.close();
    }
  }

  async mapExtents(offset: number, length: number): Promise<DeviceExtent[]> {
    checkRange(this.size, offset, length, `map ${this.path}`);
    this.handle();
    // At most MAX_MAP_EXTENTS runs are looked at, however many the range holds: a
    // 4 GiB block-status request over alternating clusters would otherwise build
    // half a million runs (~100 MiB) and ask the base half a million times, per
    // request. The answer is then shorter; the client asks again from its end.
    const runs: Array<[number, number, number]> = [];
    this.forRuns(offset, length, (state, start, end) => runs.push([state, start, end]) < MAX_MAP_EXTENTS);
    const out: DeviceExtent[] = [];
    for (const [state, start, end] of runs) {
      if (out.length >= MAX_MAP_EXTENTS) break;
      if (state === DATA) pushExtent(out, end - start, false, false);
      else if (state === ZERO) pushExtent(out, end - start, true, true);
      else {
        const got = await mapRange(this.base, start, end, MAX_MAP_EXTENTS);
        for (const e of got) pushExtent(out, e.length, e.hole, e.zero);
        if (extentsLength(got) < end - start) break; // stopped early: the map must stay contiguous
      }
    }
    return out;
  }

  // ------------------------------------------------------------------ internals

  /** True when every cluster of [offset, offset+length), length > 0, is still BASE. */
  private allBase(offset: number, length: number): boolean {
    const first = Math.floor(offset / this.clusterSize);
    const end = Math.floor((offset + length - 1) / this.clusterSize) + 1;
    return this.states.get(first) === BASE && this.states.nextNot(first + 1, end, BASE) === end;
  }

  /** base.read, checked to return all it was asked for. */
  private async readBase(start: number, n: number): Promise<Buffer> {
    const b = await this.base.read(start, n);
    if (b.length !== n) throw new DeviceError(`base returned ${b.length} of ${n} bytes at ${start}`);
    return b;
  }

  /** Calls fn for each maximal run of clusters with one state, clipped to [offset, offset+length), until fn returns false. */
  private forRuns(offset: number, length: number, fn: (state: number, start: number, end: number) => boolean | void): void {
    const cs = this.clusterSize;
    const end = offset + length;
    let pos = offset;
    while (pos < end) {
      const c = Math.floor(pos / cs);
      const state = this.states.get(c);
      const lastC = Math.floor((end - 1) / cs) + 1;
      const next = this.states.nextNot(c + 1, lastC, state);
      const runEnd = Math.min(end, next * cs);
      if (fn(state, pos, runEnd) === false) return;
      pos = runEnd;
    }
  }

  /**
   * Applies a write-like change to [offset, offset+length) under the cluster
   * locks: `data`, or zeroes when null. With zeroes and `allocate` false,
   * whole clusters become the ZERO state with no I/O. Runs of whole clusters
   * of data go out in one write.
   */
  private async modify(offset: number, length: number, data: Uint8Array | null, allocate: boolean): Promise<void> {
    if (length === 0) return;
    const fh = this.handle();
    // A window of clusters at a time: a trim or write-zeroes carries no payload and
    // may cover 4 GiB, which in 4 KiB clusters is a million locks (~500 MiB) held at
    // once and seconds of event loop to take them. NBD does not make a request atomic
    // against overlapping ones; each cluster is still changed under its lock.
    const end = offset + length;
    for (let pos = offset; pos < end; ) {
      const next = Math.min(end, (Math.floor(pos / this.clusterSize) + MAX_LOCKED_CLUSTERS) * this.clusterSize);
      if (pos > offset) await new Promise<void>((r) => setImmediate(r)); // let other I/O in between windows
      await this.modifyLocked(fh, pos, next - pos, data ? data.subarray(pos - offset, next - offset) : null, allocate);
      pos = next;
    }
  }

  /** modify() of at most MAX_LOCKED_CLUSTERS clusters, under their locks. */
  private async modifyLocked(fh: FileHandle, offset: number, length: number, data: Uint8Array | null, allocate: boolean): Promise<void> {
    const first = Math.floor(offset / this.clusterSize);
    const last = Math.floor((offset + length - 1) / this.clusterSize);
    const release = await this.locks.lock(first, last);
    try {
      for (let c = first; c <= last; ) {
        const p = this.piece(c, offset, length);
        if (data && p.full) {
          let c2 = c;
          while (c2 < last && this.piece(c2 + 1, offset, length).full) c2++;
          const end = this.piece(c2, offset, length).end;
          await this.io('write', p.start, () => writeAll(fh, data.subarray(p.start - offset, end - offset), this.dataOffset + p.start));
          for (let k = c; k <= c2; k++) this.states.set(k, DATA, STATE_PAGE);
          c = c2 + 1;
          continue;
        }
        const bytes = data ? data.subarray(p.start - offset, p.end - offset) : this.zeroes(p.end - p.start);
        await this.modifyCluster(fh, p, bytes, data === null && !allocate);
        c++;
      }
    } finally {
      release();
    }
  }

  /** The part of [offset, offset+length) inside cluster c. */
  private piece(c: number, offset: number, length: number): Piece {
    const cStart = c * this.clusterSize;
    const cEnd = Math.min(this.size, cStart + this.clusterSize);
    const start = Math.max(offset, cStart);
    const end = Math.min(offset + length, cEnd);
    return { c, start, end, full: start === cStart && end === cEnd };
  }

  /** One cluster's part of a change; `mayHole`: zeroes that need no storage. */
  private async modifyCluster(fh: FileHandle, p: Piece, data: Uint8Array, mayHole: boolean): Promise<void> {
    const state = this.states.get(p.c);
    if (mayHole) {
      if (state === ZERO) return; // already reads as zeroes
      if (p.full) {
        this.states.set(p.c, ZERO, STATE_PAGE);
        return;
      }
    }
    if (p.full || state === DATA) {
      await this.io('write', p.start, () => writeAll(fh, data, this.dataOffset + p.start));
    } else {
      // Read-modify-write of a cluster not yet in the overlay.
      const cStart = p.c * this.clusterSize;
      const cLen = Math.min(this.size, cStart + this.clusterSize) - cStart;
      const buf = state === ZERO ? Buffer.alloc(cLen) : await this.readBase(cStart, cLen);
      buf.set(data, p.start - cStart);
      await this.io('write', cStart, () => writeAll(fh, buf, this.dataOffset + cStart));
    }
    this.states.set(p.c, DATA, STATE_PAGE);
  }

  /** A shared, never-written zero buffer of up to one cluster. */
  private zeroes(n: number): Uint8Array {
    this.zeroCluster ??= Buffer.alloc(this.clusterSize);
    return this.zeroCluster.subarray(0, n);
  }

  private async flushOnce(): Promise<void> {
    const fh = this.handle();
    if (this.syncFailure !== null) {
      throw new DeviceError(`overlay ${this.path}: an earlier fdatasync failed, so writes since the last good flush may be lost; no later flush can vouch for them (reopen the overlay)`, { cause: this.syncFailure });
    }
    const pages = this.states.takeDirty(STATE_PAGE);
    const sync = (): Promise<void> =>
      this.io('fdatasync', 0, () => fh.datasync()).catch((err: unknown) => {
        // Linux marks the pages of a failed writeback clean and reports the error once:
        // a retried fdatasync "succeeds" without the data, and the state pages written
        // after it would call lost clusters DATA. So one failure fails every later flush.
        this.syncFailure = err;
        throw err;
      });
    try {
      await sync();
      if (pages.length === 0) return;
      for (const pg of pages) await this.io('write states', pg.offset, () => writeAll(fh, pg.data, HEADER_BYTES + pg.offset));
      await sync();
    } catch (err) {
      this.states.markDirty(pages.map((pg) => pg.offset), STATE_PAGE);
      throw err;
    }
  }

  private handle(): FileHandle {
    if (!this.fh) throw new DeviceClosedError(`overlay ${this.path} is closed`);
    return this.fh;
  }

  private async io<T>(op: string, offset: number, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      if (err instanceof DeviceError) throw err;
      // Keep the errno (ENOSPC...) reachable as `cause` for the NBD error mapping.
      throw new DeviceError(`${op} overlay ${this.path} at ${offset} failed: ${(err as Error).message}`, { cause: err });
    }
  }
}
