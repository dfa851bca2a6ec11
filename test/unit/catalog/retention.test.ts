import { describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { applyPolicy, planPrune, parseRetentionConfig, type RetentionConfig } from '../../../src/catalog/retention.js';
import type { ArchiveRecord, ArchiveStatus } from '../../../src/catalog/records.js';
import { ConfigError } from '../../../src/errors.js';
import { archiveRecord } from './fixtures.js';
import { mulberry32 } from '../../helpers/prng.js';

/** mulberry32: a tiny seeded PRNG so a failing seed can be replayed. */
const prng: (seed: number) => () => number = mulberry32;

function randomHistory(rand: () => number): ArchiveRecord[] {
  const out: ArchiveRecord[] = [];
  const hosts = ['h1', 'h2', 'h3'].slice(0, 1 + Math.floor(rand() * 3));
  for (const hostId of hosts) {
    let t = Date.UTC(2025, 0, 1) + Math.floor(rand() * 86_400_000);
    const n = 5 + Math.floor(rand() * 60);
    const hostArchives: ArchiveRecord[] = [];
    for (let i = 0; i < n; i++) {
      // Backups every few minutes to a few weeks apart, so day/week/month buckets all matter.
      t += Math.floor(rand() ** 3 * 30 * 86_400_000) + 60_000;
      const disks = rand() < 0.7 ? ['vda'] : rand() < 0.5 ? ['vda', 'vdb'] : ['vdb'];
      const parentPool = hostArchives.filter((a) => a.status !== 'DELETED');
      const full = parentPool.length === 0 || rand() < 0.2;
      // Usually the newest archive is the parent; sometimes an older one (a re-based chain).
      const parent = full ? null : rand() < 0.8 ? parentPool[parentPool.length - 1]! : parentPool[Math.floor(rand() * parentPool.length)]!;
      const r = rand();
      const status: ArchiveStatus = r < 0.06 ? 'REJECTED' : r < 0.1 ? 'CORRUPT' : r < 0.15 ? 'DELETED' : r < 0.4 ? 'VERIFIED' : 'INDEXED';
      const a = archiveRecord({
        hostId,
        createdAt: new Date(t).toISOString(),
        devices: disks.map((name) => ({ name, size: 1 << 20 })),
        parentUuid: parent?.uuid ?? null,
        chainDepth: parent ? parent.chainDepth + 1 : 0,
        status,
      });
      hostArchives.push(a);
    }
    out.push(...hostArchives);
  }
  return out;
}

function randomConfig(rand: () => number): RetentionConfig {
  const pick = (): number | undefined => (rand() < 0.4 ? undefined : Math.floor(rand() * 6));
  const cfg: RetentionConfig = { keepLast: pick(), keepDaily: pick(), keepWeekly: pick(), keepMonthly: pick() };
  if (rand() < 0.3) cfg.hosts = { h2: { keepLast: Math.floor(rand() * 4) } };
  if (rand() < 0.3) cfg.disks = { 'h1/vdb': { keepDaily: Math.floor(rand() * 4) } };
  return cfg;
}

/** Surviving archives whose ancestor is in `deleted` (the invariant prune must keep at zero). */
function brokenChains(history: ArchiveRecord[], deleted: Set<string>): string[] {
  const byId = new Map(history.map((a) => [a.uuid, a]));
  const out: string[] = [];
  for (const a of history) {
    if (a.status === 'DELETED' || deleted.has(a.uuid)) continue;
    for (let p = a.parentUuid; p !== null; p = byId.get(p)?.parentUuid ?? null) if (deleted.has(p)) out.push(`${a.uuid} → ${p}`);
  }
  return out;
}

describe('retention', () => {
  it('control: the invariant check catches a policy-only (chain-unaware) prune', () => {
    let caught = 0;
    for (let seed = 1; seed <= 50; seed++) {
      const rand = prng(seed);
      const history = randomHistory(rand);
      const config = randomConfig(rand);
      // Naive: delete every restorable archive the base policy does not keep for its first disk.
      const live = history.filter((a) => a.status === 'INDEXED' || a.status === 'VERIFIED');
      const kept = applyPolicy([...live].sort((x, y) => (x.createdAt < y.createdAt ? 1 : -1)), config);
      const naive = new Set(live.filter((a) => !kept.has(a.uuid)).map((a) => a.uuid));
      if (brokenChains(history, naive).length > 0) caught++;
    }
    expect(caught).toBeGreaterThan(0);
  });

  it('property: over random histories a kept archive never loses an ancestor, and children go first', () => {
    let totalDeleted = 0;
    for (let seed = 1; seed <= 200; seed++) {
      const rand = prng(seed);
      const history = randomHistory(rand);
      const config = randomConfig(rand);
      const plan = planPrune(history, config);
      const byId = new Map(history.map((a) => [a.uuid, a]));
      const deleted = new Set(plan.delete.map((d) => d.uuid));
      totalDeleted += deleted.size;
      const ctx = `seed ${seed} config ${JSON.stringify(config)}`;
      expect(brokenChains(history, deleted), ctx).toEqual([]);
      // Only INDEXED/VERIFIED archives are ever deleted.
      for (const d of plan.delete) expect(['INDEXED', 'VERIFIED'], ctx).toContain(byId.get(d.uuid)!.status);
      // Order: every deleted archive comes before its deleted parent.
      const pos = new Map(plan.delete.map((d, i) => [d.uuid, i]));
      for (const d of plan.delete) {
        const parent = byId.get(d.uuid)!.parentUuid;
        if (parent && pos.has(parent)) expect(pos.get(parent)!, ctx).toBeGreaterThan(pos.get(d.uuid)!);
      }
      // keepLast of the base policy is honoured per disk for hosts/disks without overrides.
      if (config.keepLast && !config.hosts && !config.disks) {
        const h1vda = history
          .filter((a) => a.hostId === 'h1' && (a.status === 'INDEXED' || a.status === 'VERIFIED') && a.devices.some((d) => d.name === 'vda'))
          .sort((x, y) => (x.createdAt < y.createdAt ? 1 : -1))
          .slice(0, config.keepLast);
        for (const a of h1vda) expect(deleted.has(a.uuid), ctx).toBe(false);
      }
    }
    expect(totalDeleted).toBeGreaterThan(100); // the generator really exercises deletion
  });

  it('an empty policy keeps everything', () => {
    const history = randomHistory(prng(42));
    expect(planPrune(history, {}).delete).toEqual([]);
    expect(planPrune(history, { keepLast: 0 }).delete).toEqual([]);
  });

  it('buckets by day, ISO week and month', () => {
    const at = (iso: string): ArchiveRecord => archiveRecord({ hostId: 'h', createdAt: iso, uuid: randomUUID() });
    const list = [
      at('2026-03-10T12:00:00.000Z'),
      at('2026-03-10T08:00:00.000Z'), // same day as the previous
      at('2026-03-09T08:00:00.000Z'), // Monday: same ISO week as the 10th
      at('2026-03-08T08:00:00.000Z'), // Sunday: previous ISO week
      at('2026-02-28T08:00:00.000Z'),
    ];
    const daily = applyPolicy(list, { keepDaily: 3 });
    expect([...daily.keys()]).toEqual([list[0]!.uuid, list[2]!.uuid, list[3]!.uuid]);
    const weekly = applyPolicy(list, { keepWeekly: 2 });
    expect([...weekly.keys()]).toEqual([list[0]!.uuid, list[3]!.uuid]);
    const monthly = applyPolicy(list, { keepMonthly: 5 });
    expect([...monthly.keys()]).toEqual([list[0]!.uuid, list[4]!.uuid]);
  });

  it('buckets by hour and by year (UTC)', () => {
    const at = (iso: string): ArchiveRecord => archiveRecord({ hostId: 'h', createdAt: iso, uuid: randomUUID() });
    const list = [
      at('2026-03-10T12:40:00.000Z'),
      at('2026-03-10T12:05:00.000Z'), // same hour
      at('2026-03-10T11:59:59.000Z'),
      at('2025-12-31T23:00:00.000Z'),
      at('2024-06-01T00:00:00.000Z'),
    ];
    expect([...applyPolicy(list, { keepHourly: 2 }).keys()]).toEqual([list[0]!.uuid, list[2]!.uuid]);
    expect([...applyPolicy(list, { keepYearly: 3 }).keys()]).toEqual([list[0]!.uuid, list[3]!.uuid, list[4]!.uuid]);
  });

  it('rejects malformed policies with ConfigError', () => {
    expect(() => parseRetentionConfig({ hosts: { '../x': { keepLast: 1 } } })).toThrow(ConfigError);
    expect(() => parseRetentionConfig({ disks: { 'h-only': { keepLast: 1 } } })).toThrow(ConfigError);
    expect(() => parseRetentionConfig({ keepLast: -1 })).toThrow(ConfigError);
    expect(() => parseRetentionConfig({ keepLots: 1 })).toThrow(ConfigError);
    expect(parseRetentionConfig({ keepDaily: 7, hosts: { h: { keepLast: 1 } } }).keepDaily).toBe(7);
  });
});
