/**
 * What every archive upload asks of S3, in one place: the checksum policy
 * (AWS_REQUEST_CHECKSUM_CALCULATION / AWS_RESPONSE_CHECKSUM_VALIDATION or
 * the matching config fields) and the object options (storage class,
 * SSE-S3 / SSE-KMS, Object Lock). Validated with zod so an unknown value is
 * refused with the list of accepted ones, in the agent config and the CLI.
 *
 * Checksums: Object Lock buckets refuse parts without one, so by default
 * every part carries an additional checksum (CRC32C). CRC64NVME is not
 * offered: lib-storage 3.1169 does not pass CRC64NVME part checksums to
 * CompleteMultipartUpload. Stores that reject the checksum headers (some
 * S3-compatible servers) switch them off with WHEN_REQUIRED.
 */
import { z } from 'zod';
import { UsageError } from '../errors.js';
import type { ArchiveUploadParams } from './upload-params.js';

export const CHECKSUM_MODES = ['WHEN_SUPPORTED', 'WHEN_REQUIRED'] as const;
export type ChecksumMode = (typeof CHECKSUM_MODES)[number];

/** S3 storage classes (PutObject/CreateMultipartUpload x-amz-storage-class). */
export const STORAGE_CLASSES = [
  'STANDARD',
  'STANDARD_IA',
  'ONEZONE_IA',
  'INTELLIGENT_TIERING',
  'GLACIER_IR',
  'GLACIER',
  'DEEP_ARCHIVE',
  'REDUCED_REDUNDANCY',
  'EXPRESS_ONEZONE',
] as const;
export const UPLOAD_CHECKSUM_ALGORITHMS = ['CRC32C', 'CRC32', 'SHA256'] as const;
export const DEFAULT_UPLOAD_CHECKSUM = 'CRC32C';
export const OBJECT_LOCK_MODES = ['GOVERNANCE', 'COMPLIANCE'] as const;

const checksumMode = z.enum(CHECKSUM_MODES, { error: `expected one of ${CHECKSUM_MODES.join(', ')}` });

/** `2027-01-01T00:00:00Z` (ISO 8601 with a zone) or `<n>d` days after the upload starts. */
const retainUntilSchema = z.string().refine((s) => /^[1-9]\d{0,4}d$/.test(s) || (/(Z|[+-]\d\d:?\d\d)$/.test(s) && !Number.isNaN(Date.parse(s))), {
  message: 'expected an ISO 8601 date-time with a time zone (e.g. 2027-01-01T00:00:00Z) or a number of days (e.g. 30d)',
});

export const uploadOptionsSchema = z.strictObject({
  storageClass: z.enum(STORAGE_CLASSES, { error: `expected one of ${STORAGE_CLASSES.join(', ')}` }).optional(),
  sse: z
    .discriminatedUnion('mode', [z.strictObject({ mode: z.literal('AES256') }), z.strictObject({ mode: z.literal('aws:kms'), kmsKeyId: z.string().min(1).max(2048).optional() })], {
      error: 'expected { "mode": "AES256" } or { "mode": "aws:kms", "kmsKeyId"?: "<key id or ARN>" }',
    })
    .optional(),
  objectLock: z.strictObject({ mode: z.enum(OBJECT_LOCK_MODES, { error: 'expected GOVERNANCE or COMPLIANCE' }), retainUntil: retainUntilSchema }).optional(),
  checksumAlgorithm: z.enum(UPLOAD_CHECKSUM_ALGORITHMS, { error: `expected one of ${UPLOAD_CHECKSUM_ALGORITHMS.join(', ')}` }).optional(),
});
export type UploadOptions = z.output<typeof uploadOptionsSchema>;

/** Checksum fields of a store config (agent `store`, StoreConfig). */
export const checksumPolicySchema = {
  requestChecksumCalculation: checksumMode.optional(),
  responseChecksumValidation: checksumMode.optional(),
};

export interface ChecksumPolicy {
  requestChecksumCalculation: ChecksumMode;
  responseChecksumValidation: ChecksumMode;
}

function envMode(env: NodeJS.ProcessEnv, name: string): ChecksumMode | undefined {
  const v = env[name];
  if (v === undefined || v === '') return undefined;
  const up = v.toUpperCase();
  if (!(CHECKSUM_MODES as readonly string[]).includes(up)) throw new UsageError(`${name}="${v}": expected ${CHECKSUM_MODES.join(' or ')}`);
  return up as ChecksumMode;
}

/** Config fields win over the AWS_* environment; the default is the SDK's own, WHEN_SUPPORTED. */
export function resolveChecksumPolicy(cfg: Partial<ChecksumPolicy>, env: NodeJS.ProcessEnv = process.env): ChecksumPolicy {
  return {
    requestChecksumCalculation: cfg.requestChecksumCalculation ?? envMode(env, 'AWS_REQUEST_CHECKSUM_CALCULATION') ?? 'WHEN_SUPPORTED',
    responseChecksumValidation: cfg.responseChecksumValidation ?? envMode(env, 'AWS_RESPONSE_CHECKSUM_VALIDATION') ?? 'WHEN_SUPPORTED',
  };
}

/** Parses upload options (CLI flags or config), throwing UsageError naming the field and the accepted values. */
export function parseUploadOptions(input: unknown, where = 'upload'): UploadOptions {
  const r = uploadOptionsSchema.safeParse(input);
  if (r.success) return r.data;
  const issue = r.error.issues[0]!;
  throw new UsageError(`${[where, ...issue.path.map(String)].join('.')}: ${issue.message}`);
}

const DAY_MS = 86_400_000;

/**
 * The S3ArchiveSink options of one upload. The part checksum is sent only
 * when the policy allows (an explicit ChecksumAlgorithm would force it even
 * under WHEN_REQUIRED); a relative retain-until counts from `now`.
 */
export function sinkUploadOptions(
  upload: UploadOptions | undefined,
  policy: ChecksumPolicy,
  now: number = Date.now(),
): ArchiveUploadParams {
  const out: ArchiveUploadParams = {};
  if (policy.requestChecksumCalculation === 'WHEN_SUPPORTED') out.checksumAlgorithm = upload?.checksumAlgorithm ?? DEFAULT_UPLOAD_CHECKSUM;
  if (upload?.storageClass) out.storageClass = upload.storageClass;
  if (upload?.sse) out.sse = upload.sse.mode === 'aws:kms' ? { mode: 'aws:kms', ...(upload.sse.kmsKeyId ? { kmsKeyId: upload.sse.kmsKeyId } : {}) } : { mode: 'AES256' };
  if (upload?.objectLock) {
    const r = upload.objectLock.retainUntil;
    const until = /d$/.test(r) ? new Date(now + Number(r.slice(0, -1)) * DAY_MS) : new Date(r);
    if (until.getTime() <= now) throw new UsageError(`objectLock.retainUntil ${r} is in the past`);
    out.objectLock = { mode: upload.objectLock.mode, retainUntil: until };
  }
  return out;
}
