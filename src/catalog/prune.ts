/**
 * Applies a retention policy to the catalogue: plans with planPrune(), then
 * deletes objects youngest first. Each deletion re-checks for live children
 * right before deleting, because an incremental may have been indexed since
 * the plan was made; such an archive is skipped, never orphaned.
 */
import { DeleteObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { applyDeletions } from './apply-deletions.js';
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
    const done = await applyDeletions(
      plan.delete,
      {
        liveChildren: async (uuid) => (await opts.repo.listChildren(uuid)).map((c) => c.uuid),
        remove: async (d) => {
          await opts.s3.send(new DeleteObjectCommand({ Bucket: d.bucket, Key: d.key }));
          await opts.repo.markDeleted(d.uuid, undefined, 'pruned by retention policy');
        },
      },
      logger.child({ hostId }),
    );
    report.deleted.push(...done.deleted);
    report.skipped.push(...done.skipped);
  }
  return report;
}
