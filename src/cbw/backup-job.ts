/**
 * BackupJob: a point-in-time backup of live block devices by copy-before-write
 * (QEMU block/backup.c `backup_do_cow` + `wait_for_overlapping_requests`; with
 * fleecing, QEMU's copy-before-write filter + snapshot-access).
 *
 * Per cluster of the copy set the job keeps a state:
 *
 *   NEED     in the copy set, not captured yet. `need` bit set.
 *   (locked) a capture of the cluster is in progress (entry in `locks`).
 *   SCRATCH  old data saved in the fleecing store (or held in a buffer while
 *            its bounded write-behind to the store completes), then queued
 *            for the sink.
 *   INMEM    old data read into a job buffer, on its way to the sink.
 *   DONE     handed to the sink (`done` bit set).
 *
 * THE INVARIANT that makes the backup consistent:
 *   (I1) While a cluster is NEED, the source still holds its snapshot data:
 *        every guest write first calls beforeWrite, which returns only when
 *        none of the clusters it touches is NEED (or the snapshot is broken,
 *        i.e. the job failed).
 *   (I2) A cluster leaves NEED only under its lock, and the source is read for
 *        a NEED cluster only under its lock. Check-and-lock happens in one
 *        synchronous step (JS is single-threaded: no await between
 *        `need.test(c)`, `!locks.has(c)` and `locks.set(c)`), so two copies of
 *        the same cluster can never both start (no cluster copied twice).
 *   (I3) A guest write that finds a touched cluster locked waits for the lock
 *        and re-checks (wait_for_overlapping_requests). So a background copy of
 *        c and a guest write to c are serialized: either the copy holds the lock
 *        and the write waits until the old data is in memory/scratch/sink, or
 *        the write's own beforeWrite captured c first and the background pass
 *        then skips it. A write can never reach the source before c's old data
 *        is safe, hence no cluster is copied after it was modified.
 *   (I4) The snapshot instant is when the job is attached with no guest write
 *        in flight (CbwDevice.pause/attach/resume), so no write that started
 *        before the job can land afterwards.
 *
 * Every cluster goes NEED → (INMEM | SCRATCH) → DONE exactly once. The job
 * succeeds when no cluster of the copy set is left undelivered.
 *
 * Memory: the background pass holds one batch (readBatchClusters); CBW holds
 * the clusters of the writes currently waiting (bounded by the guest queue
 * depth × request size); the fleecing store is on disk, bounded by maxBytes.
 */
import type { BlockDevice } from '../device/types.js';
import type { ClusterSink } from './cluster.js';
import { CLUSTER_SIZE } from './cluster.js';
import { BackupCancelledError, CbwError, UsageError, describeError } from '../errors.js';
import { Bitmap, clusterCount } from './bitmap.js';
import { BackupJobError, CbwTimeoutError, CbwWriteError, FleecingFullError } from './errors.js';
import { FleecingStore, type FleecingOptions, type FleecingStats } from './fleecing.js';
import { TokenBucket } from './rate-limit.js';
import { PriorityMutex, deferred, type Deferred } from './sync.js';

export type CbwErrorPolicy = 'break-snapshot' | 'break-guest-write';
export type JobState = 'active' | 'done' | 'error' | 'cancelled';

export interface BackupJobDevice {
  /** Device id in the archive (0..254). */
  id: number;
  name: string;
  /** The RAW device (reads bypass CBW); guest writes must go through a CbwDevice attached to this job. */
  device: BlockDevice;
  /** Clusters to copy (incremental); undefined = all clusters (full). Not modified by the job. */
  copyBitmap?: Bitmap;
}

export interface BackupJobOptions {
  devices: BackupJobDevice[];
  sink: ClusterSink;
  /** Limits the background pass (bytes/s). CBW copies are never delayed by it. */
  speedBytesPerSec?: number;
  /** Max time a guest write waits in beforeWrite. Default 30000. */
  cbwTimeoutMs?: number;
  /** What a CBW failure/timeout does. Default 'break-snapshot'. */
  onCbwError?: CbwErrorPolicy;
  /** Save CBW data to local scratch instead of waiting for the sink. */
  fleecing?: FleecingOptions;
  /** Aborting cancels the job. */
  signal?: AbortSignal;
  /** Clusters per background source read (default 16 = 1 MiB). */
  readBatchClusters?: number;
  /**
   * Called after every guest write that had to wait for copy-before-write,
   * with how long it waited (ms) and the device's name (the agent's metrics).
   * Must not throw or block: it runs on the guest write's path.
   */
  onCbwWait?: (ms: number, deviceName: string) => void;
}

export interface BackupDeviceProgress {
  id: number;
  name: string;
  size: number;
  total: number;
  transferred: number;
}

export interface BackupProgress {
  status: JobState;
  /** Bytes to copy (sum over devices of the copy set). */
  total: number;
  /** Bytes handed to the sink so far. */
  transferred: number;
  /** Of `transferred`, bytes in all-zero clusters. */
  zeroBytes: number;
  /** ms since epoch. */
  startTime: number;
  endTime: number | null;
  /** One-line error description (status error/cancelled). */
  error: string | null;
  /** Clusters captured by copy-before-write (guest writes) rather than the background pass. */
  cbwClusters: number;
  /** Longest time a guest write waited in beforeWrite (ms). */
  maxCbwWaitMs: number;
  fleecing: FleecingStats | null;
  devices: BackupDeviceProgress[];
}

/** The final progress; `errorObject` is the error itself (status error/cancelled). */
export interface BackupResult extends BackupProgress {
  errorObject: Error | null;
}

/** Sink priorities: a waiting guest write first, then freeing scratch, then the background pass. */
const PRIO_CBW = 0;
const PRIO_DRAIN = 1;
const PRIO_BACKGROUND = 2;
/** Fleecing scratch writes that may be in flight while guest writes proceed (4 MiB of buffers). */
const WRITE_BEHIND_CLUSTERS = 64;
/** Max clusters one beforeWrite locks/captures at a time (4 MiB). */
const CBW_WINDOW = 64;

interface DevState {
  readonly id: number;
  readonly name: string;
  readonly device: BlockDevice;
  readonly size: number;
  readonly clusters: number;
  /** NEED clusters. */
  readonly need: Bitmap;
  /** Delivered clusters (sanity: a second delivery is a bug and fails the job). */
  readonly done: Bitmap;
  /** Clusters with a capture in progress (I2). */
  readonly locks: Map<number, Deferred<void>>;
  /** SCRATCH clusters → fleecing slot. */
  readonly scratch: Map<number, number>;
  readonly total: number;
  transferred: number;
  /** Background scan position. */
  cursor: number;
}

interface DrainItem {
  dev: DevState;
  cluster: number;
  slot: number;
}

const ZERO_CLUSTER = Buffer.alloc(CLUSTER_SIZE);

function isAllZero(buf: Buffer): boolean {
  // Buffer.equals is a memcmp: far cheaper than a JS byte loop per 64 KiB.
  return buf.equals(ZERO_CLUSTER.subarray(0, buf.length));
}

/** A failure of the sink or source: the archive can't be completed, so the job fails under any policy. */
function isHardError(err: unknown): boolean {
  return !(err instanceof FleecingFullError) && !(err instanceof CbwTimeoutError);
}

export class BackupJob {
  readonly onCbwError: CbwErrorPolicy;
  private readonly onCbwWait: ((ms: number, deviceName: string) => void) | undefined;
  readonly cbwTimeoutMs: number;
  private readonly devs = new Map<number, DevState>();
  private readonly order: DevState[] = [];
  private readonly sink: ClusterSink;
  private readonly sinkLock = new PriorityMutex(3);
  private readonly bucket: TokenBucket | null;
  private readonly batch: number;
  private fleece: FleecingStore | null = null;
  private readonly drainQueue: DrainItem[] = [];
  private scratchWritesInFlight = 0;
  private detachSignal: (() => void) | null = null;
  /** beforeWrite calls waiting in their race (see there); woken by end(). */
  private readonly endWaiters = new Set<() => void>();
  private readonly doneD = deferred<BackupResult>();
  private change = deferred<void>();
  private status: JobState = 'active';
  private started = false;
  private errorObj: Error | null = null;
  private pendingClusters = 0;
  private totalBytes = 0;
  private transferredBytes = 0;
  private zeroBytesCount = 0;
  private cbwClusters = 0;
  private maxCbwWait = 0;
  private readonly startTime = Date.now();
  private endTime: number | null = null;
  private readonly onEnd: Array<(r: BackupResult) => Promise<void> | void> = [];

  /** Resolves (never rejects) when the job ended, with its final status. */
  readonly done: Promise<BackupResult> = this.doneD.promise;

  /**
   * Builds a job; it protects its devices from the moment beforeWrite is wired
   * (it is the snapshot from construction on). Call start() to run the
   * background pass. Use BackupJob.create() when `fleecing` is set.
   */
  constructor(opts: BackupJobOptions, fleecingStore?: FleecingStore) {
    if (opts.devices.length === 0) throw new UsageError('a backup needs at least one device');
    if (opts.speedBytesPerSec !== undefined && !(opts.speedBytesPerSec > 0)) {
      throw new UsageError(`speed must be positive, got ${opts.speedBytesPerSec}`);
    }
    if (opts.cbwTimeoutMs !== undefined && !(opts.cbwTimeoutMs > 0)) {
      throw new UsageError(`cbwTimeoutMs must be positive, got ${opts.cbwTimeoutMs}`);
    }
    if (opts.fleecing && !fleecingStore) throw new UsageError('use BackupJob.create() for fleecing jobs');
    this.sink = opts.sink;
    this.onCbwError = opts.onCbwError ?? 'break-snapshot';
    this.onCbwWait = opts.onCbwWait;
    this.cbwTimeoutMs = opts.cbwTimeoutMs ?? 30_000;
    this.batch = Math.max(1, Math.min(64, opts.readBatchClusters ?? 16));
    this.bucket = opts.speedBytesPerSec ? new TokenBucket(opts.speedBytesPerSec, this.batch * CLUSTER_SIZE) : null;
    this.fleece = fleecingStore ?? null;
    for (const d of opts.devices) {
      if (!Number.isInteger(d.id) || d.id < 0 || d.id > 254) throw new UsageError(`bad device id ${d.id}`);
      if (this.devs.has(d.id)) throw new UsageError(`duplicate device id ${d.id}`);
      const clusters = clusterCount(d.device.size, CLUSTER_SIZE);
      if (d.copyBitmap && d.copyBitmap.size !== clusters) {
        throw new UsageError(`copy bitmap of ${d.name} has ${d.copyBitmap.size} bits, device has ${clusters} clusters`);
      }
      const need = d.copyBitmap ? d.copyBitmap.clone() : Bitmap.full(clusters);
      let total = need.count() * CLUSTER_SIZE;
      if (clusters > 0 && need.test(clusters - 1)) total -= clusters * CLUSTER_SIZE - d.device.size;
      const st: DevState = {
        id: d.id,
        name: d.name,
        device: d.device,
        size: d.device.size,
        clusters,
        need,
        done: new Bitmap(clusters),
        locks: new Map(),
        scratch: new Map(),
        total,
        transferred: 0,
        cursor: 0,
      };
      this.devs.set(d.id, st);
      this.order.push(st);
      this.pendingClusters += need.count();
      this.totalBytes += total;
    }
    if (opts.signal) {
      if (opts.signal.aborted) this.cancel();
      else {
        const signal = opts.signal;
        const onAbort = (): void => this.cancel();
        signal.addEventListener('abort', onAbort, { once: true });
        this.detachSignal = () => signal.removeEventListener('abort', onAbort);
      }
    }
  }

  /** Creates the fleecing store (if any) and the job. Does not start the background pass. */
  static async create(opts: BackupJobOptions): Promise<BackupJob> {
    const store = opts.fleecing ? await FleecingStore.create(opts.fleecing) : undefined;
    try {
      return new BackupJob(opts, store);
    } catch (err) {
      await store?.close();
      throw err;
    }
  }

  /** Starts the background pass (idempotent). */
  start(): void {
    if (this.started || this.isEnded) return;
    this.started = true;
    void this.run();
  }

  /** True once the job reached done/error/cancelled; beforeWrite is then a no-op. */
  get isEnded(): boolean {
    return this.status !== 'active';
  }

  get usesFleecing(): boolean {
    return this.fleece !== null;
  }

  /** Registers a callback run after the job ended and before `done` resolves. */
  onFinish(cb: (r: BackupResult) => Promise<void> | void): void {
    this.onEnd.push(cb);
  }

  progress(): BackupProgress {
    return {
      status: this.status,
      total: this.totalBytes,
      transferred: this.transferredBytes,
      zeroBytes: this.zeroBytesCount,
      startTime: this.startTime,
      endTime: this.endTime,
      error: this.errorObj ? describeError(this.errorObj) : null,
      cbwClusters: this.cbwClusters,
      maxCbwWaitMs: this.maxCbwWait,
      fleecing: this.fleece ? this.fleece.stats() : null,
      devices: this.order.map((d) => ({ id: d.id, name: d.name, size: d.size, total: d.total, transferred: d.transferred })),
    };
  }

  /** Cancels the job: status 'cancelled', devices detach, `done` resolves. */
  cancel(): void {
    this.end('cancelled', new BackupCancelledError('backup cancelled'));
  }

  /** Fails the job with `err` (e.g. the caller's archive writer failed). */
  fail(err: unknown): void {
    const e = err instanceof Error ? err : new Error(String(err));
    // The message stays short: progress.error renders the whole cause chain.
    this.end('error', e instanceof BackupJobError ? e : new BackupJobError('backup failed', { cause: e }));
  }

  // ───────────────────────────── guest write hook ─────────────────────────────

  /**
   * The copy-before-write hook: call BEFORE a guest WRITE / WRITE_ZEROES / TRIM
   * touches [offset, offset+length) of device `deviceId`. Resolves when the old
   * data of every touched cluster is safe (sink accepted it, or — with
   * fleecing — it is in the scratch store), immediately when nothing needs
   * copying or the job has ended.
   *
   * On a CBW failure or after cbwTimeoutMs:
   *   'break-snapshot'    the job fails and this resolves (the write proceeds);
   *   'break-guest-write' this rejects with a CbwWriteError (errno EIO); the
   *                       clusters stay protected and the job continues unless
   *                       the sink/source itself failed.
   */
  async beforeWrite(deviceId: number, offset: number, length: number): Promise<void> {
    if (this.isEnded || length <= 0) return;
    const dev = this.devs.get(deviceId);
    if (!dev) return;
    const first = Math.max(0, Math.floor(offset / CLUSTER_SIZE));
    const last = Math.min(dev.clusters - 1, Math.floor((offset + length - 1) / CLUSTER_SIZE));
    if (first > last) return;
    // Fast path: no touched cluster is NEED (I1); a locked cluster is still NEED.
    const firstNeed = dev.need.nextSet(first);
    if (firstNeed === -1 || firstNeed > last) return;

    const t0 = performance.now();
    // Settlement of our capture work, recorded synchronously so that after the
    // race we know whether the work itself failed (even if `ended` won).
    const st: { settled: boolean; failed: boolean; err: unknown } = { settled: false, failed: false, err: undefined };
    const work = this.ensureCaptured(dev, first, last).then(
      () => {
        st.settled = true;
      },
      (err: unknown) => {
        st.settled = true;
        st.failed = true;
        st.err = err;
      },
    );
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<'timeout'>((resolve) => {
      timer = setTimeout(() => resolve('timeout'), this.cbwTimeoutMs);
    });
    // Not a reaction on a promise that settles when the job ends: it lives as long as the job,
    // so every slow-path write would leave a closure on it (+~700 B per write
    // for the whole backup). A waiter removed when the race is over stays bounded.
    let onEnded!: () => void;
    const ended = new Promise<'ended'>((resolve) => (onEnded = () => resolve('ended')));
    this.endWaiters.add(onEnded);
    let winner: 'work' | 'timeout' | 'ended';
    try {
      winner = await Promise.race([work.then(() => 'work' as const), timeout, ended]);
    } finally {
      this.endWaiters.delete(onEnded);
      clearTimeout(timer);
    }
    const waited = performance.now() - t0;
    if (waited > this.maxCbwWait) this.maxCbwWait = waited;
    this.onCbwWait?.(waited, dev.name);

    let err: unknown;
    if (st.failed) err = st.err;
    else if (st.settled) return; // old data is safe
    else if (this.isEnded) return; // snapshot no longer needed: let the write through
    else if (winner === 'timeout') err = new CbwTimeoutError(`copy-before-write did not complete within ${this.cbwTimeoutMs} ms`);
    else return;
    if (this.onCbwError === 'break-snapshot') {
      // The guest wins: give up the snapshot, then the write proceeds.
      this.fail(new CbwError('copy-before-write failed, snapshot broken', { cause: err }));
      return;
    }
    // break-guest-write: the snapshot wins, the guest gets EIO.
    if (isHardError(err)) this.fail(err);
    if (err instanceof CbwWriteError) throw err;
    throw new CbwWriteError('copy-before-write failed', { cause: err });
  }

  /**
   * Captures every NEED cluster in [first, last] (our own locks) and waits for
   * captures by others (their locks) until none is NEED — the loop is
   * QEMU's wait_for_overlapping_requests + cow_request_begin.
   */
  private async ensureCaptured(dev: DevState, first: number, last: number): Promise<void> {
    // Work in windows of at most CBW_WINDOW clusters so a huge TRIM or
    // WRITE_ZEROES (up to the whole disk) never holds more than a window of
    // locks and buffers at once (bounded memory).
    let pos = first;
    for (;;) {
      if (this.isEnded) return;
      let c = dev.need.nextSet(pos);
      if (c === -1 || c > last) {
        // Final check over the whole range: a capture by someone else may have
        // failed and put a cluster back to NEED behind `pos`.
        const again = dev.need.nextSet(first);
        if (again === -1 || again > last) return;
        pos = again;
        continue;
      }
      const mine: number[] = [];
      const theirs: Promise<void>[] = [];
      for (; c !== -1 && c <= last && mine.length + theirs.length < CBW_WINDOW; c = dev.need.nextSet(c + 1)) {
        const lock = dev.locks.get(c);
        if (lock) theirs.push(lock.promise);
        else {
          // I2: test + lock without an await in between.
          dev.locks.set(c, deferred<void>());
          mine.push(c);
        }
      }
      pos = c === -1 ? last + 1 : c; // next unscanned cluster
      if (mine.length > 0) {
        const p = this.captureCbw(dev, mine);
        // A capture that outlives its caller (timeout) must still fail the job on a hard error.
        p.catch((err: unknown) => {
          if (isHardError(err)) this.fail(err);
        });
        await p;
      }
      if (theirs.length > 0) await Promise.all(theirs);
    }
  }

  private unlock(dev: DevState, c: number): void {
    const l = dev.locks.get(c);
    if (!l) return;
    dev.locks.delete(c);
    l.resolve();
    this.notifyChange();
  }

  /** CBW capture of locked NEED clusters `cs` (ascending). Unlocks all of them in every case. */
  private async captureCbw(dev: DevState, cs: number[]): Promise<void> {
    try {
      if (this.fleece) await this.captureToScratch(dev, cs);
      else await this.captureToSink(dev, cs);
    } finally {
      for (const c of cs) this.unlock(dev, c);
    }
  }

  /** Non-fleecing CBW: old data straight to the sink; the guest write waits for the sink (backpressure). */
  private async captureToSink(dev: DevState, cs: number[]): Promise<void> {
    for (const [start, count] of runs(cs)) {
      const buf = await this.readSource(dev, start, count);
      for (let i = 0; i < count; i++) {
        const c = start + i;
        const data = buf.subarray(i * CLUSTER_SIZE, Math.min(buf.length, (i + 1) * CLUSTER_SIZE));
        await this.deliver(dev, c, data, PRIO_CBW);
        dev.need.clear(c);
        this.cbwClusters++;
      }
    }
  }

  /** Fleecing CBW: old data to local scratch; the guest write waits for local I/O only. */
  private async captureToScratch(dev: DevState, cs: number[]): Promise<void> {
    const store = this.fleece!;
    for (const [start, count] of runs(cs)) {
      // Reserve all slots first so a full store fails before any I/O.
      const slots: number[] = [];
      try {
        for (let i = 0; i < count; i++) slots.push(store.allocate());
      } catch (err) {
        for (const s of slots) store.release(s);
        throw err;
      }
      let buf: Buffer;
      try {
        buf = await this.readSource(dev, start, count);
      } catch (err) {
        for (const s of slots) store.release(s);
        throw err;
      }
      if (this.isEnded) {
        for (const s of slots) store.release(s);
        return;
      }
      // The old data is in `buf`: the cluster is safe, the source may now be
      // overwritten. (Scratch is not crash-safe state — a crashed agent loses
      // the backup anyway — so the scratch write need not complete first.)
      for (let i = 0; i < count; i++) {
        dev.need.clear(start + i); // SCRATCH (write may still be in flight)
        dev.scratch.set(start + i, slots[i]!);
        this.cbwClusters++;
      }
      const written = Promise.all(
        slots.map((slot, i) => store.write(slot, buf.subarray(i * CLUSTER_SIZE, Math.min(buf.length, (i + 1) * CLUSTER_SIZE)))),
      ).then(() => {
        // Only now may the drainer read the slots back.
        for (let i = 0; i < count; i++) this.drainQueue.push({ dev, cluster: start + i, slot: slots[i]! });
        this.notifyChange();
      });
      // Write-behind, bounded: up to WRITE_BEHIND_CLUSTERS of scratch writes
      // may be in flight without the guest waiting for them (memory bound:
      // those buffers). Beyond that the guest write waits for its scratch
      // write, so a slow scratch disk still pushes back on the guest.
      this.scratchWritesInFlight += count;
      const settle = written.finally(() => {
        this.scratchWritesInFlight -= count;
      });
      if (this.scratchWritesInFlight > WRITE_BEHIND_CLUSTERS) {
        await settle; // a failure here is a hard error: the old data existed only in `buf`
      } else {
        settle.catch((err: unknown) => this.fail(new CbwError('writing to the fleecing store failed', { cause: err })));
      }
    }
  }

  private async readSource(dev: DevState, start: number, count: number): Promise<Buffer> {
    const off = start * CLUSTER_SIZE;
    const len = Math.min(count * CLUSTER_SIZE, dev.size - off);
    try {
      const buf = await dev.device.read(off, len);
      if (buf.length !== len) throw new CbwError(`short read of ${dev.name} at ${off}: ${buf.length} of ${len}`);
      return buf;
    } catch (err) {
      throw err instanceof CbwError ? err : new CbwError(`reading ${dev.name} at ${off} failed`, { cause: err });
    }
  }

  /** Hands one cluster to the sink (one sink call at a time, by priority) and marks it DONE. */
  private async deliver(dev: DevState, c: number, data: Buffer, prio: number): Promise<void> {
    const release = await this.sinkLock.acquire(prio);
    try {
      if (this.isEnded) return;
      if (dev.done.test(c)) throw new CbwError(`internal error: cluster ${c} of ${dev.name} delivered twice`);
      await this.sink.writeCluster(dev.id, c, data);
    } catch (err) {
      throw err instanceof CbwError ? err : new CbwError(`archive sink rejected cluster ${c} of ${dev.name}`, { cause: err });
    } finally {
      release();
    }
    if (this.isEnded) return;
    dev.done.set(c);
    this.pendingClusters--;
    dev.transferred += data.length;
    this.transferredBytes += data.length;
    if (isAllZero(data)) this.zeroBytesCount += data.length;
    this.notifyChange();
  }

  // ─────────────────────────── background pass ───────────────────────────

  private notifyChange(): void {
    const c = this.change;
    this.change = deferred<void>();
    c.resolve();
  }

  /** Next run of NEED, unlocked clusters (not locked yet), scanning devices in order. */
  private findBatch(): { dev: DevState; start: number; count: number } | null {
    for (const dev of this.order) {
      let c = dev.need.nextSet(dev.cursor);
      while (c !== -1 && dev.locks.has(c)) c = dev.need.nextSet(c + 1);
      if (c === -1) {
        dev.cursor = dev.clusters;
        continue;
      }
      let count = 1;
      while (count < this.batch && dev.need.test(c + count) && !dev.locks.has(c + count)) count++;
      return { dev, start: c, count };
    }
    return null;
  }

  private async run(): Promise<void> {
    try {
      while (!this.isEnded) {
        const item = this.drainQueue.shift();
        if (item) {
          await this.drainOne(item);
          continue;
        }
        let b = this.findBatch();
        if (!b) {
          // A failed CBW may have put a cluster behind the cursor back to NEED: rescan once.
          for (const d of this.order) d.cursor = 0;
          b = this.findBatch();
        }
        if (b) {
          if (this.bucket) {
            const wait = this.bucket.delayFor(b.count * CLUSTER_SIZE);
            if (wait > 0) {
              // Sleep for the rate limit, but wake on any change (new scratch to
              // drain must not wait for the background's rate limit), then re-plan.
              // (end() also signals a change.)
              let timer: NodeJS.Timeout | undefined;
              const slept = new Promise<void>((res) => {
                timer = setTimeout(res, Math.ceil(wait));
              });
              await Promise.race([slept, this.change.promise]);
              clearTimeout(timer);
              continue;
            }
            this.bucket.charge(b.count * CLUSTER_SIZE);
          }
          await this.copyBackground(b.dev, b.start, b.count);
          continue;
        }
        if (this.pendingClusters === 0) {
          this.end('done', null);
          break;
        }
        // Clusters remain but are being captured by guest writes (or went back to
        // NEED after a failed CBW): wait for a change, then rescan from the start.
        await this.change.promise;
      }
    } catch (err) {
      this.fail(err);
    }
  }

  private async drainOne(item: DrainItem): Promise<void> {
    const { dev, cluster, slot } = item;
    const len = Math.min(CLUSTER_SIZE, dev.size - cluster * CLUSTER_SIZE);
    const data = await this.fleece!.read(slot, len);
    this.bucket?.charge(len);
    await this.deliver(dev, cluster, data, PRIO_DRAIN);
    dev.scratch.delete(cluster);
    this.fleece!.release(slot); // only now may the slot be reused
  }

  private async copyBackground(dev: DevState, start: number, count: number): Promise<void> {
    // Lock synchronously (I2): findBatch just verified NEED && unlocked with no await since.
    for (let i = 0; i < count; i++) dev.locks.set(start + i, deferred<void>());
    let buf: Buffer;
    try {
      buf = await this.readSource(dev, start, count);
      // INMEM: the old data is in our buffer, guest writes may proceed (they wait only for the read).
      for (let i = 0; i < count; i++) dev.need.clear(start + i);
    } finally {
      for (let i = 0; i < count; i++) this.unlock(dev, start + i);
    }
    dev.cursor = start + count;
    for (let i = 0; i < count; i++) {
      if (this.isEnded) return;
      const data = buf.subarray(i * CLUSTER_SIZE, Math.min(buf.length, (i + 1) * CLUSTER_SIZE));
      await this.deliver(dev, start + i, data, PRIO_BACKGROUND);
      // Let scratch drain between clusters so the fleecing store frees up quickly.
      while (this.drainQueue.length > 0 && !this.isEnded) await this.drainOne(this.drainQueue.shift()!);
    }
  }

  // ─────────────────────────────── ending ───────────────────────────────

  private end(status: Exclude<JobState, 'active'>, err: Error | null): void {
    if (this.isEnded) return;
    this.status = status;
    this.errorObj = err;
    this.endTime = Date.now();
    this.detachSignal?.();
    for (const w of this.endWaiters) w();
    this.endWaiters.clear();
    this.notifyChange();
    // Wake everyone waiting on a lock: after the end, beforeWrite is a no-op.
    for (const d of this.order) for (const c of [...d.locks.keys()]) this.unlock(d, c);
    void this.finish();
  }

  private async finish(): Promise<void> {
    // Scratch I/O is local and short; sink calls may hang forever (that may be
    // why we failed), so they are not awaited.
    await this.fleece?.close().catch(() => undefined);
    const result: BackupResult = { ...this.progress(), errorObject: this.errorObj };
    for (const cb of this.onEnd) {
      try {
        await cb(result);
      } catch {
        // A finish hook must not keep `done` from resolving.
      }
    }
    this.doneD.resolve(result);
  }
}

/** Groups ascending cluster numbers into [start, count] runs of consecutive clusters (max 64 per run). */
function* runs(cs: number[]): Generator<[number, number]> {
  let i = 0;
  while (i < cs.length) {
    const start = cs[i]!;
    let n = 1;
    while (i + n < cs.length && cs[i + n] === start + n && n < 64) n++;
    yield [start, n];
    i += n;
  }
}
