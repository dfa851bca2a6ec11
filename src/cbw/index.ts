/** Public API of the copy-before-write engine (see docs/cbw.md). */
export { Bitmap, clusterCount, MAX_BITMAP_BITS } from './bitmap.js';
export {
  BackupJob,
  type BackupJobDevice,
  type BackupJobOptions,
  type BackupProgress,
  type BackupDeviceProgress,
  type BackupResult,
  type JobState,
  type CbwErrorPolicy,
} from './backup-job.js';
export { CbwDevice, atQuiescentPoint, type CbwDeviceOptions, type DirtyTracker } from './cbw-device.js';
export {
  DirtyBitmapStore,
  PersistentDirtyBitmap,
  fingerprintDisk,
  fingerprintOf,
  replacedImage,
  type DirtyBitmapStatus,
  type DiskFingerprint,
  type DiskIdentity,
} from './dirty-bitmap.js';
export { FleecingStore, type FleecingOptions, type FleecingStats } from './fleecing.js';
export { startBackup, incrementalBlocker, type BackupDisk, type BackupSession, type StartBackupOptions } from './session.js';
export { TokenBucket } from './rate-limit.js';
export * from './errors.js';
