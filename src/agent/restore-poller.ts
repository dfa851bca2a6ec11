/**
 * The agent's restore poller: picks up restore jobs the catalogue holds for
 * this host, claims one (a conditional write: exactly one agent wins),
 * loads its plan from S3, executes it with the shared restore engine,
 * reports progress about every 2 s and completes the job.
 *
 * Security: the catalogue is not trusted to choose what the agent
 * overwrites. A job is refused (and marked FAILED with the reason) unless
 * every file it would write resolves — symlinks followed, `..` refused —
 * inside one of `allowedDirs`, and none of them is an exported disk. The
 * plan may only read archives from the agent's own bucket, never local
 * files (a `file` locator would let the catalogue copy any local file).
 * The check is not what protects: a symlink can be swapped in after it.
 * Targets are opened by src/restore/confined.ts, component by component
 * below the allowed directory without following any symlink, and created
 * with O_EXCL|O_NOFOLLOW, mode 0600, never overwritten.
 */
import { hostname } from 'node:os';
import { realpath, stat } from 'node:fs/promises';
import { dirname, isAbsolute, join, resolve, sep, basename } from 'node:path';
import { GetObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import type { Compressor } from '../codec/types.js';
import { ConflictError, ForbiddenError, RestoreError, StoreError, describeError } from '../errors.js';
import { CatalogClient } from '../catalog/client.js';
import type { ArchiveLocator, RestorePlan } from '../restore/plan.js';
import { parseRestorePlan } from '../restore/plan-schema.js';
import type { RestoreJob } from '../catalog/records.js';
import { restoreArchive, type RestoreProgress } from '../restore/engine.js';
import { openConfinedTargets } from '../restore/confined.js';
import { S3RangeSource } from '../store/s3-source.js';
import type { ArchiveExports } from './archive-exports.js';
import { ExportJobRunner, type ExportJobsApi } from './export-jobs.js';

/** Structural logger: the agent's logger and the catalogue's both fit. */
export interface PollerLogger {
  info(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
  error(msg: string, fields?: Record<string, unknown>): void;
}

/** The catalogue calls the poller makes (CatalogClient fits). */
export type RestoreJobsApi = Pick<CatalogClient, 'listRestores' | 'claimRestore' | 'reportProgress' | 'completeRestore'> & Partial<ExportJobsApi>;

export interface RestorePollerOptions {
  hostId: string;
  /** Catalogue base URL (a CatalogClient is made) — or pass `client`. */
  catalogUrl?: string;
  /** Bearer token for `catalogUrl` (embedded catalogue). */
  catalogToken?: string;
  client?: RestoreJobsApi;
  /** Directories restores may write into. Empty = every job is refused. */
  allowedDirs: string[];
  /** Paths that must never be restore targets: the agent's exported disks. */
  forbiddenPaths?: string[] | (() => string[]);
  /** Where plans and archives are read from (the agent's store). */
  store: { client: S3Client; bucket: string; prefix?: string } | null;
  /** Default: a ZstdPool made on first use and closed by stop(). */
  compressor?: Compressor;
  /** Key for encrypted archives. */
  key?: Buffer;
  agentId?: string;
  pollIntervalMs?: number;
  progressIntervalMs?: number;
  log?: PollerLogger;
  /** Called once a claimed job has ended, with its outcome (the agent's metrics and notifications); must not throw. */
  onJobEnd?: (job: RestoreJob, outcome: RestoreRunOutcome, startTime: string) => void;
  /** Serve this host's export jobs through these (src/agent/export-jobs.ts). */
  archiveExports?: ArchiveExports;
}

export interface RestoreRunOutcome {
  jobId: string;
  ok: boolean;
  error?: string;
  bytesTotal?: number;
}

export const DEFAULT_POLL_INTERVAL_MS = 5_000;
export const DEFAULT_PROGRESS_INTERVAL_MS = 2_000;
/** Plans are O(runs) but still untrusted: refuse absurd sizes before buffering. */
const MAX_PLAN_BYTES = 256 * 1024 * 1024;

const quietLog: PollerLogger = { info() {}, warn() {}, error() {} };

/**
 * Resolves a path the way the kernel will when we create it: the longest
 * existing prefix through realpath (symlinks followed), the rest appended.
 * Relative paths and `..` segments are refused outright, because a lexical
 * `..` after a symlink means something else to the kernel than to resolve().
 */
export async function resolveTargetPath(p: string): Promise<string> {
  if (!isAbsolute(p)) throw new ForbiddenError(`restore target "${p}" is not an absolute path`);
  if (p.split(/[\\/]+/).includes('..')) throw new ForbiddenError(`restore target "${p}" contains a ".." segment`);
  let cur = resolve(p);
  const rest: string[] = [];
  for (;;) {
    try {
      return join(await realpath(cur), ...rest.reverse());
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== 'ENOENT' && code !== 'ENOTDIR') throw new ForbiddenError(`cannot resolve restore target "${p}"`, { cause: err });
      const parent = dirname(cur);
      if (parent === cur) return resolve(p);
      rest.push(basename(cur));
      cur = parent;
    }
  }
}

function inside(child: string, dir: string): boolean {
  return child === dir || child.startsWith(dir.endsWith(sep) ? dir : dir + sep);
}

/** The files restoreArchive will write for `target` (mirrors src/restore/target.ts openTargets). */
async function outputPaths(target: string, deviceNames: string[]): Promise<string[]> {
  let isDir = false;
  try {
    isDir = (await stat(target)).isDirectory();
  } catch {
    isDir = target.endsWith('/') || deviceNames.length > 1;
  }
  return isDir ? deviceNames.map((n) => join(target, `${n}.raw`)) : [target];
}

/**
 * Throws ForbiddenError unless every output file of the job lies inside an
 * allowed directory and none is an exported disk.
 */
export async function checkRestoreTarget(target: string, deviceNames: string[], allowedDirs: string[], forbiddenPaths: string[]): Promise<string[]> {
  if (allowedDirs.length === 0) throw new ForbiddenError('this agent allows no restore targets (restore.allowedDirs is empty)');
  const resolvedTarget = await resolveTargetPath(target);
  const allowed = await Promise.all(allowedDirs.map((d) => resolveTargetPath(resolve(d))));
  const forbidden = await Promise.all(forbiddenPaths.map((f) => resolveTargetPath(resolve(f)).catch(() => resolve(f))));
  const outputs = await Promise.all((await outputPaths(resolvedTarget, deviceNames)).map((o) => resolveTargetPath(o)));
  for (const [i, o] of outputs.entries()) {
    const shown = outputs.length === 1 ? target : `${target} (${deviceNames[i]})`;
    if (!allowed.some((d) => inside(o, d))) {
      throw new ForbiddenError(`restore target ${shown} resolves to ${o}, outside the allowed directories (${allowedDirs.join(', ')})`);
    }
    if (forbidden.includes(o)) throw new ForbiddenError(`restore target ${shown} is an exported disk of this agent`);
  }
  return outputs;
}

export class RestorePoller {
  private readonly client: RestoreJobsApi;
  private readonly log: PollerLogger;
  private readonly agentId: string;
  private timer: NodeJS.Timeout | null = null;
  private running: Promise<unknown> | null = null;
  private stopped = true;
  private abort: AbortController | null = null;
  private ownCompressor: Compressor | null = null;
  /** Export jobs, polled with the restore jobs (exports start at once; restores run to their end). */
  readonly exportJobs: ExportJobRunner | null;

  constructor(private readonly opts: RestorePollerOptions) {
    if (!opts.client && !opts.catalogUrl) throw new RestoreError('RestorePoller needs a catalogue client or URL');
    const client = opts.client ?? new CatalogClient({ url: opts.catalogUrl!, ...(opts.catalogToken !== undefined ? { token: opts.catalogToken } : {}) });
    this.client = client;
    this.log = opts.log ?? quietLog;
    this.agentId = opts.agentId ?? `${opts.hostId}@${hostname()}:${process.pid}`;
    const { listExports, claimExport, reportExport, completeExport } = client;
    this.exportJobs =
      opts.archiveExports && listExports && claimExport && reportExport && completeExport
        ? new ExportJobRunner({
            client: client as ExportJobsApi,
            hostId: opts.hostId,
            agentId: this.agentId,
            exports: opts.archiveExports,
            bucket: opts.store?.bucket ?? null,
            reportIntervalMs: opts.progressIntervalMs ?? DEFAULT_PROGRESS_INTERVAL_MS,
            log: this.log,
          })
        : null;
  }

  private get pollInterval(): number {
    // COWSTREAM_RESTORE_POLL_MS lets the demo and tests poll faster without a config field.
    const env = Number(process.env.COWSTREAM_RESTORE_POLL_MS);
    return this.opts.pollIntervalMs ?? (Number.isInteger(env) && env >= 10 ? env : DEFAULT_POLL_INTERVAL_MS);
  }

  /** Starts polling in the background (first poll right away). */
  start(): void {
    if (!this.stopped) return;
    this.stopped = false;
    this.exportJobs?.start();
    this.schedule(0);
  }

  private schedule(ms: number): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      this.running = this.pollOnce()
        .catch((err) => this.log.warn('restore poll failed', { error: describeError(err) }))
        .finally(() => {
          this.running = null;
          this.schedule(this.pollInterval);
        });
    }, ms);
  }

  /** Stops polling; a running restore is aborted and its job marked FAILED. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.abort?.abort(new RestoreError('the agent is stopping'));
    await this.running?.catch(() => undefined);
    await this.exportJobs?.stop();
    if (this.ownCompressor) await this.ownCompressor.close().catch(() => undefined);
    this.ownCompressor = null;
  }

  /** One poll: claims and runs at most one PENDING job. Returns null when there was nothing to do. */
  async pollOnce(): Promise<RestoreRunOutcome | null> {
    await this.exportJobs?.pollOnce().catch((err: unknown) => this.log.warn('export job poll failed', { error: describeError(err) }));
    const page = await this.client.listRestores(this.opts.hostId, 'PENDING', 10);
    for (const job of page.items) {
      let claimed: RestoreJob;
      try {
        claimed = await this.client.claimRestore(job.id, this.agentId);
      } catch (err) {
        if (err instanceof ConflictError) continue; // another agent won, or it was cancelled
        throw err;
      }
      return this.runJob(claimed);
    }
    return null;
  }

  private compressor(): Compressor {
    if (this.opts.compressor) return this.opts.compressor;
    if (!this.ownCompressor) {
      // Loaded lazily: only agents that actually restore pay for the worker pool.
      throw new RestoreError('no compressor available');
    }
    return this.ownCompressor;
  }

  private async ensureCompressor(): Promise<void> {
    if (this.opts.compressor || this.ownCompressor) return;
    const { ZstdPool } = await import('../codec/zstd-pool.js');
    this.ownCompressor = new ZstdPool({ workers: 2 });
  }

  private async loadPlan(job: RestoreJob): Promise<RestorePlan> {
    const store = this.opts.store!;
    let text: string;
    try {
      const res = await store.client.send(new GetObjectCommand({ Bucket: store.bucket, Key: job.planKey }));
      if ((res.ContentLength ?? 0) > MAX_PLAN_BYTES) throw new RestoreError(`restore plan ${job.planKey} is larger than ${MAX_PLAN_BYTES} bytes`);
      text = (await res.Body?.transformToString('utf8')) ?? '';
    } catch (err) {
      if (err instanceof RestoreError) throw err;
      throw new StoreError(`cannot load restore plan s3://${store.bucket}/${job.planKey}`, { cause: err });
    }
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch (err) {
      throw new RestoreError(`restore plan ${job.planKey} is not JSON`, { cause: err });
    }
    const plan = parseRestorePlan(json);
    for (const link of plan.chain) {
      if (link.locator.kind !== 's3') throw new ForbiddenError(`restore plan reads a local file (${link.locator.path}); only archives in the agent's bucket are allowed`);
      if (link.locator.bucket !== store.bucket) {
        throw new ForbiddenError(`restore plan reads from bucket ${link.locator.bucket}; this agent only restores from ${store.bucket}`);
      }
    }
    return plan;
  }

  /** Executes one claimed job and completes it (SUCCEEDED or FAILED with the reason). */
  async runJob(job: RestoreJob): Promise<RestoreRunOutcome> {
    const log = this.log;
    log.info('restore job claimed', { jobId: job.id, archiveId: job.archiveId, target: job.target.path });
    const startTime = new Date().toISOString();
    let latest: RestoreProgress | null = null;
    let ticker: NodeJS.Timeout | null = null;
    this.abort = new AbortController();
    const abort = this.abort;
    // Every tick reports, changed or not: each report renews the job's lease in the
    // catalogue, which fails the job as "agent lost" when the reports stop.
    const sendProgress = async (): Promise<void> => {
      const p = latest ?? { bytesDone: 0, bytesTotal: 0 };
      try {
        await this.client.reportProgress(job.id, { agentId: this.agentId, bytesDone: p.bytesDone, bytesTotal: p.bytesTotal });
      } catch (err) {
        // 409: cancelled, or its lease expired (FAILED) in the catalogue — stop writing.
        if (err instanceof ConflictError) abort.abort(new RestoreError(`restore job ${job.id} is no longer this agent's (cancelled, or its lease expired): ${err.message}`));
        else log.warn('progress report failed', { jobId: job.id, error: describeError(err) });
      }
    };
    let outcome: RestoreRunOutcome;
    try {
      ticker = setInterval(() => void sendProgress(), this.opts.progressIntervalMs ?? DEFAULT_PROGRESS_INTERVAL_MS);
      if (!this.opts.store) throw new RestoreError('this agent has no S3 store to load the restore plan from');
      const plan = await this.loadPlan(job);
      const names = (job.devices && job.devices.length > 0 ? job.devices : plan.devices.map((d) => d.name));
      const forbidden = typeof this.opts.forbiddenPaths === 'function' ? this.opts.forbiddenPaths() : (this.opts.forbiddenPaths ?? []);
      await checkRestoreTarget(job.target.path, names, this.opts.allowedDirs, forbidden);
      await this.ensureCompressor();
      const store = this.opts.store;
      const result = await restoreArchive({
        plan,
        target: job.target.path,
        // The check above gives clear reasons; this open is what enforces them against a racing symlink.
        openTargets: (devices) => openConfinedTargets(job.target.path, devices, this.opts.allowedDirs),
        ...(job.devices && job.devices.length > 0 ? { devices: job.devices } : {}),
        compressor: this.compressor(),
        ...(this.opts.key ? { key: this.opts.key } : {}),
        signal: abort.signal,
        openSource: async (loc: ArchiveLocator) => {
          if (loc.kind !== 's3' || loc.bucket !== store.bucket) throw new ForbiddenError('restore plan locator outside the agent bucket');
          return S3RangeSource.open(store.client, loc.bucket, loc.key);
        },
        onProgress: (p) => {
          latest = p;
        },
      });
      clearInterval(ticker);
      ticker = null;
      latest = { ...(latest ?? { fetchedBytes: 0, rangesDone: 0, rangesTotal: 0 }), bytesDone: result.bytesTotal, bytesTotal: result.bytesTotal };
      await sendProgress();
      outcome = { jobId: job.id, ok: true, bytesTotal: result.bytesTotal };
    } catch (err) {
      outcome = { jobId: job.id, ok: false, error: describeError(err) };
    } finally {
      if (ticker) clearInterval(ticker);
      this.abort = null;
    }
    try {
      await this.client.completeRestore(job.id, { ok: outcome.ok, ...(outcome.error ? { error: outcome.error } : {}), agentId: this.agentId });
    } catch (err) {
      log.warn('could not complete restore job', { jobId: job.id, error: describeError(err) });
    }
    if (outcome.ok) log.info('restore job succeeded', { jobId: job.id, bytes: outcome.bytesTotal });
    else log.warn('restore job failed', { jobId: job.id, error: outcome.error });
    this.opts.onJobEnd?.(job, outcome, startTime);
    return outcome;
  }
}
