import { readFileSync, realpathSync, statSync } from 'node:fs';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { z } from 'zod';
import { ConfigError } from '../errors.js';
import { firstIssuePath, formatZodIssues } from '../zod-issues.js';
import { checksumPolicySchema, uploadOptionsSchema, type ChecksumMode, type UploadOptions } from '../store/upload-options.js';
import { nbdConfigSchema, resolveNbdConfig, type AgentNbdConfig } from './nbd-config.js';
import type { S3Timeouts } from '../store/config.js';
import { metricsConfigSchema, resolveMetricsConfig, type AgentMetricsConfig } from './metrics-config.js';
import { scheduleGroupSchema, scheduleSelectionIssue, toAgentSchedule, type AgentSchedule } from './schedule-config.js';
import { retentionConfigSchema, type RetentionConfig } from '../catalog/retention.js';
import { NotifyConfigIssue, notificationsSchema, resolveNotifications, type NotificationsConfig } from './notify-config.js';
import { DEVICE_NAME_PATTERN, DEVICE_NAME_RULE, HOST_ID_PATTERN, HOST_ID_RULE, isDeviceName } from '../names.js';

/** A config error that names the offending field path (e.g. `disks[0].path`). */
export class AgentConfigError extends ConfigError {
  readonly field: string;
  constructor(field: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.field = field;
  }
}

/**
 * Export names double as file names (`restore --to DIR` writes `<NAME>.raw`)
 * and as S3 metadata, so they are stricter than the NBD spec (which allows
 * any UTF-8 string up to 4096 bytes): ASCII letters, digits, `.`, `_`, `-`,
 * starting with a letter or digit, at most 64 characters.
 */

const diskSchema = z.strictObject({
  name: z.string().regex(DEVICE_NAME_PATTERN, `disk name must be ${DEVICE_NAME_RULE} (it is the NBD export name)`),
  path: z.string().min(1, 'path must not be empty'),
  readOnly: z.boolean().optional(),
});

/** `store.timeouts` (src/store/config.ts S3Timeouts; docs/agent.md). */
const storeTimeoutsSchema = z.strictObject({
  connectMs: z.number().int().min(100).max(600_000).optional(),
  requestMs: z.number().int().min(100).max(3_600_000).optional(),
  cleanupMs: z.number().int().min(100).max(3_600_000).optional(),
});

const storeSchema = z.strictObject({
  bucket: z.string().min(3).max(63),
  prefix: z.string().default(''),
  region: z.string().min(1).optional(),
  endpoint: z.string().url().optional(),
  forcePathStyle: z.boolean().optional(),
  /** WHEN_REQUIRED for stores that reject checksum headers (default: $AWS_REQUEST_CHECKSUM_CALCULATION, else WHEN_SUPPORTED). */
  ...checksumPolicySchema,
  /** Storage class, SSE-S3/SSE-KMS, Object Lock, part checksum algorithm (docs/s3-and-restore.md). */
  upload: uploadOptionsSchema.optional(),
  timeouts: storeTimeoutsSchema.optional(),
});

/**
 * QEMU block node names: QEMU itself allows letters, digits, '-', '.', '_'
 * starting with a letter, at most 31 characters (util/id.c id_wellformed +
 * BlockDriverState node_name[32]).
 */
const QEMU_NODE_RE = /^[A-Za-z][A-Za-z0-9._-]{0,30}$/;
const nodeMsg = 'QEMU node name must match [A-Za-z][A-Za-z0-9._-]{0,30}';
const driveNameMsg = `drive name must be ${DEVICE_NAME_RULE} (it is the archive device name)`;

/**
 * `{ node, name? }` or the CLI's `"node[=name]"` form (turned into the object
 * first, so errors name `drives[i].node` / `drives[i].name`).
 */
const qemuDriveSchema = z.preprocess(
  (v) => {
    if (typeof v !== 'string') return v;
    const i = v.indexOf('=');
    return i < 0 ? { node: v } : { node: v.slice(0, i), name: v.slice(i + 1) };
  },
  z.strictObject({
    node: z.string().regex(QEMU_NODE_RE, nodeMsg),
    name: z.string().regex(DEVICE_NAME_PATTERN, driveNameMsg).optional(),
  }),
);

const qemuEntrySchema = z.strictObject({
  /** QMP monitor socket of the QEMU process (a dedicated one: a monitor serves one client at a time). */
  qmpSocket: z.string().min(1, 'qmpSocket must not be empty'),
  drives: z.array(qemuDriveSchema).min(1, 'at least one drive is required').max(255, 'at most 255 drives (archive device table limit)'),
  /** Where the fleecing images go (on the QEMU host; default: the temp dir). */
  fleecingDir: z.string().min(1).optional(),
  /** Unix socket of an NBD server QEMU already runs (QEMU allows only one per process). */
  nbdSocket: z.string().min(1).optional(),
});

const catalogSchema = z.union([
  z.strictObject({
    url: z.string().url(),
    /** File holding the bearer token of a `cowstream catalog serve` (its credentials.json, or the bare token); 0600. */
    tokenFile: z.string().min(1).optional(),
  }),
  z.strictObject({
    embedded: z.literal(true),
    port: z.number().int().min(0).max(65535).optional(),
    /** Applied by the embedded catalogue after each indexed archive (src/catalog/embedded-retention.ts). */
    retention: retentionConfigSchema.optional(),
  }),
]);

/**
 * `exports`: bounds on what POST /exports may ask for. Every open export set
 * holds a cache and S3 connections, so their number and cache sizes are the
 * operator's to bound, never the request's.
 */
const exportsConfigSchema = z.strictObject({
  /** Export sets open at once (default 4). */
  max: z.number().int().min(1).max(64).optional(),
  /** Upper bound (and default) of one set's memory cache (default 64 MiB). */
  maxCacheMemoryBytes: z.number().int().min(0).max(64 * 1024 ** 3).optional(),
  /** Upper bound of one set's disk cache; 0 (default) allows none. */
  maxCacheDiskBytes: z.number().int().min(0).max(1024 ** 5).optional(),
  /** Where disk caches go (default `<stateDir>/export-cache`). */
  cacheDir: z.string().min(1).optional(),
});

export const agentConfigSchema = z
  .strictObject({
    hostId: z.string().regex(HOST_ID_PATTERN, `hostId must be ${HOST_ID_RULE}`),
    stateDir: z.string().min(1),
    disks: z.array(diskSchema).max(255, 'at most 255 disks (archive device table limit)').default([]),
    nbd: nbdConfigSchema,
    control: z.strictObject({ socket: z.string().min(1).optional() }).optional(),
    store: storeSchema.optional(),
    catalog: catalogSchema.optional(),
    restore: z
      .strictObject({
        allowedDirs: z.array(z.string().min(1)).default([]),
        /** How often the restore poller asks the catalogue for PENDING jobs (default 5000 ms). */
        pollIntervalMs: z.number().int().min(100).max(3_600_000).optional(),
        /** Key file (`cowstream key create`) for catalogue restores of encrypted archives. */
        keyFile: z.string().min(1).optional(),
      })
      .optional(),
    /** Archives served over NBD through POST /exports (src/agent/archive-exports.ts, docs/file-restore.md). */
    exports: exportsConfigSchema.optional(),
    /** Refuse backup requests without a key: every archive is encrypted and authenticated (docs/security.md). */
    requireEncryption: z.boolean().optional(),
    /** Running QEMU processes whose drives are backed up in pull mode (src/qemu/pull-backup.ts). */
    qemu: z.array(qemuEntrySchema).max(64).optional(),
    log: z.strictObject({ level: z.enum(['debug', 'info', 'warn', 'error']).default('info') }).optional(),
    /** Backup schedules with retention (src/agent/schedule-config.ts, docs/agent.md "Schedules"). */
    schedules: z.array(scheduleGroupSchema).max(64, 'at most 64 schedules').optional(),
    /** Start even when a start-up check fails, reporting it in GET / and `cowstream status` (src/agent/startup-checks.ts). */
    startDegraded: z.boolean().optional(),
    /** GET /metrics on a TCP listener besides the control socket (src/agent/metrics-config.ts, docs/metrics.md). */
    metrics: metricsConfigSchema,
    /** Webhooks and command hooks for failures, successes and stale disks (src/agent/notify-config.ts, docs/notifications.md). */
    notifications: notificationsSchema.optional(),
  })
  .superRefine((cfg, ctx) => {
    // Names are unique across file disks and QEMU drives: GET /disks and POST /backups address both by name.
    const seen = new Map<string, string>();
    cfg.disks.forEach((d, i) => {
      const prev = seen.get(d.name);
      if (prev !== undefined) {
        ctx.addIssue({ code: 'custom', path: ['disks', i, 'name'], message: `duplicate disk name "${d.name}" (also ${prev})` });
      }
      seen.set(d.name, `disks[${i}]`);
    });
    const sockets = new Map<string, number>();
    (cfg.qemu ?? []).forEach((q, qi) => {
      const prevSock = sockets.get(q.qmpSocket);
      if (prevSock !== undefined) ctx.addIssue({ code: 'custom', path: ['qemu', qi, 'qmpSocket'], message: `qmpSocket "${q.qmpSocket}" is listed twice (also qemu[${prevSock}])` });
      sockets.set(q.qmpSocket, qi);
      const nodes = new Map<string, number>();
      q.drives.forEach((d, di) => {
        const name = d.name ?? d.node;
        const path = ['qemu', qi, 'drives', di];
        if (!isDeviceName(name)) ctx.addIssue({ code: 'custom', path, message: `drive name "${name}": ${driveNameMsg}` });
        const prevNode = nodes.get(d.node);
        if (prevNode !== undefined) ctx.addIssue({ code: 'custom', path, message: `node "${d.node}" is listed twice (also qemu[${qi}].drives[${prevNode}])` });
        nodes.set(d.node, di);
        const prev = seen.get(name);
        if (prev !== undefined) ctx.addIssue({ code: 'custom', path, message: `duplicate disk name "${name}" (also ${prev})` });
        seen.set(name, `qemu[${qi}].drives[${di}]`);
      });
    });
    if (seen.size === 0) ctx.addIssue({ code: 'custom', path: ['disks'], message: 'at least one disk is required (in disks[] or qemu[].drives)' });
    const groups = new Map<string, number>();
    const fileNames = cfg.disks.map((d) => d.name);
    const qemuNames = (cfg.qemu ?? []).map((q) => q.drives.map((d) => d.name ?? d.node));
    (cfg.schedules ?? []).forEach((g, gi) => {
      const prev = groups.get(g.name);
      if (prev !== undefined) ctx.addIssue({ code: 'custom', path: ['schedules', gi, 'name'], message: `duplicate schedule name "${g.name}" (also schedules[${prev}])` });
      groups.set(g.name, gi);
      const issue = scheduleSelectionIssue(g.disks, fileNames, qemuNames);
      if (issue) ctx.addIssue({ code: 'custom', path: ['schedules', gi, ...issue[0]], message: issue[1] });
    });
  });

type RawConfig = z.output<typeof agentConfigSchema>;

export interface DiskConfig {
  name: string;
  /** Absolute path of a raw image file or block device. */
  path: string;
  readOnly: boolean;
}

export interface QemuDriveConfig {
  node: string;
  /** Archive device name (default: the node name); unique across all disks. */
  name: string;
}

export interface QemuConfig {
  /** Absolute path of the QMP socket. */
  qmpSocket: string;
  drives: QemuDriveConfig[];
  /** Absolute; default os.tmpdir(). */
  fleecingDir?: string;
  /** Absolute path of an NBD server socket QEMU already runs. */
  nbdSocket?: string;
}

export interface ExportsConfig {
  max: number;
  maxCacheMemoryBytes: number;
  maxCacheDiskBytes: number;
  /** Absolute. */
  cacheDir: string;
}

export const DEFAULT_MAX_EXPORTS = 4;
export const DEFAULT_EXPORT_CACHE_MEMORY_BYTES = 64 * 1024 * 1024;

export interface AgentConfig {
  hostId: string;
  stateDir: string;
  disks: DiskConfig[];
  /** NBD listeners: a Unix socket (default `<stateDir>/nbd.sock`, mode 0600) and, when configured, TCP; TLS. */
  nbd: AgentNbdConfig;
  control: { socket: string };
  store?: {
    bucket: string;
    prefix: string;
    region?: string;
    endpoint?: string;
    forcePathStyle?: boolean;
    requestChecksumCalculation?: ChecksumMode;
    responseChecksumValidation?: ChecksumMode;
    upload?: UploadOptions;
    timeouts?: Partial<S3Timeouts>;
  };
  catalog?: { url: string; tokenFile?: string } | { embedded: true; port?: number; retention?: RetentionConfig };
  restore: { allowedDirs: string[]; pollIntervalMs?: number; keyFile?: string };
  /** POST /exports limits; overlays are confined to `restore.allowedDirs`. */
  exports: ExportsConfig;
  /** Backups without a key are refused. */
  requireEncryption: boolean;
  /** QEMU processes backed up in pull mode (empty when none). */
  qemu: QemuConfig[];
  logLevel: 'debug' | 'info' | 'warn' | 'error';
  /** Backup schedules (empty when none). */
  schedules: AgentSchedule[];
  /** Start even when a start-up check of the store or catalogue fails (reported as degraded). */
  startDegraded: boolean;
  /** GET /metrics: the optional TCP listener (the control socket always serves it). */
  metrics: AgentMetricsConfig;
  /** Webhooks and command hooks (absent: nothing is sent). */
  notifications?: NotificationsConfig;
  /** Non-fatal remarks found while validating (e.g. ignored sections). */
  warnings: string[];
}

/**
 * Validates a parsed JSON config. Relative paths resolve against `baseDir`
 * (the config file's directory). Disk paths must exist and be regular files
 * or block devices. Throws AgentConfigError naming the bad field.
 */
export function parseAgentConfig(input: unknown, baseDir: string = process.cwd()): AgentConfig {
  const parsed = agentConfigSchema.safeParse(input);
  if (!parsed.success) {
    throw new AgentConfigError(firstIssuePath(parsed.error.issues), `invalid agent config: ${formatZodIssues(parsed.error.issues)}`);
  }
  const raw: RawConfig = parsed.data;
  const abs = (p: string): string => (isAbsolute(p) ? p : resolve(baseDir, p));

  // Two entries on one file (same path, a symlink or a hard link to it, or two
  // nodes of one block device) would let writes through one export bypass the
  // other's copy-before-write and dirty bitmap.
  const seenFiles = new Map<string, number>();
  const disks: DiskConfig[] = raw.disks.map((d, i) => {
    const path = abs(d.path);
    let st;
    try {
      st = statSync(path);
    } catch (err) {
      throw new AgentConfigError(`disks[${i}].path`, `invalid agent config: disks[${i}].path: cannot open "${path}": ${(err as Error).message}`, { cause: err });
    }
    if (!st.isFile() && !st.isBlockDevice()) {
      throw new AgentConfigError(`disks[${i}].path`, `invalid agent config: disks[${i}].path: "${path}" is not a regular file or block device`);
    }
    const identity = st.isBlockDevice() ? `blk:${st.rdev}` : `file:${st.dev}:${st.ino}`;
    const prev = seenFiles.get(identity);
    if (prev !== undefined) {
      const p = raw.disks[prev]!;
      throw new AgentConfigError(
        `disks[${i}].path`,
        `invalid agent config: disks[${i}].path: disks[${i}] "${d.name}" (${path}) and disks[${prev}] "${p.name}" (${abs(p.path)}) are the same ${st.isBlockDevice() ? 'block device' : 'file'} (${realpathOrSelf(path)}); each disk may be listed once`,
      );
    }
    seenFiles.set(identity, i);
    return { name: d.name, path, readOnly: d.readOnly ?? false };
  });

  const stateDir = abs(raw.stateDir);
  let nbd: AgentNbdConfig;
  try {
    nbd = resolveNbdConfig(raw.nbd, abs, stateDir);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    throw new AgentConfigError('nbd', err.message, { cause: err });
  }

  const warnings: string[] = [];
  const qemu: QemuConfig[] = (raw.qemu ?? []).map((q) => ({
    qmpSocket: abs(q.qmpSocket),
    drives: q.drives.map((d) => ({ node: d.node, name: d.name ?? d.node })),
    ...(q.fleecingDir !== undefined ? { fleecingDir: abs(q.fleecingDir) } : {}),
    ...(q.nbdSocket !== undefined ? { nbdSocket: abs(q.nbdSocket) } : {}),
  }));

  let metrics: AgentMetricsConfig;
  try {
    metrics = resolveMetricsConfig(raw.metrics, warnings);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    throw new AgentConfigError('metrics.listen', err.message, { cause: err });
  }
  let notifications: NotificationsConfig | undefined;
  try {
    notifications = raw.notifications === undefined ? undefined : resolveNotifications(raw.notifications, abs, warnings);
  } catch (err) {
    if (!(err instanceof NotifyConfigIssue)) throw err;
    throw new AgentConfigError(err.field, `invalid agent config: ${err.message}`, { cause: err });
  }

  const catalog = raw.catalog === undefined ? undefined : 'url' in raw.catalog ? { url: raw.catalog.url, ...(raw.catalog.tokenFile !== undefined ? { tokenFile: abs(raw.catalog.tokenFile) } : {}) } : { embedded: true as const, ...(raw.catalog.port !== undefined ? { port: raw.catalog.port } : {}), ...(raw.catalog.retention !== undefined ? { retention: raw.catalog.retention } : {}) };

  return {
    hostId: raw.hostId,
    stateDir,
    disks,
    nbd,
    control: { socket: raw.control?.socket !== undefined ? abs(raw.control.socket) : join(stateDir, 'agent.sock') },
    ...(raw.store !== undefined ? { store: { ...raw.store, ...(raw.store.timeouts ? { timeouts: definedOnly(raw.store.timeouts) } : {}) } } : {}),
    ...(catalog !== undefined ? { catalog } : {}),
    restore: {
      allowedDirs: (raw.restore?.allowedDirs ?? []).map(abs),
      ...(raw.restore?.pollIntervalMs !== undefined ? { pollIntervalMs: raw.restore.pollIntervalMs } : {}),
      ...(raw.restore?.keyFile !== undefined ? { keyFile: abs(raw.restore.keyFile) } : {}),
    },
    exports: {
      max: raw.exports?.max ?? DEFAULT_MAX_EXPORTS,
      maxCacheMemoryBytes: raw.exports?.maxCacheMemoryBytes ?? DEFAULT_EXPORT_CACHE_MEMORY_BYTES,
      maxCacheDiskBytes: raw.exports?.maxCacheDiskBytes ?? 0,
      cacheDir: raw.exports?.cacheDir !== undefined ? abs(raw.exports.cacheDir) : join(stateDir, 'export-cache'),
    },
    requireEncryption: raw.requireEncryption ?? false,
    qemu,
    logLevel: raw.log?.level ?? 'info',
    schedules: (raw.schedules ?? []).map(toAgentSchedule),
    startDegraded: raw.startDegraded ?? false,
    metrics,
    ...(notifications !== undefined ? { notifications } : {}),
    warnings,
  };
}

function realpathOrSelf(p: string): string {
  try {
    return realpathSync(p);
  } catch {
    return p;
  }
}

/** Drops undefined fields (exactOptionalPropertyTypes). */
function definedOnly<T extends object>(o: T): { [K in keyof T]?: Exclude<T[K], undefined> } {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as { [K in keyof T]?: Exclude<T[K], undefined> };
}

/** Reads and validates an agent config file (JSON). */
export function loadAgentConfig(file: string): AgentConfig {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new AgentConfigError('(file)', `cannot read agent config "${file}": ${(err as Error).message}`, { cause: err });
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new AgentConfigError('(file)', `agent config "${file}" is not valid JSON: ${(err as Error).message}`, { cause: err });
  }
  return parseAgentConfig(json, dirname(resolve(file)));
}
