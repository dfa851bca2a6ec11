/**
 * Local scratch store for fleecing (cf. QEMU's copy-before-write filter with
 * a fleecing target + snapshot-access, pve-backup-fleecing). CBW saves the
 * old data of a cluster here instead of waiting for the (slow, remote)
 * archive sink, so a guest write only waits for local disk I/O.
 *
 * One sparse file with fixed CLUSTER_SIZE slots. Slots are taken from a free
 * list and returned once the cluster has been handed to the sink, so the
 * file never grows beyond floor(maxBytes / CLUSTER_SIZE) slots. No free slot
 * = FleecingFullError, which the job treats as a CBW error (policy applies).
 */
import { open, mkdir, unlink, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { CLUSTER_SIZE } from './cluster.js';
import { UsageError, DeviceError } from '../errors.js';
import { FleecingFullError } from './errors.js';

export interface FleecingOptions {
  /** Directory for the scratch file (should be fast local storage). */
  dir: string;
  /** Hard limit on scratch bytes (rounded down to whole 64 KiB slots; at least one slot). */
  maxBytes: number;
}

export interface FleecingStats {
  slots: number;
  usedSlots: number;
  usedBytes: number;
  peakUsedBytes: number;
  /** Highest file offset ever written + slot size: the real on-disk footprint bound. */
  highWaterBytes: number;
  maxBytes: number;
  stored: number;
}

export class FleecingStore {
  readonly path: string;
  readonly maxSlots: number;
  private readonly free: number[] = [];
  /** Slots never handed out yet, allocated lazily so the file grows only as needed. */
  private nextFresh = 0;
  private used = 0;
  private peakUsed = 0;
  private stored = 0;
  private closed = false;
  /** Outstanding file I/O, awaited before the file is closed and unlinked. */
  private readonly pendingIo = new Set<Promise<unknown>>();

  private constructor(
    private readonly fh: FileHandle,
    path: string,
    readonly maxBytes: number,
  ) {
    this.path = path;
    this.maxSlots = Math.floor(maxBytes / CLUSTER_SIZE);
  }

  static async create(opts: FleecingOptions): Promise<FleecingStore> {
    if (!Number.isSafeInteger(opts.maxBytes) || opts.maxBytes < CLUSTER_SIZE) {
      throw new UsageError(`fleecing maxBytes must be at least ${CLUSTER_SIZE} (one cluster), got ${opts.maxBytes}`);
    }
    await mkdir(opts.dir, { recursive: true });
    const path = join(opts.dir, `cowstream-fleece-${process.pid}-${randomBytes(6).toString('hex')}.img`);
    let fh: FileHandle;
    try {
      // 'wx': never reuse or clobber someone else's file.
      fh = await open(path, 'wx+', 0o600);
    } catch (err) {
      throw new DeviceError(`cannot create fleecing file in ${opts.dir}`, { cause: err });
    }
    return new FleecingStore(fh, path, opts.maxBytes);
  }

  private track<T>(p: Promise<T>): Promise<T> {
    this.pendingIo.add(p);
    const done = (): void => {
      this.pendingIo.delete(p);
    };
    p.then(done, done);
    return p;
  }

  /** Slots currently holding data. */
  get usedSlots(): number {
    return this.used;
  }

  hasFreeSlot(): boolean {
    return this.free.length > 0 || this.nextFresh < this.maxSlots;
  }

  /** Allocates a slot synchronously (so callers can reserve before any await). */
  allocate(): number {
    if (this.closed) throw new FleecingFullError('fleecing store is closed');
    let slot: number;
    if (this.free.length > 0) slot = this.free.pop()!;
    else if (this.nextFresh < this.maxSlots) slot = this.nextFresh++;
    else {
      throw new FleecingFullError(
        `fleecing store full: ${this.used} of ${this.maxSlots} slots (${this.maxBytes} bytes) in use`,
      );
    }
    this.used++;
    if (this.used > this.peakUsed) this.peakUsed = this.used;
    return slot;
  }

  /** Writes one cluster's data into an allocated slot. */
  async write(slot: number, data: Uint8Array): Promise<void> {
    if (data.length > CLUSTER_SIZE) throw new RangeError('fleecing data larger than a cluster');
    if (slot < 0 || slot >= this.maxSlots) throw new RangeError(`bad fleecing slot ${slot}`);
    await this.track(this.writeAll(data, slot * CLUSTER_SIZE));
    this.stored++;
  }

  /**
   * pwrite until every byte is in: a full scratch file system returns a
   * short count first (ENOSPC only on the next call), and a slot left half
   * written would later be drained into the archive with stale bytes.
   */
  private async writeAll(data: Uint8Array, position: number): Promise<void> {
    let done = 0;
    try {
      while (done < data.length) {
        const { bytesWritten } = await this.fh.write(data, done, data.length - done, position + done);
        if (bytesWritten === 0) throw new Error('write made no progress');
        done += bytesWritten;
      }
    } catch (err) {
      throw new DeviceError(`writing the fleecing file ${this.path} failed after ${done} of ${data.length} bytes: ${(err as Error).message}`, { cause: err });
    }
  }

  async read(slot: number, length: number): Promise<Buffer> {
    if (slot < 0 || slot >= this.maxSlots) throw new RangeError(`bad fleecing slot ${slot}`);
    const buf = Buffer.allocUnsafe(length);
    const { bytesRead } = await this.track(this.fh.read(buf, 0, length, slot * CLUSTER_SIZE));
    if (bytesRead !== length) throw new DeviceError(`short read from fleecing file (${bytesRead} of ${length})`);
    return buf;
  }

  /** Returns a slot to the free list (after its cluster reached the sink). */
  release(slot: number): void {
    if (this.closed) return;
    this.free.push(slot);
    this.used--;
  }

  stats(): FleecingStats {
    return {
      slots: this.maxSlots,
      usedSlots: this.used,
      usedBytes: this.used * CLUSTER_SIZE,
      peakUsedBytes: this.peakUsed * CLUSTER_SIZE,
      highWaterBytes: this.nextFresh * CLUSTER_SIZE,
      maxBytes: this.maxBytes,
      stored: this.stored,
    };
  }

  /** Waits for outstanding scratch I/O, then closes and deletes the file. Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.allSettled([...this.pendingIo]);
    await this.fh.close().catch(() => undefined);
    await unlink(this.path).catch(() => undefined);
  }
}
