/**
 * The catalogue's records. zod schemas are the single source of truth: the
 * repository validates what it reads back from DynamoDB (a hand-edited or
 * older item must not crash a handler) and the API validates request bodies.
 */
import { z } from 'zod';
import { UsageError } from '../errors.js';
import { formatZodIssues } from '../zod-issues.js';
import { DEVICE_NAME_PATTERN, DEVICE_NAME_RULE, HOST_ID_PATTERN, HOST_ID_RULE } from '../names.js';

export const ARCHIVE_STATUSES = ['INDEXED', 'REJECTED', 'VERIFIED', 'CORRUPT', 'DELETED'] as const;
export type ArchiveStatus = (typeof ARCHIVE_STATUSES)[number];

export const RESTORE_STATUSES = ['PENDING', 'CLAIMED', 'RUNNING', 'SUCCEEDED', 'FAILED', 'CANCELLED'] as const;
export type RestoreStatus = (typeof RESTORE_STATUSES)[number];

/** Jobs in these states can still change; the rest are final. */
export const ACTIVE_RESTORE_STATUSES: readonly RestoreStatus[] = ['PENDING', 'CLAIMED', 'RUNNING'];

/**
 * Host ids and disk names end up inside DynamoDB keys joined with `#` and
 * inside S3 keys, so they are restricted to a safe alphabet.
 */
export const hostIdSchema = z.string().regex(HOST_ID_PATTERN, `must be ${HOST_ID_RULE}`);
export const diskNameSchema = z.string().regex(DEVICE_NAME_PATTERN, `must be ${DEVICE_NAME_RULE}`);
export const uuidSchema = z.string().regex(/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i, 'must be a UUID');
const isoSchema = z.string().refine((s) => !Number.isNaN(Date.parse(s)), 'must be an ISO-8601 timestamp');
const nonNegInt = z.number().int().nonnegative();

export const archiveDeviceSchema = z.object({ name: z.string().min(1).max(255), size: nonNegInt });

export const archiveRecordSchema = z.object({
  uuid: uuidSchema,
  hostId: z.string().min(1),
  devices: z.array(archiveDeviceSchema),
  createdAt: isoSchema,
  parentUuid: uuidSchema.nullable(),
  chainDepth: nonNegInt,
  bytesStored: nonNegInt,
  zeroBytes: nonNegInt,
  dataBytes: nonNegInt,
  /** logical data bytes / stored bytes; 0 when nothing was stored. */
  compressionRatio: z.number().nonnegative(),
  status: z.enum(ARCHIVE_STATUSES),
  reason: z.string().optional(),
  bucket: z.string().min(1),
  key: z.string().min(1),
  etag: z.string().optional(),
  /** S3 event sequencer of the last event applied: orders out-of-order deliveries. */
  sequencer: z.string().optional(),
  indexedAt: isoSchema,
  lastVerifiedAt: isoSchema.optional(),
  deletedAt: isoSchema.optional(),
});
export type ArchiveRecord = z.infer<typeof archiveRecordSchema>;

export const restoreTargetSchema = z.object({ path: z.string().min(1).max(4096) }).strict();

/**
 * A target in a restore request: the agent writes there, so it must be an
 * absolute path without `..` segments (the agent checks again, against its
 * allowedDirs and through symlinks; refusing here makes the mistake a 400
 * instead of a FAILED job).
 */
const requestPathSchema = z
  .string()
  .min(1)
  .max(4096)
  .refine((p) => !p.includes('\0'), 'must not contain NUL')
  .refine((p) => p.startsWith('/'), 'must be an absolute path')
  .refine((p) => !p.split('/').includes('..'), 'must not contain a ".." segment');

export const restoreTargetRequestSchema = z.object({ path: requestPathSchema }).strict();

/**
 * What an export request may ask of the serving agent beyond the archive
 * (POST /exports of the agent's control API and of the catalogue): an
 * overlay file (confined by the agent like a restore target) and cache
 * sizes (bounded by the agent's `exports` config).
 */
const exportCacheRequestSchema = z.strictObject({ memoryBytes: nonNegInt.optional(), diskBytes: nonNegInt.optional() });
export const exportOptionsShape = {
  overlay: requestPathSchema.optional(),
  cache: exportCacheRequestSchema.optional(),
};

export const restoreProgressSchema = z.object({ bytesDone: nonNegInt, bytesTotal: nonNegInt });
export type JobProgress = z.infer<typeof restoreProgressSchema>;

/** What every job of a host's agent has (restore and export jobs share states, claims and leases). */
const jobBaseShape = {
  id: uuidSchema,
  archiveId: uuidSchema,
  hostId: z.string().min(1),
  devices: z.array(z.string()).optional(),
  status: z.enum(RESTORE_STATUSES),
  claimedBy: z.string().optional(),
  error: z.string().optional(),
  createdAt: isoSchema,
  updatedAt: isoSchema,
  claimedAt: isoSchema.optional(),
  /** A claimed job belongs to its agent until then; reports renew it (repository.expireJobLease). */
  leaseExpiresAt: isoSchema.optional(),
  finishedAt: isoSchema.optional(),
};

export const restoreJobSchema = z.object({
  ...jobBaseShape,
  target: restoreTargetSchema,
  planKey: z.string().min(1),
  progress: restoreProgressSchema,
});
export type RestoreJob = z.infer<typeof restoreJobSchema>;

/** One disk an agent serves for an export job, as it reports it. */
const servedDiskSchema = z.strictObject({
  name: z.string().min(1).max(300),
  disk: diskNameSchema,
  size: nonNegInt,
  uris: z.array(z.string().min(1).max(4096)).max(4),
});

/**
 * An archive the host's agent serves over NBD until the operator cancels it
 * (RUNNING while served; CANCELLED when ended by the operator, SUCCEEDED when
 * the agent ended it, FAILED when it could not serve or was lost).
 */
export const exportJobSchema = z.object({
  ...jobBaseShape,
  kind: z.literal('export'),
  /** The archive in the catalogue's bucket; the agent serves only its own bucket's. */
  locator: z.object({ bucket: z.string().min(1), key: z.string().min(1) }),
  overlay: z.string().optional(),
  cache: z.object({ memoryBytes: nonNegInt.optional(), diskBytes: nonNegInt.optional() }).optional(),
  /** Reported by the agent once serving: the export set's id on the agent and its disks' URIs. */
  served: z.object({ exportId: z.string(), exports: z.array(servedDiskSchema) }).optional(),
});
export type ExportJob = z.infer<typeof exportJobSchema>;

export const hostRecordSchema = z.object({
  hostId: z.string().min(1),
  firstSeenAt: isoSchema,
  /** createdAt of the newest archive ever indexed for the host (freshness alarm). */
  lastArchiveAt: isoSchema.optional(),
});
export type HostRecord = z.infer<typeof hostRecordSchema>;

// ---- API request bodies -------------------------------------------------

export const createRestoreBodySchema = z
  .object({
    archiveId: uuidSchema,
    hostId: hostIdSchema,
    devices: z.array(diskNameSchema).min(1).max(255).optional(),
    target: restoreTargetRequestSchema,
  })
  .strict();
export type CreateRestoreBody = z.infer<typeof createRestoreBodySchema>;

export const createExportBodySchema = z
  .object({
    archiveId: uuidSchema,
    hostId: hostIdSchema,
    devices: z.array(diskNameSchema).min(1).max(255).optional(),
    ...exportOptionsShape,
  })
  .strict();
export type CreateExportBody = z.infer<typeof createExportBodySchema>;

const agentIdSchema = z.string().min(1).max(256);
export const claimBodySchema = z.object({ agentId: agentIdSchema }).strict();
/** agentId is required: only the agent that claimed a job may report on it. */
export const progressBodySchema = z.object({ agentId: agentIdSchema, bytesDone: nonNegInt, bytesTotal: nonNegInt }).strict();
/** An export job's report: its URIs (first report) or a heartbeat renewing the lease. */
export const exportReportBodySchema = z
  .object({ agentId: agentIdSchema, served: z.strictObject({ exportId: z.string().min(1).max(64), exports: z.array(servedDiskSchema).max(255) }).optional() })
  .strict();
export const completeBodySchema = z.object({ ok: z.boolean(), error: z.string().max(4096).optional(), agentId: agentIdSchema }).strict();

/** Parses `value` or throws UsageError with a message naming the bad fields. */
export function parseOrUsage<T>(schema: z.ZodType<T>, value: unknown, what: string): T {
  const r = schema.safeParse(value);
  if (!r.success) throw new UsageError(`invalid ${what}: ${formatZodIssues(r.error.issues)}`);
  return r.data;
}
