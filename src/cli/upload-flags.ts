/**
 * CLI flags for the upload options of archives the CLI itself sends to S3
 * (src/store/upload-options.ts validates them, naming the accepted values).
 */
import type { Command } from 'commander';
import { UsageError } from '../errors.js';
import { parseUploadOptions, STORAGE_CLASSES, UPLOAD_CHECKSUM_ALGORITHMS, type UploadOptions } from '../store/upload-options.js';

export interface UploadFlags {
  storageClass?: string;
  sse?: string;
  sseKmsKeyId?: string;
  objectLockMode?: string;
  objectLockRetainUntil?: string;
  checksumAlgorithm?: string;
}

export function addUploadOptions(cmd: Command): Command {
  return cmd
    .option('--storage-class <class>', `S3 storage class (${STORAGE_CLASSES.join(', ')})`)
    .option('--sse <mode>', 'server-side encryption: AES256 (SSE-S3) or aws:kms (SSE-KMS)')
    .option('--sse-kms-key-id <id>', 'with --sse aws:kms: the KMS key id or ARN (default: the bucket/account default key)')
    .option('--object-lock-mode <mode>', 'Object Lock mode: GOVERNANCE or COMPLIANCE (needs --object-lock-retain-until)')
    .option('--object-lock-retain-until <when>', 'Object Lock retention: ISO 8601 date-time (2027-01-01T00:00:00Z) or days (30d)')
    .option('--checksum-algorithm <alg>', `checksum on every part (${UPLOAD_CHECKSUM_ALGORITHMS.join(', ')}; default CRC32C; off with AWS_REQUEST_CHECKSUM_CALCULATION=WHEN_REQUIRED)`);
}

/** True when any upload flag was given. */
export function hasUploadFlags(o: UploadFlags): boolean {
  return [o.storageClass, o.sse, o.sseKmsKeyId, o.objectLockMode, o.objectLockRetainUntil, o.checksumAlgorithm].some((v) => v !== undefined);
}

/** Flags → validated UploadOptions; UsageError names the flag and the accepted values. */
export function uploadOptionsFromFlags(o: UploadFlags): UploadOptions {
  if (o.sseKmsKeyId !== undefined && o.sse !== 'aws:kms') throw new UsageError('--sse-kms-key-id needs --sse aws:kms');
  if ((o.objectLockMode === undefined) !== (o.objectLockRetainUntil === undefined)) {
    throw new UsageError('Object Lock needs both --object-lock-mode and --object-lock-retain-until');
  }
  const input: Record<string, unknown> = {};
  if (o.storageClass !== undefined) input.storageClass = o.storageClass;
  if (o.sse !== undefined) input.sse = { mode: o.sse, ...(o.sseKmsKeyId !== undefined ? { kmsKeyId: o.sseKmsKeyId } : {}) };
  if (o.objectLockMode !== undefined) input.objectLock = { mode: o.objectLockMode, retainUntil: o.objectLockRetainUntil };
  if (o.checksumAlgorithm !== undefined) input.checksumAlgorithm = o.checksumAlgorithm;
  const names: Record<string, string> = { storageClass: '--storage-class', sse: '--sse', objectLock: '--object-lock-*', checksumAlgorithm: '--checksum-algorithm' };
  try {
    return parseUploadOptions(input);
  } catch (err) {
    const field = /^upload\.(\w+)/.exec((err as Error).message)?.[1];
    throw new UsageError(`${field ? (names[field] ?? field) : 'upload options'}: ${(err as Error).message.replace(/^upload\.[\w.]+: /, '')}`, { cause: err });
  }
}
