/**
 * The state of one backup run, shared by the manager (backup-manager.ts) and
 * the executors it hands a run to (qemu-backup.ts). Every field is written
 * only on the agent's event loop; `finished` settles once, when the run is
 * completely over.
 */
import { describeError } from '../errors.js';
import { ZstdPool } from '../codec/zstd-pool.js';
import type { ArchiveWriter } from '../format/writer.js';
import type { BackupSession } from '../cbw/index.js';
import type { BackupStatus, BackupTarget } from './backup-request.js';
import type { Logger } from './log.js';
import { openTarget, type OpenedTarget, type TargetContext } from './targets.js';

export interface Run {
  status: BackupStatus;
  session: BackupSession | null;
  target: OpenedTarget | null;
  /** Set while the archive is being written (also during finish(), after the job copied everything). */
  writer: ArchiveWriter | null;
  cancelRequested: boolean;
  /** Why the backup failed before its snapshot was taken (reported by POST /backups itself). */
  startError: unknown;
  /** Settles when the run is completely over (bitmaps completed, target closed/aborted). */
  finished: Promise<void>;
  /** QEMU pull-mode backups: cancels the NBD reads (src/qemu/pull-backup.ts). */
  abort: AbortController | null;
}

/** Opens the run's target and names it in the status (bucket and key of an S3 target). */
export async function openRunTarget(run: Run, target: BackupTarget, ctx: TargetContext): Promise<OpenedTarget> {
  run.target = await openTarget(target, ctx);
  if (run.target.key) {
    run.status.key = run.target.key;
    run.status.bucket = run.target.bucket!;
  }
  return run.target;
}

/** Ends a run that did not produce an archive: cancelled or failed, said in its status and the log. */
export function endFailedRun(run: Run, failure: unknown, cancelled: boolean, log: Logger): void {
  run.status.endTime = new Date().toISOString();
  run.status.status = cancelled ? 'cancelled' : 'error';
  run.status.error = cancelled ? 'backup cancelled' : describeError(failure);
  log.warn(cancelled ? 'backup cancelled' : 'backup failed', { uuid: run.status.uuid, error: run.status.error });
}

/**
 * The compressor of one live backup: every job in a worker, since an inline
 * one would hold the event loop that answers guest writes and NBD requests.
 */
export function liveBackupCompressor(level: number | undefined): ZstdPool {
  return new ZstdPool({ inlineBytes: 0, ...(level !== undefined ? { level } : {}) });
}
