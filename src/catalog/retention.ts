/**
 * Retention policy evaluation (pure). Buckets follow restic's `forget`
 * semantics: walking archives newest first, keepDaily N keeps the newest
 * archive of each of the N most recent days that have one (likewise hours,
 * weeks, months, years; all in UTC); keepLast N keeps the N newest. A policy with no positive rule
 * keeps everything — an empty policy must never mean "delete all".
 *
 * Chain awareness: an incremental archive is useless without its ancestors,
 * so every ancestor of an archive that stays is kept too, and deletions are
 * ordered youngest first so that at no moment does a live archive depend on
 * a deleted one.
 */
import { z } from 'zod';
import { ConfigError } from '../errors.js';
import type { ArchiveRecord } from './records.js';
import { formatZodIssues } from '../zod-issues.js';
import { HOST_DISK_PATTERN, HOST_ID_PATTERN } from '../names.js';

const count = z.number().int().nonnegative().max(100_000);
export const retentionPolicySchema = z
  .object({
    keepLast: count.optional(),
    keepHourly: count.optional(),
    keepDaily: count.optional(),
    keepWeekly: count.optional(),
    keepMonthly: count.optional(),
    keepYearly: count.optional(),
  })
  .strict();
export type RetentionPolicy = z.infer<typeof retentionPolicySchema>;


/** The one retention schema: the prune Lambda, the CDK context, `forget` and the agents use it. */
export const retentionConfigSchema = retentionPolicySchema
  .extend({
    /** Per-host overrides. */
    hosts: z.record(z.string().regex(HOST_ID_PATTERN, 'host id'), retentionPolicySchema).optional(),
    /** Per-disk overrides, keyed `<host>/<disk>`. */
    disks: z.record(z.string().regex(HOST_DISK_PATTERN, '"<host>/<disk>"'), retentionPolicySchema).optional(),
  })
  .strict();
export type RetentionConfig = z.infer<typeof retentionConfigSchema>;

export function parseRetentionConfig(value: unknown): RetentionConfig {
  const r = retentionConfigSchema.safeParse(value);
  if (!r.success) throw new ConfigError(`invalid retention policy: ${formatZodIssues(r.error.issues)}`);
  return r.data;
}

/** Archives that count toward the policy; others are never chosen by it. */
const RESTORABLE = new Set(['INDEXED', 'VERIFIED']);

export interface PruneDecision {
  uuid: string;
  hostId: string;
  createdAt: string;
  key: string;
  bucket: string;
}

export interface PrunePlan {
  /** Archives to delete, youngest first (children before parents). */
  delete: PruneDecision[];
  /** uuid → why it is kept (policy rule or "ancestor of …"). */
  keep: Map<string, string>;
}

function isEmpty(p: RetentionPolicy): boolean {
  return !(p.keepLast || p.keepHourly || p.keepDaily || p.keepWeekly || p.keepMonthly || p.keepYearly);
}

function hourKey(d: Date): string {
  return d.toISOString().slice(0, 13);
}
function yearKey(d: Date): string {
  return d.toISOString().slice(0, 4);
}
function dayKey(d: Date): string {
  return d.toISOString().slice(0, 10);
}
function monthKey(d: Date): string {
  return d.toISOString().slice(0, 7);
}
/** ISO-8601 week (UTC), e.g. 2026-W05. */
function weekKey(d: Date): string {
  const t = new Date(Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate()));
  const dow = t.getUTCDay() || 7;
  t.setUTCDate(t.getUTCDate() + 4 - dow);
  const yearStart = Date.UTC(t.getUTCFullYear(), 0, 1);
  const week = Math.ceil(((t.getTime() - yearStart) / 86_400_000 + 1) / 7);
  return `${t.getUTCFullYear()}-W${String(week).padStart(2, '0')}`;
}

/** Which of `newestFirst` a single policy keeps, with the rule that keeps each. */
export function applyPolicy(newestFirst: readonly ArchiveRecord[], policy: RetentionPolicy): Map<string, string> {
  const kept = new Map<string, string>();
  if (isEmpty(policy)) {
    for (const a of newestFirst) kept.set(a.uuid, 'empty policy keeps everything');
    return kept;
  }
  newestFirst.slice(0, policy.keepLast ?? 0).forEach((a) => kept.set(a.uuid, 'keepLast'));
  const buckets: Array<[keyof RetentionPolicy, (d: Date) => string]> = [
    ['keepHourly', hourKey],
    ['keepDaily', dayKey],
    ['keepWeekly', weekKey],
    ['keepMonthly', monthKey],
    ['keepYearly', yearKey],
  ];
  for (const [rule, keyOf] of buckets) {
    let left = policy[rule] ?? 0;
    let last: string | undefined;
    for (const a of newestFirst) {
      if (left <= 0) break;
      const k = keyOf(new Date(a.createdAt));
      if (k === last) continue;
      last = k;
      left--;
      if (!kept.has(a.uuid)) kept.set(a.uuid, rule);
    }
  }
  return kept;
}

export function policyFor(config: RetentionConfig, hostId: string, disk: string): RetentionPolicy {
  const { hosts, disks, ...base } = config;
  return disks?.[`${hostId}/${disk}`] ?? hosts?.[hostId] ?? base;
}

function byNewest(a: ArchiveRecord, b: ArchiveRecord): number {
  return a.createdAt < b.createdAt ? 1 : a.createdAt > b.createdAt ? -1 : a.uuid < b.uuid ? 1 : -1;
}

/**
 * Plans a prune over every archive of the given hosts (all statuses, so
 * that chains can be followed). Only INDEXED/VERIFIED archives are ever
 * deleted; REJECTED and CORRUPT ones are left for an operator to inspect.
 */
export function planPrune(archives: readonly ArchiveRecord[], config: RetentionConfig): PrunePlan {
  const byId = new Map(archives.map((a) => [a.uuid, a]));
  const live = archives.filter((a) => a.status !== 'DELETED');
  const candidates = live.filter((a) => RESTORABLE.has(a.status));
  const keep = new Map<string, string>();

  // 1. The policy, per host and disk; an archive is kept if any of its disks' policy keeps it.
  const groups = new Map<string, ArchiveRecord[]>();
  for (const a of candidates) {
    for (const d of a.devices) {
      const g = `${a.hostId}\u0000${d.name}`;
      const list = groups.get(g) ?? [];
      list.push(a);
      groups.set(g, list);
    }
  }
  for (const [g, list] of groups) {
    const [hostId, disk] = g.split('\u0000') as [string, string];
    list.sort(byNewest);
    for (const [uuid, why] of applyPolicy(list, policyFor(config, hostId, disk))) {
      if (!keep.has(uuid)) keep.set(uuid, `${why} (${disk})`);
    }
  }
  // Archives the policy does not govern (REJECTED, CORRUPT) stay, and so must what they depend on.
  for (const a of live) if (!RESTORABLE.has(a.status)) keep.set(a.uuid, `${a.status} archives are not pruned`);

  // 2. Chain closure: every ancestor of a kept archive is kept.
  for (const uuid of [...keep.keys()]) {
    const seen = new Set<string>([uuid]);
    let cur = byId.get(uuid)?.parentUuid ?? null;
    while (cur !== null && !seen.has(cur)) {
      seen.add(cur);
      if (!keep.has(cur)) keep.set(cur, `ancestor of ${uuid}`);
      cur = byId.get(cur)?.parentUuid ?? null;
    }
  }

  // 3. Deletion order: deepest first, so a child always goes before its parent.
  const depth = (a: ArchiveRecord): number => {
    let n = 0;
    const seen = new Set<string>();
    for (let cur = a.parentUuid; cur !== null && !seen.has(cur); cur = byId.get(cur)?.parentUuid ?? null) {
      seen.add(cur);
      n++;
    }
    return n;
  };
  const del = candidates
    .filter((a) => !keep.has(a.uuid))
    .map((a) => ({ a, d: depth(a) }))
    .sort((x, y) => y.d - x.d || byNewest(x.a, y.a))
    .map(({ a }) => ({ uuid: a.uuid, hostId: a.hostId, createdAt: a.createdAt, key: a.key, bucket: a.bucket }));
  return { delete: del, keep };
}
