/**
 * Archive-format specific errors. Reader-side problems use the classes in
 * src/errors.ts (FormatError, ChecksumError, TruncatedArchiveError,
 * EncryptionKeyError); these add writer-side misuse.
 */
import { ChecksumError, FormatError } from '../errors.js';

/** The archive writer was used wrongly (bad device, length, state). */
export class ArchiveWriteError extends FormatError {
  override readonly code: string = 'ARCHIVE_WRITE';
}

/** The same (device, cluster) was handed to the writer twice. CBW must copy each cluster once. */
export class DuplicateClusterError extends ArchiveWriteError {
  override readonly code: string = 'DUPLICATE_CLUSTER';
}

/** A full archive was finished without every cluster of every device. */
export class IncompleteArchiveError extends ArchiveWriteError {
  override readonly code: string = 'INCOMPLETE_ARCHIVE';
}

/**
 * A header tag, index tag, config or extent GCM tag did not verify under the
 * key: the archive was altered by someone without the key (or damaged).
 */
export class AuthenticationError extends ChecksumError {
  override readonly code: string = 'AUTH';
}

/** The trailer holds more index entries than the reader is configured to load. */
export class IndexTooLargeError extends FormatError {
  override readonly code: string = 'INDEX_TOO_LARGE';
}
