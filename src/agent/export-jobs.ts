/**
 * The agent's side of the catalogue's export jobs: claims this host's
 * PENDING export jobs, serves each archive through ArchiveExports (the same
 * path as POST /exports, with its limits and overlay confinement), reports
 * the NBD URIs, and keeps reporting so the job's lease stays renewed. When
 * a report is refused (the operator ended the export, or the lease expired)
 * the export is removed; when the export was removed on the agent, the job
 * is completed.
 *
 * The catalogue is not trusted to choose what the agent reads or writes:
 * the archive must be in the agent's own bucket, and the overlay path is
 * confined like a restore target.
 */
import { ConflictError, describeError } from '../errors.js';
import type { CatalogClient } from '../catalog/client.js';
import type { ExportJob } from '../catalog/records.js';
import type { ArchiveExports, ExportInfo } from './archive-exports.js';

export type ExportJobsApi = Pick<CatalogClient, 'listExports' | 'claimExport' | 'reportExport' | 'completeExport'>;

export interface ExportJobLogger {
  info(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
}

export interface ExportJobRunnerOptions {
  client: ExportJobsApi;
  hostId: string;
  agentId: string;
  exports: ArchiveExports;
  /** The agent's bucket; null when it has no store (every job fails). */
  bucket: string | null;
  /** How often served jobs are reported (each report renews the lease). */
  reportIntervalMs: number;
  log: ExportJobLogger;
}

export class ExportJobRunner {
  /** Job id → export set id of the jobs this agent serves. */
  private readonly serving = new Map<string, string>();
  private timer: NodeJS.Timeout | null = null;
  private reporting: Promise<void> | null = null;

  constructor(private readonly opts: ExportJobRunnerOptions) {}

  start(): void {
    this.timer ??= setInterval(() => {
      this.reporting ??= this.reportAll().finally(() => (this.reporting = null));
    }, this.opts.reportIntervalMs);
  }

  /** Claims and serves this host's PENDING export jobs; returns how many were served. */
  async pollOnce(): Promise<number> {
    const { client, hostId, agentId, log } = this.opts;
    const page = await client.listExports(hostId, 'PENDING', 10);
    let served = 0;
    for (const job of page.items) {
      let claimed: ExportJob;
      try {
        claimed = await client.claimExport(job.id, agentId);
      } catch (err) {
        if (err instanceof ConflictError) continue; // another agent won, or it was ended
        throw err;
      }
      log.info('export job claimed', { jobId: job.id, archiveId: job.archiveId });
      if (await this.serve(claimed)) served++;
    }
    return served;
  }

  private async serve(job: ExportJob): Promise<boolean> {
    const { client, agentId, exports, bucket, log } = this.opts;
    let info: ExportInfo | null = null;
    try {
      if (bucket === null) throw new ConflictError('this agent has no S3 store to serve archives from');
      // An s3:// ref of another bucket is refused by ArchiveExports: only the agent's own bucket is served.
      info = await exports.add(
        {
          ref: `s3://${job.locator.bucket}/${job.locator.key}`,
          ...(job.devices && job.devices.length > 0 ? { disks: job.devices } : {}),
          ...(job.overlay !== undefined ? { overlay: job.overlay } : {}),
          ...(job.cache ? { cache: job.cache } : {}),
        },
        { jobId: job.id },
      );
      this.serving.set(job.id, info.id);
      await client.reportExport(job.id, {
        agentId,
        served: { exportId: info.id, exports: info.exports.map((e) => ({ name: e.name, disk: e.disk, size: e.size, uris: e.uris })) },
      });
      log.info('export job serving', { jobId: job.id, exportId: info.id, exports: info.exports.map((e) => e.name) });
      return true;
    } catch (err) {
      if (info) {
        this.serving.delete(job.id);
        await exports.remove(info.id, 'its catalogue job ended').catch(() => undefined);
      }
      const error = describeError(err);
      log.warn('export job failed', { jobId: job.id, error });
      await client.completeExport(job.id, { ok: false, error, agentId }).catch((e: unknown) => log.warn('could not complete export job', { jobId: job.id, error: describeError(e) }));
      return false;
    }
  }

  /** Renews every served job's lease; ends the exports whose job was ended, and the jobs whose export was removed here. */
  async reportAll(): Promise<void> {
    const { client, agentId, exports, log } = this.opts;
    const present = new Set(exports.list().map((e) => e.id));
    for (const [jobId, exportId] of [...this.serving]) {
      if (!present.has(exportId)) {
        this.serving.delete(jobId);
        await client.completeExport(jobId, { ok: true, agentId }).catch((e: unknown) => log.warn('could not complete export job', { jobId, error: describeError(e) }));
        continue;
      }
      try {
        await client.reportExport(jobId, { agentId });
      } catch (err) {
        if (!(err instanceof ConflictError)) {
          log.warn('export report failed', { jobId, error: describeError(err) });
          continue;
        }
        // Ended by the operator, or the lease ran out: the job is no longer this agent's to serve.
        this.serving.delete(jobId);
        await exports.remove(exportId, 'its catalogue job ended').catch(() => undefined);
        log.info('export job ended', { jobId, exportId, reason: err.message });
      }
    }
  }

  /** Stops reporting; the served exports are removed and their jobs failed with the reason. */
  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    await this.reporting;
    const { client, agentId, exports, log } = this.opts;
    for (const [jobId, exportId] of [...this.serving]) {
      this.serving.delete(jobId);
      await exports.remove(exportId, 'the agent is stopping').catch(() => undefined);
      await client.completeExport(jobId, { ok: false, error: 'the agent stopped serving it', agentId }).catch((e: unknown) => log.warn('could not complete export job', { jobId, error: describeError(e) }));
    }
  }
}
