/**
 * Executes the deletions of a retention plan (retention.ts), for the prune
 * Lambda over the catalogue and for `forget` over a bucket alike.
 *
 * Plans are made from a snapshot; an incremental may have arrived since. So
 * each deletion first asks for live children and skips an archive that has
 * one: never orphaned. A refused delete (Object Lock, a policy, a network
 * error) is reported with its reason and the run goes on: one locked archive
 * must not stop the rest of the policy.
 */
import { describeError } from '../errors.js';
import type { Logger } from './log.js';
import type { PruneDecision } from './retention.js';

export interface DeletionOps {
  /** Uuids of archives that still depend on `uuid` right now. */
  liveChildren(uuid: string): Promise<string[]>;
  /** Deletes the object (and whatever record the caller keeps). */
  remove(d: PruneDecision): Promise<void>;
}

export interface DeletionOutcome {
  deleted: PruneDecision[];
  skipped: Array<PruneDecision & { reason: string }>;
}

/** `decisions` must be youngest first (planPrune's order), so children go before parents. */
export async function applyDeletions(decisions: readonly PruneDecision[], ops: DeletionOps, logger: Logger): Promise<DeletionOutcome> {
  const out: DeletionOutcome = { deleted: [], skipped: [] };
  for (const d of decisions) {
    try {
      const live = await ops.liveChildren(d.uuid);
      if (live.length > 0) {
        out.skipped.push({ ...d, reason: `still the parent of ${live.join(', ')}` });
        continue;
      }
      await ops.remove(d);
      out.deleted.push(d);
      logger.info('deleted archive', { uuid: d.uuid, hostId: d.hostId, key: d.key });
    } catch (err) {
      out.skipped.push({ ...d, reason: refusalReason(err) });
      logger.error('could not delete archive', { uuid: d.uuid, key: d.key, error: describeError(err) });
    }
  }
  return out;
}

/** S3 answers AccessDenied for a delete that Object Lock or a policy forbids; say which it may be. */
function refusalReason(err: unknown): string {
  const name = (err as { name?: string }).name;
  if (name === 'AccessDenied' || (err as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode === 403) {
    return `delete refused (Object Lock retention or a bucket policy): ${describeError(err)}`;
  }
  return describeError(err);
}
