/**
 * Applies a retention policy to the catalogue: plans with planPrune(), then
 * deletes objects youngest first. Each deletion re-checks for live children
 * right before deleting, because an incremental may have been indexed since
 * the plan was made; such an archive is skipped, never orphaned.
 */
import { DeleteObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { describeError } from '../errors.js';
import { nullLogger, type Logger } from './log.js';
import type { CatalogRepository } from './repository.js';
import { planPrune, type PruneDecision, type RetentionConfig } from './retention.js';

export interface PruneOptions {
  repo: CatalogRepository;
  s3: S3Client;
  config: RetentionConfig;
  dryRun: boolean;
  /** Defaults to every host in the catalogue. */
  hosts?: string[];
  logger?: Logger;
}

export interface PruneReport {
  dryRun: boolean;
  deleted: PruneDecision[];
  wouldDelete: PruneDecision[];
  kept: number;
  skipped: Array<PruneDecision & { reason: string }>;
}

export async function runPrune(opts: PruneOptions): Promise<PruneReport> {
  const logger = opts.logger ?? nullLogger;
  const hosts = opts.hosts ?? (await opts.repo.listHosts()).map((h) => h.hostId);
  const report: PruneReport = { dryRun: opts.dryRun, deleted: [], wouldDelete: [], kept: 0, skipped: [] };
  for (const hostId of hosts) {
    const archives = await opts.repo.allArchivesOfHost(hostId);
    const plan = planPrune(archives, opts.config);
    report.kept += plan.keep.size;
    if (opts.dryRun) {
      report.wouldDelete.push(...plan.delete);
      continue;
    }
    for (const d of plan.delete) {
      try {
        // Children in this plan were deleted first (deepest first); any live child blocks.
        const live = await opts.repo.listChildren(d.uuid);
        if (live.length > 0) {
          report.skipped.push({ ...d, reason: `still the parent of ${live.map((c) => c.uuid).join(', ')}` });
          continue;
        }
        await opts.s3.send(new DeleteObjectCommand({ Bucket: d.bucket, Key: d.key }));
        await opts.repo.markDeleted(d.uuid, undefined, 'pruned by retention policy');
        report.deleted.push(d);
        logger.info('pruned archive', { uuid: d.uuid, hostId, key: d.key });
      } catch (err) {
        report.skipped.push({ ...d, reason: describeError(err) });
        logger.error('prune failed for archive', { uuid: d.uuid, error: describeError(err) });
      }
    }
  }
  return report;
}
