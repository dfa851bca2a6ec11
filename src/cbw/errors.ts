/**
 * Errors of the copy-before-write engine. All extend the closest class of
 * src/errors.ts so callers can branch on `code` without importing this file.
 */
import { BackupCancelledError, BackupError, CbwError, ChecksumError, ConflictError, FormatError } from '../errors.js';

/** errno a CBW failure maps to when it breaks a guest write (NBD replies NBD_EIO). */
export const EIO = 5;

/**
 * A copy-before-write failure that is reported to the guest write
 * (onCbwError = 'break-guest-write'). `errno` is what the NBD server
 * must put in its reply (NBD_EIO = 5, same value as POSIX EIO).
 */
export class CbwWriteError extends CbwError {
  override readonly code: string = 'CBW_WRITE';
  readonly errno: number = EIO;
  readonly errnoName: 'EIO' = 'EIO';
}

/** beforeWrite waited longer than cbwTimeoutMs for the old data to be saved. */
export class CbwTimeoutError extends CbwWriteError {
  override readonly code: string = 'CBW_TIMEOUT';
}

/** The fleecing scratch store has no free slot left (maxBytes reached). */
export class FleecingFullError extends CbwWriteError {
  override readonly code: string = 'FLEECING_FULL';
}

/** A backup job failed; `cause` carries the underlying error. */
export class BackupJobError extends BackupError {
  override readonly code: string = 'BACKUP_FAILED';
}

export { BackupCancelledError };

/** A persisted bitmap file is not a bitmap or fails its checksum. */
export class BitmapFormatError extends FormatError {
  override readonly code: string = 'BITMAP_FORMAT';
}

export class BitmapChecksumError extends ChecksumError {
  override readonly code: string = 'BITMAP_CHECKSUM';
}

/** An incremental backup was requested but the dirty bitmap is not usable. */
export class BitmapInvalidError extends ConflictError {
  override readonly code: string = 'BITMAP_INVALID';
}

/** A backup is already running on this bitmap/device. */
export class BackupBusyError extends ConflictError {
  override readonly code: string = 'BACKUP_BUSY';
}
