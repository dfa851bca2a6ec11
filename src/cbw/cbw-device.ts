/**
 * CbwDevice: the BlockDevice the NBD server exports. It forwards to the real
 * device and, on every write-like request (WRITE, WRITE_ZEROES, TRIM):
 *   1. waits at the pause gate (a backup is being started: see pause());
 *   2. calls the attached job's beforeWrite (copy-before-write), which may
 *      reject with a CbwWriteError (errno EIO) under 'break-guest-write' —
 *      then nothing is written and nothing is marked;
 *   3. marks the touched clusters in the dirty tracker (the successor while a
 *      backup runs) BEFORE the data reaches the device. A bit set for a write
 *      that then fails only costs an extra copy; a bit set after the write
 *      could be lost if the bitmap were persisted in between. (A crash loses
 *      the in-memory bits anyway, which is why an unclean stop invalidates
 *      the persisted bitmap.)
 *   4. writes to the real device.
 *
 * Reads go straight through: the guest always sees live data.
 */
import type { BlockDevice } from '../device/types.js';
import { OutOfRangeError } from '../errors.js';
import type { BackupJob } from './backup-job.js';
import { deferred, type Deferred } from './sync.js';

/** What CbwDevice needs from a dirty bitmap (PersistentDirtyBitmap implements it). */
export interface DirtyTracker {
  markRange(offset: number, length: number): void;
}

export interface CbwDeviceOptions {
  /** Device id used with the attached job (the archive device id). */
  deviceId: number;
  /** Dirty bitmap to mark on every write (optional). */
  dirty?: DirtyTracker;
}

export class CbwDevice implements BlockDevice {
  readonly deviceId: number;
  private job: BackupJob | null = null;
  private dirty: DirtyTracker | null;
  private inflight = 0;
  private idle: Deferred<void> | null = null;
  private gate: Deferred<void> | null = null;
  private pauseDepth = 0;

  constructor(
    readonly inner: BlockDevice,
    opts: CbwDeviceOptions,
  ) {
    this.deviceId = opts.deviceId;
    this.dirty = opts.dirty ?? null;
  }

  get size(): number {
    return this.inner.size;
  }

  get readOnly(): boolean {
    return this.inner.readOnly;
  }

  /** The attached job, if it is still running. */
  get attachedJob(): BackupJob | null {
    if (this.job?.isEnded) this.job = null; // detach lazily once the job ended
    return this.job;
  }

  /** Number of write-like requests currently between the gate and the device. */
  get writesInFlight(): number {
    return this.inflight;
  }

  setDirtyTracker(dirty: DirtyTracker | null): void {
    this.dirty = dirty;
  }

  /**
   * Attaches a job. Call while paused (see pause()) so that no write that
   * started before the snapshot instant can land after it (invariant I4).
   */
  attach(job: BackupJob): void {
    this.job = job;
    job.onFinish(() => this.detach(job));
  }

  detach(job?: BackupJob): void {
    if (!job || this.job === job) this.job = null;
  }

  /**
   * Blocks new write-like requests and resolves once the ones in flight have
   * completed: the device is then quiescent and a snapshot instant can be
   * taken (attach a job, freeze the dirty bitmap). Pair with resume(). Reads
   * are not blocked. Nested pauses are counted.
   */
  async pause(): Promise<void> {
    this.pauseDepth++;
    if (!this.gate) this.gate = deferred<void>();
    if (this.inflight > 0) {
      if (!this.idle) this.idle = deferred<void>();
      await this.idle.promise;
    }
  }

  resume(): void {
    if (this.pauseDepth === 0) return;
    this.pauseDepth--;
    if (this.pauseDepth === 0 && this.gate) {
      const g = this.gate;
      this.gate = null;
      g.resolve();
    }
  }

  private checkRange(offset: number, length: number): void {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this.size) {
      throw new OutOfRangeError(`request [${offset}, +${length}) outside device of ${this.size} bytes`);
    }
  }

  private async writeLike(offset: number, length: number, op: () => Promise<void>): Promise<void> {
    this.checkRange(offset, length);
    while (this.gate) await this.gate.promise;
    this.inflight++;
    try {
      const job = this.attachedJob;
      if (job) await job.beforeWrite(this.deviceId, offset, length);
      this.dirty?.markRange(offset, length);
      await op();
    } finally {
      this.inflight--;
      if (this.inflight === 0 && this.idle) {
        const i = this.idle;
        this.idle = null;
        i.resolve();
      }
    }
  }

  read(offset: number, length: number): Promise<Buffer> {
    return this.inner.read(offset, length);
  }

  write(offset: number, data: Uint8Array, opts?: { fua?: boolean }): Promise<void> {
    return this.writeLike(offset, data.length, () => this.inner.write(offset, data, opts));
  }

  writeZeroes(offset: number, length: number, opts?: { fua?: boolean; mayTrim?: boolean }): Promise<void> {
    return this.writeLike(offset, length, () => this.inner.writeZeroes(offset, length, opts));
  }

  trim(offset: number, length: number): Promise<void> {
    return this.writeLike(offset, length, () => this.inner.trim(offset, length));
  }

  flush(): Promise<void> {
    return this.inner.flush();
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}

/** Pauses every device (see CbwDevice.pause), runs `fn` at the common quiescent instant, resumes. */
export async function atQuiescentPoint<T>(devices: CbwDevice[], fn: () => T | Promise<T>): Promise<T> {
  const paused: CbwDevice[] = [];
  try {
    // Pause all first (gates go up synchronously), then wait for in-flight writes.
    const waits = devices.map((d) => {
      paused.push(d);
      return d.pause();
    });
    await Promise.all(waits);
    return await fn();
  } finally {
    for (const d of paused) d.resume();
  }
}
