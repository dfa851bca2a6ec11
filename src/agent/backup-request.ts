import { isAbsolute } from 'node:path';
import { z } from 'zod';
import { BadRequestError } from './http-util.js';
import { parseSize } from '../units.js';
import { firstIssuePath, formatZodIssues } from '../zod-issues.js';

/** A bad POST /backups body; `field` names the offending field path. */
export class BackupRequestError extends BadRequestError {}

/** Where the archive goes. */
export type BackupTarget = { kind: 's3' } | { kind: 'file'; path: string } | { kind: 'stream' };

const sizeField = z.union([
  z.number().int('must be an integer number of bytes').positive('must be positive'),
  z.string().transform((s, ctx) => {
    try {
      const n = parseSize(s);
      if (n <= 0) throw new Error('must be positive');
      return n;
    } catch {
      ctx.addIssue({ code: 'custom', message: `invalid size "${s}" (expected bytes or e.g. "50M")` });
      return z.NEVER;
    }
  }),
]);

const targetField = z
  .string()
  .default('s3')
  .transform((s, ctx): BackupTarget => {
    if (s === 's3') return { kind: 's3' };
    if (s === '-') return { kind: 'stream' };
    if (s.startsWith('file:')) {
      const path = s.slice(5);
      if (!isAbsolute(path)) {
        ctx.addIssue({ code: 'custom', message: `file target needs an absolute path on the agent host, got "${path}"` });
        return z.NEVER;
      }
      return { kind: 'file', path };
    }
    ctx.addIssue({ code: 'custom', message: `unknown target "${s}" (expected "s3", "file:/abs/path.cwa" or "-")` });
    return z.NEVER;
  });

export const backupRequestSchema = z.strictObject({
  disks: z
    .array(z.string().min(1))
    .min(1, 'must name at least one disk (omit it to back up all disks)')
    .max(255)
    .refine((a) => new Set(a).size === a.length, 'disk names must be unique')
    .optional(),
  mode: z.enum(['full', 'incremental']),
  target: targetField,
  fleecing: z
    .strictObject({
      dir: z.string().refine(isAbsolute, 'must be an absolute path on the agent host'),
      maxBytes: sizeField,
    })
    .optional(),
  speed: sizeField.optional(),
  configFiles: z.array(z.string().refine(isAbsolute, 'must be an absolute path on the agent host')).max(64).optional(),
  cbwTimeoutMs: z.number().int().positive().max(3_600_000).optional(),
  onCbwError: z.enum(['break-snapshot', 'break-guest-write']).optional(),
  key: z.string().refine(isAbsolute, 'must be an absolute path to a key file on the agent host').optional(),
  compressionLevel: z.number().int().min(1).max(19).optional(),
});

export type BackupRequest = z.output<typeof backupRequestSchema>;

/** Validates a POST /backups body; throws BackupRequestError naming the field. */
export function parseBackupRequest(body: unknown): BackupRequest {
  if (body === undefined) throw new BackupRequestError('(body)', '(body): request body is required: {"mode": "full"|"incremental", "target": ...}');
  const r = backupRequestSchema.safeParse(body);
  if (!r.success) throw new BackupRequestError(firstIssuePath(r.error.issues), `invalid backup request: ${formatZodIssues(r.error.issues)}`);
  return r.data;
}

export type BackupState = 'active' | 'done' | 'error' | 'cancelled';

/** GET /backups/current body. */
export interface BackupStatus {
  status: BackupState;
  uuid: string;
  mode: 'full' | 'incremental';
  /** Why the mode differs from the requested one (e.g. bitmap invalid after an unclean stop). */
  modeReason?: string;
  requestedMode: 'full' | 'incremental';
  /** QEMU pull mode: how the drives were fleeced (src/qemu/graph.ts), set at the snapshot point. */
  qemuGraph?: { kind: 'filter' | 'job'; reason: string };
  parentUuid: string | null;
  disks: string[];
  /** Bytes the backup has to copy (dirty bytes for an incremental). */
  total: number;
  /** Bytes copied so far (data + zero). */
  transferred: number;
  zeroBytes: number;
  /** Bytes written to the target (compressed archive bytes). */
  archiveBytes: number;
  /** Clusters captured by copy-before-write (a guest write hit them first). */
  cbwClusters: number;
  /** Longest time a guest write waited for its copy-before-write (ms). */
  maxCbwWaitMs: number;
  /** Peak bytes held in the fleecing scratch store. */
  fleecingPeakBytes?: number;
  startTime: string;
  endTime: string | null;
  error: string | null;
  target: string;
  /** Object key for `s3` targets. */
  key?: string;
  bucket?: string;
}

/** How GET /disks reports a dirty bitmap. */
export interface DiskBitmapStatus {
  /** `valid`: the next incremental can use it. */
  state: 'valid' | 'invalid';
  reason?: string;
  dirtyBytes: number | null;
}

/** GET /disks item of a file disk (exported over NBD by the agent). */
export interface FileDiskStatus {
  kind: 'file';
  name: string;
  path: string;
  size: number;
  bitmap: DiskBitmapStatus;
  /** A backup of this disk is running (its bitmap is frozen). */
  inBackup: boolean;
  lastBackup: { uuid: string; time: string; mode: 'full' | 'incremental' } | null;
}

/** GET /disks item of a drive of a running QEMU (pull-mode backups). */
export interface QemuDiskStatus {
  kind: 'qemu';
  name: string;
  /** QEMU block node name. */
  node: string;
  qmpSocket: string;
  /** Index of the agent config's `qemu[]` entry (a backup covers drives of one entry). */
  qemuEntry: number;
  /** Virtual size as QEMU reports it; null when QEMU could not be asked. */
  size: number | null;
  /** QEMU's format driver of the node (qcow2 bitmaps persist across QEMU restarts, raw ones do not). */
  format: string | null;
  bitmap: DiskBitmapStatus & {
    /** The cowstream-<uuid> bitmap QEMU holds for the node (one when valid). */
    names: string[];
    /** The archive an incremental would chain from (the bitmap's uuid). */
    parentUuid: string | null;
    persistent: boolean | null;
  };
  inBackup: boolean;
  /** Last successful backup of this drive by this agent (kept in <stateDir>/qemu-backups.json). */
  lastBackup: { uuid: string; time: string; mode: 'full' | 'incremental' } | null;
}

/** GET /disks item. */
export type DiskStatus = FileDiskStatus | QemuDiskStatus;
