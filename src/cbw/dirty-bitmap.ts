/**
 * Persistent per-disk dirty bitmaps for incremental backups, with QEMU's
 * successor/reclaim rule (qemu-incremental-dirty-bitmaps: create_successor,
 * abdicate on success, reclaim on failure).
 *
 * File `<stateDir>/bitmaps/<disk>.bitmap`:
 *   "CSDIRTY1" | u32 header length | header JSON | serialized Bitmap | sha256 of all before
 * The header holds the disk identity (path, size, fingerprint of the disk
 * file at the last clean shutdown: size, mtime, inode, device), validity and
 * `state`: 'running' while an agent has the bitmap open, 'clean' after a
 * clean shutdown. Writes are atomic and durable (src/device/durable.ts).
 *
 * On open the bitmap is INVALID (next backup must be full; reason kept) when:
 *   - no full backup has succeeded yet (tracking starts with the first full),
 *   - the file says 'running': the agent stopped uncleanly (SIGKILL, crash),
 *     so writes may have happened that no bit records,
 *   - the disk's size / mtime / inode differ from the clean-shutdown
 *     fingerprint: someone changed the disk behind our back,
 *   - the disk path changed, or the file is corrupt.
 * Right after open the file is rewritten with state 'running', so a crash
 * from then on is detectable.
 */
import { createHash } from 'node:crypto';
import { mkdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { CLUSTER_SIZE } from './cluster.js';
import { writeFileAtomic } from '../device/durable.js';
import { describeError, UsageError } from '../errors.js';
import { Bitmap, clusterCount } from './bitmap.js';
import { BackupBusyError, BitmapFormatError, BitmapInvalidError } from './errors.js';
import type { DirtyTracker } from './cbw-device.js';

const FILE_MAGIC = Buffer.from('CSDIRTY1', 'ascii');
/** Header JSON is small; a larger length field means corruption (no allocation from it). */
const MAX_HEADER = 64 * 1024;

export interface DiskFingerprint {
  size: number;
  mtimeMs: number;
  ino: number;
  dev: number;
}

export interface DiskIdentity {
  /** Disk name (agent config), also the bitmap file name. */
  name: string;
  /** Path of the image file or block device. */
  path: string;
  /** Device size in bytes (for block devices stat().size is 0, so it is passed in). */
  size: number;
}

interface BitmapHeader {
  version: 1;
  name: string;
  path: string;
  size: number;
  clusterSize: number;
  state: 'running' | 'clean';
  valid: boolean;
  invalidReason: string | null;
  fingerprint: DiskFingerprint | null;
  trackingSince: number | null;
  lastBackup: { uuid: string | null; mode: 'full' | 'incremental'; time: number } | null;
  savedAt: number;
}

export interface DirtyBitmapStatus {
  name: string;
  path: string;
  size: number;
  valid: boolean;
  /** Why the next backup must be full (null when valid). */
  invalidReason: string | null;
  dirtyClusters: number;
  dirtyBytes: number;
  /** A backup holds a frozen bitmap right now. */
  frozen: boolean;
  trackingSince: string | null;
  lastBackup: { uuid: string | null; mode: 'full' | 'incremental'; time: string } | null;
}

/** Reads the disk's fingerprint; `size` is the device size we were given (block devices stat as 0). */
export async function fingerprintDisk(path: string, size: number): Promise<DiskFingerprint> {
  const st = await stat(path);
  return { size: st.isFile() ? st.size : size, mtimeMs: st.mtimeMs, ino: st.ino, dev: st.dev };
}

/** The fingerprint of an open descriptor's fstat (see fingerprintDisk). */
export function fingerprintOf(st: { isFile(): boolean; size: number; mtimeMs: number; ino: number; dev: number }, size: number): DiskFingerprint {
  return { size: st.isFile() ? st.size : size, mtimeMs: st.mtimeMs, ino: st.ino, dev: st.dev };
}

/**
 * Why the file at `path` is not the one the agent has open (compared by
 * device and inode), or null when it is. A file renamed over the path (or a
 * path gone) means writes through our descriptor no longer reach what the
 * next start will open, so its bitmap says nothing about that disk.
 */
export async function replacedImage(path: string, open: DiskFingerprint): Promise<string | null> {
  let st;
  try {
    st = await stat(path);
  } catch (err) {
    return `disk image ${path} disappeared while the agent had it open (${describeError(err)})`;
  }
  if (st.ino === open.ino && st.dev === open.dev) return null;
  return `disk image ${path} was replaced while the agent had it open (open file: device ${open.dev} inode ${open.ino}; path now: device ${st.dev} inode ${st.ino})`;
}

function describeFingerprintChange(a: DiskFingerprint, b: DiskFingerprint): string | null {
  if (a.size !== b.size) return `disk file changed (size ${a.size} → ${b.size})`;
  if (a.ino !== b.ino || a.dev !== b.dev) return `disk file changed (replaced: inode ${a.ino} → ${b.ino})`;
  if (a.mtimeMs !== b.mtimeMs) {
    return `disk file changed (modified while the agent was stopped: mtime ${new Date(a.mtimeMs).toISOString()} → ${new Date(b.mtimeMs).toISOString()})`;
  }
  return null;
}

/** Bitmap file name for a disk name: safe characters kept, plus a short hash so names never collide. */
function fileNameFor(name: string): string {
  const safe = name.replace(/[^A-Za-z0-9._-]/g, '_').slice(0, 64);
  const h = createHash('sha256').update(name).digest('hex').slice(0, 8);
  return `${safe}-${h}.bitmap`;
}

function encodeFile(header: BitmapHeader, bits: Bitmap): Buffer {
  const h = Buffer.from(JSON.stringify(header), 'utf8');
  const len = Buffer.alloc(4);
  len.writeUInt32LE(h.length, 0);
  const body = Buffer.concat([FILE_MAGIC, len, h, bits.serialize()]);
  return Buffer.concat([body, createHash('sha256').update(body).digest()]);
}

function decodeFile(buf: Buffer): { header: BitmapHeader; bits: Bitmap } {
  if (buf.length < FILE_MAGIC.length + 4 + 32) throw new BitmapFormatError('bitmap file too short');
  if (!buf.subarray(0, FILE_MAGIC.length).equals(FILE_MAGIC)) throw new BitmapFormatError('not a cowstream dirty bitmap file');
  const body = buf.subarray(0, buf.length - 32);
  if (!createHash('sha256').update(body).digest().equals(buf.subarray(buf.length - 32))) {
    throw new BitmapFormatError('bitmap file checksum mismatch');
  }
  const hlen = buf.readUInt32LE(FILE_MAGIC.length);
  const hstart = FILE_MAGIC.length + 4;
  if (hlen > MAX_HEADER || hstart + hlen > body.length) throw new BitmapFormatError(`bad bitmap header length ${hlen}`);
  let header: BitmapHeader;
  try {
    header = JSON.parse(body.subarray(hstart, hstart + hlen).toString('utf8')) as BitmapHeader;
  } catch (err) {
    throw new BitmapFormatError('bitmap header is not JSON', { cause: err });
  }
  if (header?.version !== 1 || typeof header.size !== 'number' || typeof header.path !== 'string') {
    throw new BitmapFormatError('bitmap header has missing fields');
  }
  const bits = Bitmap.deserialize(body.subarray(hstart + hlen));
  return { header, bits };
}

export class PersistentDirtyBitmap implements DirtyTracker {
  readonly name: string;
  readonly path: string;
  readonly size: number;
  readonly clusters: number;
  readonly file: string;
  /** Live bitmap: receives marks when no backup runs. */
  private bits: Bitmap;
  /** Set during a backup: the frozen bitmap (defines what an incremental copies). */
  private frozen: Bitmap | null = null;
  /** Set during a backup: records writes since the backup's snapshot instant. */
  private successor: Bitmap | null = null;
  private frozenMode: 'full' | 'incremental' | null = null;
  private valid: boolean;
  private reason: string | null;
  private trackingSince: number | null;
  private lastBackup: BitmapHeader['lastBackup'];
  private saving: Promise<void> = Promise.resolve();
  private closed = false;

  /** @internal use DirtyBitmapStore.open */
  constructor(
    disk: DiskIdentity,
    file: string,
    init: { bits: Bitmap; valid: boolean; reason: string | null; trackingSince: number | null; lastBackup: BitmapHeader['lastBackup'] },
  ) {
    this.name = disk.name;
    this.path = disk.path;
    this.size = disk.size;
    this.clusters = clusterCount(disk.size, CLUSTER_SIZE);
    this.file = file;
    this.bits = init.bits;
    this.valid = init.valid;
    this.reason = init.valid ? null : init.reason;
    this.trackingSince = init.trackingSince;
    this.lastBackup = init.lastBackup;
  }

  get isValid(): boolean {
    return this.valid;
  }

  get invalidReason(): string | null {
    return this.reason;
  }

  get isFrozen(): boolean {
    return this.frozen !== null;
  }

  /** Marks the clusters a guest write touches (the successor while a backup runs). */
  markRange(offset: number, length: number): void {
    if (length <= 0) return;
    const target = this.successor ?? this.bits;
    target.setByteRange(offset, Math.min(length, this.size - offset), CLUSTER_SIZE);
  }

  /** The current dirty set (frozen ∪ successor during a backup). A copy. */
  snapshot(): Bitmap {
    const b = (this.frozen ?? this.bits).clone();
    if (this.successor) b.or(this.successor);
    return b;
  }

  status(): DirtyBitmapStatus {
    const dirty = this.snapshot().count();
    return {
      name: this.name,
      path: this.path,
      size: this.size,
      valid: this.valid,
      invalidReason: this.reason,
      dirtyClusters: dirty,
      dirtyBytes: Math.min(dirty * CLUSTER_SIZE, this.size),
      frozen: this.frozen !== null,
      trackingSince: this.trackingSince === null ? null : new Date(this.trackingSince).toISOString(),
      lastBackup: this.lastBackup ? { ...this.lastBackup, time: new Date(this.lastBackup.time).toISOString() } : null,
    };
  }

  /** Marks the bitmap invalid (e.g. the disk was written outside the CBW path). */
  invalidate(reason: string): void {
    this.valid = false;
    this.reason = reason;
  }

  /**
   * Freezes the bitmap at the backup's snapshot instant (call while the
   * devices are paused) and starts a successor. Returns the clusters to copy:
   * the frozen bitmap for 'incremental', undefined (= everything) for 'full'.
   * Throws BitmapInvalidError for an incremental on an invalid bitmap.
   */
  beginBackup(mode: 'full' | 'incremental'): Bitmap | undefined {
    if (this.frozen) throw new BackupBusyError(`a backup of ${this.name} is already running`);
    if (mode === 'incremental' && !this.valid) {
      throw new BitmapInvalidError(`incremental backup of ${this.name} impossible: ${this.reason ?? 'bitmap invalid'}; run a full backup`);
    }
    this.frozen = this.bits;
    this.successor = new Bitmap(this.clusters);
    this.frozenMode = mode;
    return mode === 'incremental' ? this.frozen.clone() : undefined;
  }

  /**
   * Ends the backup begun by beginBackup and persists.
   *   success: the frozen bitmap is dropped (abdicate); the successor — writes
   *            since the snapshot instant — becomes the bitmap. A full backup
   *            makes the bitmap valid (tracking starts here).
   *   failure/cancel: the frozen bitmap is merged into the successor
   *            (reclaim), so no dirty bit is lost; validity is unchanged.
   * Success must mean the ARCHIVE is complete (writer finished), not just the job.
   */
  async completeBackup(success: boolean, info?: { uuid?: string | null }): Promise<void> {
    if (!this.frozen || !this.successor) throw new UsageError(`no backup of ${this.name} to complete`);
    if (success) {
      this.bits = this.successor;
      if (this.frozenMode === 'full') {
        this.valid = true;
        this.reason = null;
        this.trackingSince ??= Date.now();
      }
      this.lastBackup = { uuid: info?.uuid ?? null, mode: this.frozenMode!, time: Date.now() };
    } else {
      const merged = this.successor;
      merged.or(this.frozen);
      this.bits = merged;
    }
    this.frozen = null;
    this.successor = null;
    this.frozenMode = null;
    await this.persist('running');
  }

  private header(state: 'running' | 'clean', fingerprint: DiskFingerprint | null): BitmapHeader {
    return {
      version: 1,
      name: this.name,
      path: this.path,
      size: this.size,
      clusterSize: CLUSTER_SIZE,
      state,
      valid: this.valid,
      invalidReason: this.reason,
      fingerprint,
      trackingSince: this.trackingSince,
      lastBackup: this.lastBackup,
      savedAt: Date.now(),
    };
  }

  /** Persists the current state (serialized with other saves of this bitmap). */
  async persist(state: 'running' | 'clean' = 'running', fingerprint: DiskFingerprint | null = null): Promise<void> {
    const data = encodeFile(this.header(state, fingerprint), this.snapshot());
    const next = this.saving.then(() => writeFileAtomic(this.file, data));
    this.saving = next.catch(() => undefined);
    await next;
  }

  /**
   * Clean shutdown: call after the disk was flushed (no more writes), while
   * it is still open. Records the disk fingerprint and state 'clean'. A
   * backup still frozen is reclaimed first (treated as failed).
   *
   * `open` is the fingerprint of the descriptor the agent wrote through. It
   * is what gets recorded; when the path now names another file (replaced
   * while we ran) the bitmap is invalidated instead and the reason returned.
   */
  async shutdown(open?: DiskFingerprint): Promise<string | null> {
    if (this.closed) return null;
    if (this.frozen) await this.completeBackup(false);
    let fp: DiskFingerprint | null = null;
    let replaced: string | null = null;
    if (open) {
      replaced = await replacedImage(this.path, open);
      if (replaced) this.invalidate(replaced);
      fp = replaced ? null : open;
    } else {
      fp = await fingerprintDisk(this.path, this.size).catch(() => null); // disk gone: the next open notices
    }
    await this.persist('clean', fp);
    this.closed = true;
    return replaced;
  }
}

/** Opens (and creates) the dirty bitmaps of the disks of one agent's state dir. */
export class DirtyBitmapStore {
  readonly dir: string;

  constructor(stateDir: string) {
    this.dir = join(stateDir, 'bitmaps');
  }

  fileFor(name: string): string {
    return join(this.dir, fileNameFor(name));
  }

  /**
   * Loads the bitmap of `disk`, decides validity (see the file comment) and
   * immediately persists it as 'running' so a crash from now on is detected.
   */
  async open(disk: DiskIdentity): Promise<PersistentDirtyBitmap> {
    await mkdir(this.dir, { recursive: true });
    const file = this.fileFor(disk.name);
    const clusters = clusterCount(disk.size, CLUSTER_SIZE);
    let raw: Buffer | null = null;
    try {
      raw = await readFile(file);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
    let init: ConstructorParameters<typeof PersistentDirtyBitmap>[2] = {
      bits: new Bitmap(clusters),
      valid: false,
      reason: 'no full backup yet',
      trackingSince: null,
      lastBackup: null,
    };
    if (raw) {
      try {
        const { header, bits } = decodeFile(raw);
        init = { ...init, trackingSince: header.trackingSince, lastBackup: header.lastBackup };
        const reason = await this.checkIdentity(disk, header, bits, clusters);
        if (reason) init = { ...init, valid: false, reason, bits: new Bitmap(clusters) };
        else init = { ...init, valid: true, reason: null, bits };
      } catch (err) {
        init = { ...init, valid: false, reason: `bitmap file unreadable (${describeError(err)})` };
      }
    }
    const bm = new PersistentDirtyBitmap(disk, file, init);
    await bm.persist('running');
    return bm;
  }

  private async checkIdentity(disk: DiskIdentity, h: BitmapHeader, bits: Bitmap, clusters: number): Promise<string | null> {
    if (!h.valid) return h.invalidReason ?? 'bitmap invalid';
    if (h.state !== 'clean') return 'agent stopped uncleanly (no clean shutdown recorded)';
    if (h.path !== disk.path) return `disk path changed (${h.path} → ${disk.path})`;
    if (h.size !== disk.size) return `disk file changed (size ${h.size} → ${disk.size})`;
    if (h.clusterSize !== CLUSTER_SIZE || bits.size !== clusters) return 'bitmap geometry does not match the disk';
    if (!h.fingerprint) return 'no disk fingerprint recorded at shutdown';
    let now: DiskFingerprint;
    try {
      now = await fingerprintDisk(disk.path, disk.size);
    } catch (err) {
      return `disk not accessible (${describeError(err)})`;
    }
    return describeFingerprintChange(h.fingerprint, now);
  }
}
