/**
 * startBackup: the one correct way to begin a backup of CbwDevices with
 * persistent dirty bitmaps. At a single quiescent instant for ALL disks
 * (no guest write in flight, new ones held at the gate) it freezes each dirty
 * bitmap (successor starts), builds the job from the frozen bitmaps and
 * attaches it — so the snapshot, the incremental copy set and the successor
 * all refer to the same instant.
 *
 * The caller owns the archive: after `job.done` it finishes (or aborts) the
 * ArchiveWriter and then calls `session.complete(archiveOk)`, which
 * abdicates (success) or reclaims (failure) the bitmaps and persists them.
 * Success must mean the archive is durable — not merely that the job copied
 * everything — otherwise a failed upload would lose dirty bits.
 */
import type { ClusterSink } from './cluster.js';
import { UsageError } from '../errors.js';
import { BackupJob, type BackupJobOptions, type BackupResult } from './backup-job.js';
import { atQuiescentPoint, type CbwDevice } from './cbw-device.js';
import type { PersistentDirtyBitmap } from './dirty-bitmap.js';
import { BitmapInvalidError } from './errors.js';
import { FleecingStore } from './fleecing.js';

export interface BackupDisk {
  /** Archive device id. */
  id: number;
  name: string;
  device: CbwDevice;
  /** Its persistent dirty bitmap; required for incremental mode. */
  dirty?: PersistentDirtyBitmap;
}

export interface StartBackupOptions extends Omit<BackupJobOptions, 'devices' | 'sink'> {
  disks: BackupDisk[];
  mode: 'full' | 'incremental';
  sink: ClusterSink;
}

export interface BackupSession {
  readonly job: BackupJob;
  readonly mode: 'full' | 'incremental';
  /** Same as job.done. */
  readonly done: Promise<BackupResult>;
  /**
   * Ends the bitmap transaction: archiveOk=true abdicates (the successor
   * becomes the bitmap), false reclaims (frozen ∪ successor). Idempotent.
   */
  complete(archiveOk: boolean, info?: { uuid?: string | null }): Promise<void>;
}

/** Checks, before anything is frozen, whether an incremental is possible; returns the reason if not. */
export function incrementalBlocker(disks: BackupDisk[]): string | null {
  for (const d of disks) {
    if (!d.dirty) return `disk ${d.name} has no dirty bitmap`;
    if (!d.dirty.isValid) return `disk ${d.name}: ${d.dirty.invalidReason ?? 'bitmap invalid'}`;
  }
  return null;
}

export async function startBackup(opts: StartBackupOptions): Promise<BackupSession> {
  if (opts.disks.length === 0) throw new UsageError('no disks to back up');
  if (opts.mode === 'incremental') {
    const why = incrementalBlocker(opts.disks);
    if (why) throw new BitmapInvalidError(`incremental backup impossible (${why}); run a full backup`);
  }
  // Create the scratch file before the quiescent point: guest writes are held meanwhile.
  const store = opts.fleecing ? await FleecingStore.create(opts.fleecing) : undefined;
  const frozen: PersistentDirtyBitmap[] = [];
  let job: BackupJob;
  try {
    job = await atQuiescentPoint(
      opts.disks.map((d) => d.device),
      () => {
        const devices = opts.disks.map((d) => {
          const copyBitmap = d.dirty ? d.dirty.beginBackup(opts.mode) : undefined;
          if (d.dirty) frozen.push(d.dirty);
          return { id: d.id, name: d.name, device: d.device.inner, copyBitmap };
        });
        const j = new BackupJob({ ...opts, devices }, store);
        for (const d of opts.disks) d.device.attach(j);
        return j;
      },
    );
  } catch (err) {
    for (const bm of frozen) await bm.completeBackup(false).catch(() => undefined);
    await store?.close();
    throw err;
  }
  job.start();
  let completed: Promise<void> | null = null;
  return {
    job,
    mode: opts.mode,
    done: job.done,
    complete(archiveOk: boolean, info?: { uuid?: string | null }): Promise<void> {
      if (!completed) {
        completed = (async () => {
          if (!job.isEnded) job.cancel();
          await job.done;
          for (const bm of frozen) await bm.completeBackup(archiveOk, info);
        })();
      }
      return completed;
    },
  };
}
