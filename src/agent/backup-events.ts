/**
 * What the backup manager tells an observer (the agent's metrics) about
 * runs: a narrow interface so the manager knows nothing of Prometheus, and
 * an observer that throws cannot fail a backup (the manager logs and goes on).
 */
import type { BackupStatus } from './backup-request.js';

/** A run that is completely over (bitmaps completed, target closed). */
export interface EndedRun {
  /** Its final status (status done | error | cancelled). */
  status: BackupStatus;
  /** Bytes read per disk, when the run knows them per disk (file disks); empty otherwise (QEMU pull mode). */
  devices: Array<{ name: string; transferred: number }>;
}

export interface BackupObserver {
  runEnded?(run: EndedRun): void;
  /** A guest write on `disk` waited `ms` for copy-before-write (file disks). */
  cbwWait?(disk: string, ms: number): void;
}
