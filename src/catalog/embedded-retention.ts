/**
 * Retention for the embedded catalogue: after an archive is indexed, the
 * configured policy is applied to its host with runPrune — the prune
 * Lambda's planner (planPrune) and deletion step (applyDeletions), one
 * implementation. Runs are serialized (two overlapping runs could plan from
 * the same snapshot and race on the same objects), and a host already
 * waiting for a run is not queued twice, so a burst of uploads (or the
 * start-up scan) costs one run per host, not one per archive. A failed run is
 * logged and never fails indexing.
 */
import type { S3Client } from '@aws-sdk/client-s3';
import { describeError } from '../errors.js';
import type { Logger } from './log.js';
import { runPrune } from './prune.js';
import type { CatalogRepository } from './repository.js';
import type { RetentionConfig } from './retention.js';

export interface RetentionRunner {
  /** Schedules a run for `hostId` (coalesced with one already waiting). */
  request(hostId: string): void;
  /** Resolves once every requested run has finished. */
  idle(): Promise<void>;
}

export function createRetentionRunner(opts: { repo: CatalogRepository; s3: S3Client; config: RetentionConfig; logger: Logger }): RetentionRunner {
  let chain: Promise<void> = Promise.resolve();
  const waiting = new Set<string>();
  return {
    request(hostId) {
      if (waiting.has(hostId)) return;
      waiting.add(hostId);
      chain = chain.then(async () => {
        // Leave the waiting set first: an archive indexed during this run asks for another.
        waiting.delete(hostId);
        try {
          const r = await runPrune({ repo: opts.repo, s3: opts.s3, config: opts.config, dryRun: false, hosts: [hostId], logger: opts.logger });
          opts.logger.info('retention applied', { hostId, deleted: r.deleted.map((d) => d.uuid), kept: r.kept, skipped: r.skipped.map((s) => ({ uuid: s.uuid, reason: s.reason })) });
        } catch (err) {
          opts.logger.error('retention failed', { hostId, error: describeError(err) });
        }
      });
    },
    async idle() {
      let seen: Promise<void>;
      do {
        seen = chain;
        await seen;
      } while (seen !== chain);
    },
  };
}
