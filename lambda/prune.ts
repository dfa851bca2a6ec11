/**
 * Lambda (scheduled): applies the RETENTION policy (JSON) chain-aware.
 * DRY_RUN=true (or an event `{ "dryRun": true }`) only reports.
 * Thin wrapper over src/catalog/prune.ts.
 */
import { ConfigError } from '../src/errors.js';
import { createLogger } from '../src/catalog/log.js';
import { runPrune, type PruneReport } from '../src/catalog/prune.js';
import { parseRetentionConfig } from '../src/catalog/retention.js';
import { catalogRuntimeFromEnv } from '../src/catalog/runtime.js';

const logger = createLogger('cowstream-prune');

export const handler = async (event: { dryRun?: boolean } = {}): Promise<PruneReport> => {
  const rt = catalogRuntimeFromEnv();
  let raw: unknown;
  try {
    raw = JSON.parse(process.env.RETENTION ?? '{}');
  } catch (err) {
    throw new ConfigError('RETENTION is not valid JSON', { cause: err });
  }
  const config = parseRetentionConfig(raw);
  const dryRun = typeof event?.dryRun === 'boolean' ? event.dryRun : process.env.DRY_RUN === 'true';
  const report = await runPrune({ repo: rt.repo, s3: rt.s3, config, dryRun, logger });
  logger.info('prune run done', { dryRun, deleted: report.deleted.length, wouldDelete: report.wouldDelete.length, skipped: report.skipped.length });
  return report;
};
