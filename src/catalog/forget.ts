/**
 * `forget`: a retention policy applied straight to a bucket, with no
 * catalogue service: list (bucket-listing.ts), plan (retention.ts, the same
 * chain-aware planner as the prune Lambda), delete (apply-deletions.ts).
 *
 * --host/--disk narrow the policy, not the chains: archives outside the
 * filter get an empty policy, which keeps everything, so an ancestor of a
 * kept archive is kept whatever the filter says.
 */
import { DeleteObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { applyDeletions } from './apply-deletions.js';
import { listBucketArchives } from './bucket-listing.js';
import type { ListingCache } from './listing-cache.js';
import { nullLogger, type Logger } from './log.js';
import type { ArchiveRecord } from './records.js';
import { planPrune, type PruneDecision, type RetentionConfig, type RetentionPolicy } from './retention.js';

export interface ForgetOptions {
  client: S3Client;
  bucket: string;
  prefix?: string;
  policy: RetentionPolicy;
  host?: string;
  /** One disk, or several (an agent's schedule group: each disk gets the policy). */
  disk?: string | readonly string[];
  dryRun: boolean;
  cache?: ListingCache;
  endpoint?: string;
  logger?: Logger;
}

export interface ForgetReport {
  dryRun: boolean;
  /** Deleted (or, in a dry run, to be deleted), youngest first. */
  removed: PruneDecision[];
  /** uuid → why it stays. */
  kept: Array<{ uuid: string; hostId: string; createdAt: string; why: string }>;
  /** Planned but not deleted, with the reason (a new child, Object Lock, an error). */
  skipped: Array<PruneDecision & { reason: string }>;
}

/** The policy for the filtered host/disk only; everything else keeps everything. */
function scopedConfig(archives: readonly ArchiveRecord[], policy: RetentionPolicy, host?: string, disk?: string | readonly string[]): RetentionConfig {
  const disks = disk === undefined ? [] : typeof disk === 'string' ? [disk] : disk;
  if (host === undefined && disks.length === 0) return { ...policy };
  if (disks.length === 0) return { hosts: { [host!]: policy } };
  const hosts = host !== undefined ? [host] : [...new Set(archives.map((a) => a.hostId))];
  return { disks: Object.fromEntries(hosts.flatMap((h) => disks.map((d) => [`${h}/${d}`, policy]))) };
}

export async function forget(opts: ForgetOptions): Promise<ForgetReport> {
  const listingOpts = { client: opts.client, bucket: opts.bucket, prefix: opts.prefix, cache: opts.cache, endpoint: opts.endpoint };
  const { archives } = await listBucketArchives(listingOpts);
  const plan = planPrune(archives, scopedConfig(archives, opts.policy, opts.host, opts.disk));
  const byId = new Map(archives.map((a) => [a.uuid, a]));
  const kept = [...plan.keep].map(([uuid, why]) => ({ uuid, hostId: byId.get(uuid)?.hostId ?? '-', createdAt: byId.get(uuid)?.createdAt ?? '-', why }));
  if (opts.dryRun || plan.delete.length === 0) return { dryRun: opts.dryRun, removed: plan.delete, kept, skipped: [] };

  // An incremental uploaded since the listing must keep its parent: list again
  // right before deleting, and treat every child not deleted by this run as live.
  const removedNow = new Set<string>();
  const childrenOf = new Map<string, string[]>();
  for (const a of (await listBucketArchives(listingOpts)).archives) {
    if (a.status === 'REJECTED' || a.parentUuid === null) continue;
    const siblings = childrenOf.get(a.parentUuid);
    if (siblings) siblings.push(a.uuid);
    else childrenOf.set(a.parentUuid, [a.uuid]);
  }
  const done = await applyDeletions(
    plan.delete,
    {
      liveChildren: async (uuid) => (childrenOf.get(uuid) ?? []).filter((c) => !removedNow.has(c)),
      remove: async (d) => {
        await opts.client.send(new DeleteObjectCommand({ Bucket: d.bucket, Key: d.key }));
        removedNow.add(d.uuid);
      },
    },
    opts.logger ?? nullLogger,
  );
  return { dryRun: false, removed: done.deleted, kept, skipped: done.skipped };
}
