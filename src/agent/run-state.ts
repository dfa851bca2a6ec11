/**
 * The state of one backup run, shared by the manager (backup-manager.ts) and
 * the executors it hands a run to (qemu-backup.ts). Every field is written
 * only on the agent's event loop; `finished` settles once, when the run is
 * completely over.
 */
import type { ArchiveWriter } from '../format/writer.js';
import type { BackupSession } from '../cbw/index.js';
import type { BackupStatus } from './backup-request.js';
import type { OpenedTarget } from './targets.js';

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
