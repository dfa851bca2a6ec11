/**
 * What an archive upload asks of S3 besides its bytes: the parameters the
 * multipart sink sends (s3-sink.ts) and the config validation fills in
 * (upload-options.ts). Types only, so neither depends on the other.
 */
export type SseOption = { mode: 'AES256' } | { mode: 'aws:kms'; kmsKeyId?: string };

export interface ArchiveUploadParams {
  sse?: SseOption;
  /** An S3 storage class (STANDARD, STANDARD_IA, GLACIER_IR, …). */
  storageClass?: string;
  /** S3 additional checksum per part and for the object (upload-options.ts decides when to send one). */
  checksumAlgorithm?: 'CRC32C' | 'SHA256' | 'CRC32';
  /** Object Lock for immutable backups (bucket must have Object Lock enabled). */
  objectLock?: { mode: 'GOVERNANCE' | 'COMPLIANCE'; retainUntil: Date };
}
