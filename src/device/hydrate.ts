/**
 * Hydration: copy every cluster of a source device (an archive being served,
 * or an overlay over one) into a local target file in the background, while
 * `device` serves reads and writes in place of the source. At the end the
 * target equals the source, including every write made through `device`
 * meanwhile (docs/overlay.md).
 *
 * Each cluster is NOT_COPIED, WRITTEN (written through `device` while not
 * copied) or COPIED.
 *  - A copy of cluster c holds c's lock from reading the source to marking
 *    it COPIED.
 *  - A write through `device` holds the locks of its clusters (a window of
 *    them at a time, for a huge trim or write-zeroes): it marks the
 *    NOT_COPIED ones WRITTEN, writes the source, then writes the same bytes to
 *    the target for the clusters already COPIED.
 * So a write and the copy of the same cluster never overlap: either the copy
 * finishes first (the cluster is COPIED and the write goes to the target
 * too), or the write finishes first (the source has it when the copy reads
 * it). The source is always complete, so a read of a cluster that is not
 * COPIED reads the source, and of one that is, the target.
 *
 * Holes are skipped: the scheduler asks the source's map for a window of
 * clusters before copying them (outside any lock, so it may be stale by the
 * time a cluster is copied). A cluster the map called all-zero is marked
 * COPIED without I/O only if it is still NOT_COPIED under its lock: any write
 * since would have made it WRITTEN, and WRITTEN clusters are always read and
 * copied. A cluster whose data reads as zeroes is not written either, so the
 * target stays sparse (it starts as a sparse file of zeroes).
 *
 * A cluster a client reads before it is copied is read from the source and
 * queued to be copied next (ahead of the scan), so the next read of it is local.
 *
 * Failure or cancel leaves an incomplete target and makes `device` a plain
 * pass-through to the source (which has every write), so serving goes on.
 */
import { constants as fsc } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { DeviceError } from '../errors.js';
import { ClusterLocks } from './cluster-locks.js';
import { ClusterStates } from './cluster-states.js';
import { DeviceClosedError, OverlayError } from './errors.js';
import { mapRange } from './extents.js';
import { readAll, writeAll } from './file-io.js';
import { createPrivateFile, privateStatProblem } from './private-open.js';
import { checkRange } from './range.js';
import type { BlockDevice, DeviceExtent } from './types.js';

export const DEFAULT_HYDRATE_CLUSTER = 1024 * 1024;
export const DEFAULT_HYDRATE_CONCURRENCY = 4;
/** Clusters whose map the scheduler asks for at once. */
const MAP_WINDOW_CLUSTERS = 256;
/** At most this many read clusters wait to be copied ahead of the scan; more are left to the scan. */
const MAX_URGENT = 1024;
/** Clusters one write, zero or trim locks at once (modify: larger requests go a window at a time). */
const MAX_LOCKED_CLUSTERS = 1024;

const NOT_COPIED = 0;
const COPIED = 1;
const WRITTEN = 2;

export interface HydrationOptions {
  /** Bytes per copy (power of two, 4 KiB..16 MiB; default 1 MiB). Memory in use is about concurrency × clusterSize. */
  clusterSize?: number;
  /** Copies in flight at once (1..64; default 4). */
  concurrency?: number;
  /** Overwrite an existing non-empty target file (it must still be a private regular file of ours). */
  force?: boolean;
}

export type HydrationState = 'opening' | 'running' | 'complete' | 'failed' | 'cancelled';

export interface HydrationProgress {
  state: HydrationState;
  /** Bytes of the source accounted for (copied or skipped as zero). */
  bytesDone: number;
  bytesTotal: number;
  /** Bytes written to the target by the copy. */
  bytesCopied: number;
  /** Bytes left sparse because they read as zeroes. */
  bytesSkipped: number;
  /** Why the hydration failed (state 'failed'), also when the target failed after completion. */
  error?: string;
}

export interface HydrationResult {
  target: string;
  bytesTotal: number;
  bytesCopied: number;
  bytesSkipped: number;
  elapsedMs: number;
}

export interface Hydration {
  /** Serve this in place of the source. close() cancels a running hydration and closes the target, not the source. */
  readonly device: BlockDevice;
  progress(): HydrationProgress;
  /** Resolves when the target is complete and synced; rejects on failure, or with HydrationCancelledError. */
  readonly done: Promise<HydrationResult>;
  /** Stops copying; in-flight copies finish. `device` keeps serving from the source. */
  cancel(): void;
}

/** The hydration was cancelled before it completed. */
export class HydrationCancelledError extends DeviceError {
  override readonly code: string = 'HYDRATION_CANCELLED';
}

/** Starts copying `source` into the file `target` (see the module comment). */
export function startHydration(source: BlockDevice, target: string, opts: HydrationOptions = {}): Hydration {
  const h = new HydrationRun(source, target, opts);
  return { device: h.device, progress: () => h.progress(), done: h.done, cancel: () => h.cancel() };
}

function checkOptions(opts: HydrationOptions): { clusterSize: number; concurrency: number } {
  const cs = opts.clusterSize ?? DEFAULT_HYDRATE_CLUSTER;
  if (!Number.isSafeInteger(cs) || cs < 4096 || cs > 16 * 1024 * 1024 || (cs & (cs - 1)) !== 0) {
    throw new OverlayError(`hydration cluster size must be a power of two from 4096 to 16 MiB, got ${cs}`);
  }
  const n = opts.concurrency ?? DEFAULT_HYDRATE_CONCURRENCY;
  if (!Number.isSafeInteger(n) || n < 1 || n > 64) throw new OverlayError(`hydration concurrency must be 1..64, got ${n}`);
  return { clusterSize: cs, concurrency: n };
}

/**
 * Opens the target: created 0600 (O_EXCL|O_NOFOLLOW) when absent; an existing
 * one must be reached without a symlink, be a private regular file of ours,
 * and be empty unless `force`. It is then made a sparse file of `size` zeroes.
 */
export async function openHydrationTarget(path: string, size: number, force: boolean): Promise<FileHandle> {
  let fh: FileHandle;
  try {
    fh = await createPrivateFile(path);
  } catch (err) {
    if ((err as { code?: string }).code !== 'EEXIST') {
      throw new OverlayError(`cannot create hydration target ${path}: ${(err as Error).message}`, { cause: err });
    }
    try {
      fh = await open(path, fsc.O_RDWR | fsc.O_NOFOLLOW | fsc.O_NONBLOCK);
    } catch (e) {
      const why = (e as { code?: string }).code === 'ELOOP' ? 'it is a symbolic link' : (e as Error).message;
      throw new OverlayError(`refusing hydration target ${path}: ${why}`, { cause: e });
    }
    try {
      const st = await fh.stat();
      const problem = privateStatProblem(path, st);
      if (problem) throw new OverlayError(`refusing hydration target: ${problem}`);
      if (st.size > 0 && !force) throw new OverlayError(`hydration target ${path} exists and is not empty (${st.size} bytes); refusing to overwrite it without force`);
      await fh.truncate(0);
    } catch (e) {
      await fh.close().catch(() => undefined);
      throw e;
    }
  }
  try {
    await fh.truncate(size);
  } catch (e) {
    await fh.close().catch(() => undefined);
    throw new OverlayError(`cannot size hydration target ${path}: ${(e as Error).message}`, { cause: e });
  }
  return fh;
}

class HydrationRun {
  readonly device: BlockDevice;
  readonly done: Promise<HydrationResult>;
  private state: HydrationState = 'opening';
  private fh: FileHandle | null = null;
  private readonly ready: Promise<void>;
  private readonly states: ClusterStates;
  private readonly locks = new ClusterLocks();
  private readonly cs: number;
  private readonly concurrency: number;
  private readonly size: number;
  private bytesDone = 0;
  private bytesCopied = 0;
  private bytesSkipped = 0;
  private cancelled = false;
  private nextWindow = 0;
  private queue: Array<{ c: number; zero: boolean }> = [];
  /** Clusters a client read before they were copied: copied next, so later reads are local. */
  private urgent: number[] = [];
  private refilling: Promise<void> | null = null;
  private zeroBuf: Buffer | null = null;
  private closed = false;
  private failure: unknown = null;

  constructor(private readonly source: BlockDevice, private readonly target: string, opts: HydrationOptions) {
    const { clusterSize, concurrency } = checkOptions(opts);
    this.cs = clusterSize;
    this.concurrency = concurrency;
    this.size = source.size;
    this.states = new ClusterStates(Math.ceil(this.size / this.cs));
    this.device = this.makeDevice();
    const started = Date.now();
    this.ready = openHydrationTarget(target, this.size, opts.force ?? false).then((fh) => {
      this.fh = fh;
      if (this.state === 'opening') this.state = 'running';
    });
    this.done = this.ready.then(() => this.run(started)).catch((err: unknown) => {
      if (this.state !== 'cancelled') {
        this.state = 'failed';
        this.failure ??= err;
      }
      throw err;
    });
    // Nobody may be waiting on `done` (serving goes on regardless); a failure
    // must not become an unhandled rejection.
    this.done.catch(() => undefined);
  }

  progress(): HydrationProgress {
    const p: HydrationProgress = { state: this.state, bytesDone: this.bytesDone, bytesTotal: this.size, bytesCopied: this.bytesCopied, bytesSkipped: this.bytesSkipped };
    if (this.state === 'failed' && this.failure !== null) p.error = (this.failure as Error).message ?? String(this.failure);
    return p;
  }

  cancel(): void {
    if (this.state === 'complete' || this.state === 'failed') return;
    this.cancelled = true;
    this.state = 'cancelled';
  }

  /** Whether the target is still kept in step with the source. */
  private get attached(): boolean {
    return this.fh !== null && (this.state === 'running' || this.state === 'complete');
  }

  private async run(started: number): Promise<HydrationResult> {
    await Promise.all(Array.from({ length: this.concurrency }, () => this.worker()));
    if (this.state === 'failed') throw this.failure ?? new DeviceError(`hydration of ${this.target} failed`);
    if (this.cancelled) throw new HydrationCancelledError(`hydration of ${this.target} cancelled at ${this.bytesDone} of ${this.size} bytes`);
    await this.targetIo('fdatasync', 0, (fh) => fh.datasync());
    this.state = 'complete';
    return { target: this.target, bytesTotal: this.size, bytesCopied: this.bytesCopied, bytesSkipped: this.bytesSkipped, elapsedMs: Date.now() - started };
  }

  private async worker(): Promise<void> {
    for (;;) {
      if (this.cancelled || this.state !== 'running') return;
      const task = await this.nextTask();
      if (!task) return;
      await this.copyCluster(task.c, task.zero);
    }
  }

  private async nextTask(): Promise<{ c: number; zero: boolean } | undefined> {
    const hot = this.urgent.shift();
    if (hot !== undefined) return { c: hot, zero: false };
    while (this.queue.length === 0) {
      if (this.nextWindow >= this.states.count || this.cancelled) return undefined;
      this.refilling ??= this.refill().finally(() => (this.refilling = null));
      await this.refilling;
    }
    return this.queue.shift();
  }

  /** Queues the next window of clusters, each with whether the source's map calls it all zero. */
  private async refill(): Promise<void> {
    const first = this.nextWindow;
    const last = Math.min(this.states.count, first + MAP_WINDOW_CLUSTERS);
    const start = first * this.cs;
    const end = Math.min(this.size, last * this.cs);
    const map = await mapRange(this.source, start, end);
    const zeroUntil = zeroRunEnds(map, start);
    for (let c = first; c < last; c++) {
      const cStart = c * this.cs;
      const cEnd = Math.min(this.size, cStart + this.cs);
      this.queue.push({ c, zero: zeroUntil(cStart) >= cEnd });
    }
    this.nextWindow = last;
  }

  private async copyCluster(c: number, mapZero: boolean): Promise<void> {
    const release = await this.locks.lock(c, c);
    try {
      const st = this.states.get(c);
      if (st === COPIED || !this.attached) return;
      const cStart = c * this.cs;
      const cLen = Math.min(this.size, cStart + this.cs) - cStart;
      if (mapZero && st === NOT_COPIED) {
        this.bytesSkipped += cLen;
      } else {
        const data = await this.readSource(cStart, cLen);
        if (this.isZero(data)) this.bytesSkipped += cLen;
        else {
          await this.targetIo('write', cStart, (fh) => writeAll(fh, data, cStart));
          this.bytesCopied += cLen;
        }
      }
      this.states.set(c, COPIED);
      this.bytesDone += cLen;
    } finally {
      release();
    }
  }

  private isZero(b: Buffer): boolean {
    this.zeroBuf ??= Buffer.alloc(this.cs);
    return b.equals(this.zeroBuf.subarray(0, b.length));
  }

  private async targetIo<T>(op: string, offset: number, fn: (fh: FileHandle) => Promise<T>): Promise<T> {
    const fh = this.fh;
    if (!fh) throw new DeviceClosedError(`hydration target ${this.target} is closed`);
    try {
      return await fn(fh);
    } catch (err) {
      throw new DeviceError(`${op} hydration target ${this.target} at ${offset} failed: ${(err as Error).message}`, { cause: err });
    }
  }

  /** A failed target write while serving: stop hydrating, keep serving from the source. */
  private detach(err: unknown): void {
    if (this.state !== 'running' && this.state !== 'complete') return;
    this.state = 'failed';
    this.failure = err;
  }

  // ---------------------------------------------------------------- the device

  private makeDevice(): BlockDevice {
    const dev: BlockDevice = {
      size: this.size,
      readOnly: this.source.readOnly,
      read: (offset, length) => this.read(offset, length),
      write: (offset, data, o) => this.modify(offset, data.length, (fh, s, e) => writeAll(fh, data.subarray(s - offset, e - offset), s), (s, e) => this.source.write(s, data.subarray(s - offset, e - offset), o)),
      writeZeroes: (offset, length, o) => this.modify(offset, length, (fh, s, e) => this.zeroFill(fh, s, e), (s, e) => this.source.writeZeroes(s, e - s, o)),
      trim: (offset, length) => this.modify(offset, length, (fh, s, e) => this.zeroFill(fh, s, e), (s, e) => this.source.trim(s, e - s)),
      flush: () => this.flush(),
      close: () => this.close(),
    };
    if (this.source.mapExtents) {
      const src = this.source;
      dev.mapExtents = (offset: number, length: number): Promise<DeviceExtent[]> => src.mapExtents!(offset, length);
    }
    return dev;
  }

  private async read(offset: number, length: number): Promise<Buffer> {
    checkRange(this.size, offset, length, `read ${this.target}`);
    if (this.closed) throw new DeviceClosedError(`hydration device ${this.target} is closed`);
    if (!this.attached || length === 0) return this.source.read(offset, length);
    const runs: Array<{ start: number; end: number; copied: boolean }> = [];
    const end = offset + length;
    for (let pos = offset; pos < end; ) {
      const c = Math.floor(pos / this.cs);
      const copied = this.states.get(c) === COPIED;
      let next = Math.min(end, (c + 1) * this.cs);
      while (next < end && (this.states.get(Math.floor(next / this.cs)) === COPIED) === copied) next = Math.min(end, next + this.cs);
      if (!copied) this.prioritise(c, Math.floor((next - 1) / this.cs));
      runs.push({ start: pos, end: next, copied });
      pos = next;
    }
    // Nothing of it copied yet: the source's own buffer is the answer, no second buffer and copy per read.
    if (runs.length === 1 && !runs[0]!.copied) return this.readSource(offset, length);
    const out = Buffer.alloc(length);
    await Promise.all(runs.map(({ start, end: e, copied }) => {
      const at = start - offset;
      if (copied) return this.targetIo('read', start, (fh) => readAll(fh, out.subarray(at, at + e - start), start));
      return this.readSource(start, e - start).then((b) => void b.copy(out, at));
    }));
    return out;
  }

  /** source.read, checked to return all it was asked for. */
  private async readSource(start: number, n: number): Promise<Buffer> {
    const b = await this.source.read(start, n);
    if (b.length !== n) throw new DeviceError(`source returned ${b.length} of ${n} bytes at ${start}`);
    return b;
  }

  /** Queues clusters first..last to be copied before the sequential scan reaches them (bounded). */
  private prioritise(first: number, last: number): void {
    for (let c = first; c <= last && this.urgent.length < MAX_URGENT; c++) {
      if (this.states.get(c) !== COPIED) this.urgent.push(c);
    }
  }

  /**
   * A write-like change: under the cluster locks, clusters not yet copied
   * become WRITTEN, the source is changed, then `toTarget` repeats the change
   * on the target for the clusters already COPIED. A window of
   * MAX_LOCKED_CLUSTERS clusters at a time: a payload-less trim may cover
   * 4 GiB, a million 4 KiB clusters whose locks would all be held at once.
   */
  private async modify(
    offset: number,
    length: number,
    toTarget: (fh: FileHandle, start: number, end: number) => Promise<void>,
    toSource: (start: number, end: number) => Promise<void>,
  ): Promise<void> {
    checkRange(this.size, offset, length, `write ${this.target}`);
    if (this.closed) throw new DeviceClosedError(`hydration device ${this.target} is closed`);
    if (length === 0) return toSource(offset, offset);
    const end = offset + length;
    for (let pos = offset; pos < end; ) {
      const next = Math.min(end, (Math.floor(pos / this.cs) + MAX_LOCKED_CLUSTERS) * this.cs);
      if (pos > offset) await new Promise<void>((r) => setImmediate(r)); // let other I/O in between windows
      await this.modifyLocked(pos, next - pos, toTarget, () => toSource(pos, next));
      pos = next;
    }
  }

  /** modify() of at most MAX_LOCKED_CLUSTERS clusters. */
  private async modifyLocked(
    offset: number,
    length: number,
    toTarget: (fh: FileHandle, start: number, end: number) => Promise<void>,
    toSource: () => Promise<void>,
  ): Promise<void> {
    const first = Math.floor(offset / this.cs);
    const last = Math.floor((offset + length - 1) / this.cs);
    const release = await this.locks.lock(first, last);
    try {
      for (let c = first; c <= last; c++) if (this.states.get(c) === NOT_COPIED) this.states.set(c, WRITTEN);
      await toSource();
      if (!this.attached) return;
      const fh = this.fh as FileHandle;
      const end = offset + length;
      try {
        for (let c = first; c <= last; c++) {
          if (this.states.get(c) !== COPIED) continue;
          await toTarget(fh, Math.max(offset, c * this.cs), Math.min(end, (c + 1) * this.cs));
        }
      } catch (err) {
        // The source has the write; only the copy is lost.
        this.detach(err);
      }
    } finally {
      release();
    }
  }

  private async zeroFill(fh: FileHandle, start: number, end: number): Promise<void> {
    this.zeroBuf ??= Buffer.alloc(this.cs);
    await writeAll(fh, this.zeroBuf.subarray(0, end - start), start);
  }

  private async flush(): Promise<void> {
    await this.source.flush();
    if (this.attached) {
      try {
        await this.targetIo('fdatasync', 0, (fh) => fh.datasync());
      } catch (err) {
        this.detach(err);
      }
    }
  }

  private async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.cancel();
    await this.done.catch(() => undefined);
    const fh = this.fh;
    this.fh = null;
    await fh?.close();
  }
}

/** For a map starting at `start`: given a position, the end of the all-zero run containing it (or the position itself). */
function zeroRunEnds(map: readonly DeviceExtent[], start: number): (pos: number) => number {
  const runs: Array<[number, number]> = [];
  let pos = start;
  for (const e of map) {
    if (e.zero || e.hole) {
      const last = runs.at(-1);
      if (last && last[1] === pos) last[1] = pos + e.length;
      else runs.push([pos, pos + e.length]);
    }
    pos += e.length;
  }
  return (p) => runs.find(([s, e]) => s <= p && p < e)?.[1] ?? p;
}
