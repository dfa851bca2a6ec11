/**
 * Scheduled verification: walks the verify queue (least recently verified
 * first) and checks each archive's stored-payload SHA-256s and index
 * consistency with ranged reads — no key or codec needed, so the cloud side
 * never holds encryption keys. Stops before an archive that would exceed the
 * byte budget (but always checks at least one, so a huge archive is not
 * starved forever).
 */
import type { S3Client } from '@aws-sdk/client-s3';
import { CowstreamError, FormatError, describeError } from '../errors.js';
import { openArchive } from '../format/reader.js';
import { StoreNotFoundError } from '../store/errors.js';
import { S3RangeSource } from '../store/s3-source.js';
import { nullLogger, type Logger } from './log.js';
import type { CatalogRepository } from './repository.js';

export interface VerifyRunOptions {
  repo: CatalogRepository;
  s3: S3Client;
  /** Most bytes to read in one run (sum of archive sizes). */
  byteBudget: number;
  logger?: Logger;
}

export interface VerifyOutcome {
  uuid: string;
  ok: boolean;
  bytesRead: number;
  reason?: string;
}

export interface VerifyRunReport {
  checked: VerifyOutcome[];
  bytesRead: number;
  /** True when the budget ran out before the queue did. */
  budgetExhausted: boolean;
}

/** Verifies one archive object; returns null when it checks out, else the reason naming the bad extent. */
export async function verifyArchiveObject(s3: S3Client, bucket: string, key: string): Promise<{ reason: string | null; bytesRead: number }> {
  let source: S3RangeSource;
  try {
    source = await S3RangeSource.open(s3, bucket, key);
  } catch (err) {
    if (err instanceof StoreNotFoundError) return { reason: `object missing: ${err.message}`, bytesRead: 0 };
    throw err;
  }
  try {
    const reader = await openArchive(source);
    const r = await reader.verify();
    if (r.ok) return { reason: null, bytesRead: r.bytesChecked };
    const bad = r.firstBad!;
    const where = bad.seq >= 0 ? `extent ${bad.seq} at offset ${bad.offset} (${bad.length} bytes)` : `footer at offset ${bad.offset}`;
    return { reason: `${where}: ${bad.code}: ${bad.message}`, bytesRead: r.bytesChecked };
  } catch (err) {
    if (err instanceof FormatError || (err instanceof CowstreamError && err.code === 'CODEC')) {
      return { reason: `${err.code}: ${err.message}`, bytesRead: 0 };
    }
    throw err;
  } finally {
    await source.close();
  }
}

export async function runVerify(opts: VerifyRunOptions): Promise<VerifyRunReport> {
  const logger = opts.logger ?? nullLogger;
  const report: VerifyRunReport = { checked: [], bytesRead: 0, budgetExhausted: false };
  let cursor: string | undefined;
  let planned = 0;
  const seen = new Set<string>();
  outer: do {
    const page = await opts.repo.verifyQueue(25, cursor);
    for (const a of page.items) {
      // A re-queued VERIFIED archive can reappear at the back of the queue within one run.
      if (seen.has(a.uuid)) continue;
      seen.add(a.uuid);
      if (report.checked.length > 0 && planned + a.bytesStored > opts.byteBudget) {
        report.budgetExhausted = true;
        break outer;
      }
      planned += a.bytesStored;
      try {
        const { reason, bytesRead } = await verifyArchiveObject(opts.s3, a.bucket, a.key);
        report.bytesRead += bytesRead;
        await opts.repo.recordVerification(a.uuid, reason === null, reason ?? undefined);
        report.checked.push({ uuid: a.uuid, ok: reason === null, bytesRead, ...(reason ? { reason } : {}) });
        if (reason) logger.warn('archive CORRUPT', { uuid: a.uuid, key: a.key, reason });
        else logger.info('archive VERIFIED', { uuid: a.uuid, bytesRead });
      } catch (err) {
        // Transient (S3 unavailable): leave it in the queue for the next run.
        logger.error('verify failed', { uuid: a.uuid, error: describeError(err) });
      }
    }
    cursor = page.cursor;
  } while (cursor);
  return report;
}
