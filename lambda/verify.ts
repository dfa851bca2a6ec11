/**
 * Lambda (scheduled): verifies the least recently verified archives, up to
 * VERIFY_BYTE_BUDGET bytes per run (default 1 GiB). Thin wrapper over
 * src/catalog/verify.ts.
 */
import { createLogger } from '../src/catalog/log.js';
import { catalogRuntimeFromEnv, intEnv } from '../src/catalog/runtime.js';
import { runVerify, type VerifyRunReport } from '../src/catalog/verify.js';

const logger = createLogger('cowstream-verify');

export const handler = async (event: { byteBudget?: number } = {}): Promise<VerifyRunReport> => {
  const rt = catalogRuntimeFromEnv();
  const byteBudget = typeof event?.byteBudget === 'number' && event.byteBudget > 0 ? event.byteBudget : intEnv(process.env, 'VERIFY_BYTE_BUDGET', 1024 ** 3);
  const report = await runVerify({ repo: rt.repo, s3: rt.s3, byteBudget, logger });
  logger.info('verify run done', { checked: report.checked.length, corrupt: report.checked.filter((c) => !c.ok).length, bytesRead: report.bytesRead });
  return report;
};
