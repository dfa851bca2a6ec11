/**
 * The one error hierarchy of cowstream. Every error a user or caller can see
 * is a CowstreamError subclass with a stable `code`, a clear message and the
 * underlying `cause` when there is one. Modules add their own subclasses in
 * their own `errors.ts`, always extending one of these.
 */
export interface CowstreamErrorOptions {
  cause?: unknown;
}

export class CowstreamError extends Error {
  /** Stable machine-readable code, e.g. for `--json` output and HTTP bodies. */
  readonly code: string = 'COWSTREAM_ERROR';

  constructor(message: string, options?: CowstreamErrorOptions) {
    super(message, options?.cause !== undefined ? { cause: options.cause } : undefined);
    this.name = new.target.name;
  }

  toJSON(): { name: string; code: string; message: string } {
    return { name: this.name, code: this.code, message: this.message };
  }
}

/** Bad user input: CLI flags, config files, API bodies. */
export class UsageError extends CowstreamError {
  override readonly code: string = 'USAGE';
}

/** An agent or tool configuration file that does not validate. */
export class ConfigError extends UsageError {
  override readonly code: string = 'CONFIG';
}

/** A malformed, truncated or otherwise unreadable archive. */
export class FormatError extends CowstreamError {
  override readonly code: string = 'FORMAT';
}

/** A stored or plaintext checksum did not match. */
export class ChecksumError extends FormatError {
  override readonly code: string = 'CHECKSUM';
}

/** The archive ends before its footer: an incomplete or cut archive. */
export class TruncatedArchiveError extends FormatError {
  override readonly code: string = 'TRUNCATED';
}

/** Missing or wrong encryption key. */
export class EncryptionKeyError extends CowstreamError {
  override readonly code: string = 'KEY';
}

/** Compression / decompression failures (worker pool, codec). */
export class CodecError extends CowstreamError {
  override readonly code: string = 'CODEC';
}

/** Block device I/O failures. */
export class DeviceError extends CowstreamError {
  override readonly code: string = 'DEVICE';
}

/** A request outside the device, or of a bad length. */
export class OutOfRangeError extends DeviceError {
  override readonly code: string = 'RANGE';
}

/** NBD protocol violations (by a peer or by us). */
export class NbdProtocolError extends CowstreamError {
  override readonly code: string = 'NBD_PROTOCOL';
}

/** Copy-before-write failed or timed out. */
export class CbwError extends CowstreamError {
  override readonly code: string = 'CBW';
}

/** A backup job failed or was cancelled. */
export class BackupError extends CowstreamError {
  override readonly code: string = 'BACKUP';
}

export class BackupCancelledError extends BackupError {
  override readonly code: string = 'CANCELLED';
}

/** Object store (S3) failures. */
export class StoreError extends CowstreamError {
  override readonly code: string = 'STORE';
}

/** A named thing (archive, restore job, disk, route) does not exist. */
export class NotFoundError extends CowstreamError {
  override readonly code: string = 'NOT_FOUND';
}

/** A lost race or a state that forbids the request (HTTP 409). */
export class ConflictError extends CowstreamError {
  override readonly code: string = 'CONFLICT';
}

/** A backup was asked for while another one is starting or running (HTTP 409). */
export class BackupRunningError extends ConflictError {
  override readonly code: string = 'BACKUP_RUNNING';
}

/** Restore failures (plan, reads, writes, verification). */
export class RestoreError extends CowstreamError {
  override readonly code: string = 'RESTORE';
}

/** Catalogue failures. */
export class CatalogError extends CowstreamError {
  override readonly code: string = 'CATALOG';
}

/** QEMU QMP errors; `desc` carries QEMU's own description. */
export class QmpError extends CowstreamError {
  override readonly code: string = 'QMP';
}

/** An operation was refused for security reasons (e.g. restore target outside allowedDirs). */
export class ForbiddenError extends CowstreamError {
  override readonly code: string = 'FORBIDDEN';
}

/** Render any thrown value as a one-line message, including the cause chain. */
export function describeError(err: unknown): string {
  const parts: string[] = [];
  let cur: unknown = err;
  for (let depth = 0; cur !== undefined && cur !== null && depth < 5; depth++) {
    const message = cur instanceof Error ? cur.message : String(cur);
    // A wrapper often quotes its cause already (`cannot read X: ENOENT …`): say it once.
    if (!parts.some((p) => p.includes(message))) parts.push(message);
    cur = cur instanceof Error ? (cur as Error & { cause?: unknown }).cause : undefined;
  }
  return parts.join(': ');
}
