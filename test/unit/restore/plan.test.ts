import { describe, expect, it } from 'vitest';
import { CLUSTER_SIZE } from '../../../src/format/constants.js';
import { RestoreError } from '../../../src/errors.js';
import { planRestore, type PlannerArchive, type RestorePlan } from '../../../src/restore/plan.js';
import { parseRestorePlan } from '../../../src/restore/plan-schema.js';

const loc = (name: string) => ({ kind: 'file' as const, path: `/a/${name}.cwa` });

function archive(uuid: string, parent: string | null, over: Partial<PlannerArchive> = {}): PlannerArchive {
  return {
    uuid,
    parentUuid: parent,
    hostId: 'h',
    locator: loc(uuid),
    size: 1_000_000,
    devices: [{ id: 0, name: 'vda', size: 10 * CLUSTER_SIZE }],
    dataRuns: [],
    zeroRuns: [],
    ...over,
  };
}

/** Who supplies each cluster according to the plan: 'Z' zero, '-' missing, `${archiveIdx}@${extentOffset}`. */
function owners(plan: RestorePlan, dev: number): string[] {
  const d = plan.devices[dev]!;
  const out: string[] = new Array(d.clusters).fill('?');
  for (const [s, c] of d.zeroRuns) for (let i = s; i < s + c; i++) out[i] = 'Z';
  for (const [s, c] of d.missingRuns) for (let i = s; i < s + c; i++) out[i] = '-';
  for (const r of plan.ranges)
    for (const e of r.extents)
      for (const [pi, , s, c] of e.runs) {
        if (pi !== dev) continue;
        for (let i = s; i < s + c; i++) {
          expect(out[i]).toBe('?'); // every cluster has exactly one supplier
          out[i] = `${r.archive}@${e.offset}`;
        }
      }
  return out;
}

describe('planRestore', () => {
  const full = archive('full', null, {
    dataRuns: [
      { deviceId: 0, firstCluster: 0, count: 4, extentOffset: 100, extentLength: 50 },
      { deviceId: 0, firstCluster: 6, count: 4, extentOffset: 150, extentLength: 50 },
    ],
    zeroRuns: [{ deviceId: 0, firstCluster: 4, count: 2 }],
  });
  const incr = archive('incr', 'full', {
    // device ids may differ between archives: matched by name
    devices: [{ id: 7, name: 'vda', size: 10 * CLUSTER_SIZE }],
    dataRuns: [
      { deviceId: 7, firstCluster: 2, count: 1, extentOffset: 100, extentLength: 40 },
      { deviceId: 7, firstCluster: 5, count: 1, extentOffset: 100, extentLength: 40 },
    ],
    zeroRuns: [{ deviceId: 7, firstCluster: 7, count: 1 }],
  });

  it('lets the newest archive win per cluster, zero runs included', () => {
    const plan = planRestore([incr, full]);
    expect(owners(plan, 0)).toEqual(['1@100', '1@100', '0@100', '1@100', 'Z', '0@100', '1@150', 'Z', '1@150', '1@150']);
    expect(plan.devices[0]!.dataClusters).toBe(8);
    expect(plan.devices[0]!.zeroClusters).toBe(2);
    expect(plan.devices[0]!.missingClusters).toBe(0);
    expect(plan.chain.map((c) => c.uuid)).toEqual(['incr', 'full']);
    // The incremental's extent supplies clusters 2 and 5 with the incremental's own device id.
    const incrExtent = plan.ranges.find((r) => r.archive === 0)!.extents[0]!;
    expect(incrExtent.runs).toEqual([
      [0, 7, 2, 1],
      [0, 7, 5, 1],
    ]);
  });

  it('coalesces adjacent extents up to the range limit and splits on gaps', () => {
    const runs = [0, 1, 2, 3, 4, 5].map((i) => ({ deviceId: 0, firstCluster: i, count: 1, extentOffset: 1000 + i * 100, extentLength: 100 }));
    runs.push({ deviceId: 0, firstCluster: 6, count: 4, extentOffset: 900_000, extentLength: 100 });
    const a = archive('a', null, { dataRuns: runs });
    const p1 = planRestore([a], { maxRangeBytes: 250, maxGapBytes: 0 });
    expect(p1.ranges.map((r) => [r.offset, r.length, r.extents.length])).toEqual([
      [1000, 200, 2],
      [1200, 200, 2],
      [1400, 200, 2],
      [900_000, 100, 1],
    ]);
    const p2 = planRestore([a]);
    expect(p2.ranges).toHaveLength(2); // far extent is beyond the 256 KiB gap
    expect(p2.totals.fetchBytes).toBe(700);
  });

  it('selects devices by name and reports unknown ones', () => {
    const two = archive('two', null, {
      devices: [
        { id: 0, name: 'vda', size: CLUSTER_SIZE },
        { id: 1, name: 'vdb', size: CLUSTER_SIZE + 5 },
      ],
      zeroRuns: [
        { deviceId: 0, firstCluster: 0, count: 1 },
        { deviceId: 1, firstCluster: 0, count: 2 },
      ],
    });
    const p = planRestore([two], { devices: ['vdb'] });
    expect(p.devices.map((d) => [d.name, d.clusters])).toEqual([['vdb', 2]]);
    expect(() => planRestore([two], { devices: ['vdc'] })).toThrow(/no device "vdc"/);
  });

  it('rejects broken chains and runs outside devices or archives', () => {
    expect(() => planRestore([incr, archive('other', null)])).toThrow(RestoreError);
    expect(() => planRestore([archive('x', null, { zeroRuns: [{ deviceId: 0, firstCluster: 8, count: 3 }] })])).toThrow(/outside its device/);
    expect(() =>
      planRestore([archive('x', null, { dataRuns: [{ deviceId: 0, firstCluster: 0, count: 1, extentOffset: 999_990, extentLength: 50 }] })]),
    ).toThrow(/outside the archive/);
    expect(() => planRestore([archive('x', null, { zeroRuns: [{ deviceId: 3, firstCluster: 0, count: 1 }] })])).toThrow(/unknown device/);
  });

  it('matches a brute-force per-cluster model on random chains', () => {
    let seed = 12345;
    const rnd = (n: number): number => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed % n;
    };
    for (let trial = 0; trial < 40; trial++) {
      const clusters = 1 + rnd(200);
      const depth = 1 + rnd(6);
      const chain: PlannerArchive[] = [];
      const model: string[] = new Array(clusters).fill('-');
      for (let k = 0; k < depth; k++) {
        const isFull = k === 0;
        const a = archive(`a${k}`, k === 0 ? null : `a${k - 1}`, { devices: [{ id: 0, name: 'vda', size: clusters * CLUSTER_SIZE - rnd(100) }] });
        let c = 0;
        let off = 10;
        while (c < clusters) {
          const len = 1 + rnd(Math.min(20, clusters - c));
          const kind = isFull ? (rnd(3) === 0 ? 'z' : 'd') : ['z', 'd', 's', 's'][rnd(4)]!;
          if (kind === 'd') {
            a.dataRuns.push({ deviceId: 0, firstCluster: c, count: len, extentOffset: off, extentLength: 10 });
            off += 10 + rnd(2) * 300_000;
          } else if (kind === 'z') a.zeroRuns.push({ deviceId: 0, firstCluster: c, count: len });
          c += len;
        }
        a.size = off + 10;
        chain.unshift(a);
      }
      // Brute force: oldest to newest, each archive overwrites what it has.
      for (let k = chain.length - 1; k >= 0; k--) {
        const ai = k;
        for (const r of chain[k]!.dataRuns) for (let i = r.firstCluster; i < r.firstCluster + r.count; i++) model[i] = `${ai}@${r.extentOffset}`;
        for (const r of chain[k]!.zeroRuns) for (let i = r.firstCluster; i < r.firstCluster + r.count; i++) model[i] = 'Z';
      }
      const plan = planRestore(chain, { maxRangeBytes: 1 + rnd(100), maxGapBytes: rnd(20) });
      expect(owners(plan, 0)).toEqual(model);
      for (const r of plan.ranges) {
        expect(r.extents.every((e) => e.offset >= r.offset && e.offset + e.length <= r.offset + r.length)).toBe(true);
      }
      // JSON round trip through the validator.
      expect(parseRestorePlan(JSON.parse(JSON.stringify(plan)))).toEqual(plan);
    }
  });

  it('parseRestorePlan rejects malformed or out-of-bounds plans', () => {
    const plan = planRestore([incr, full]);
    expect(() => parseRestorePlan({ ...plan, version: 2 })).toThrow(/invalid restore plan/);
    const bad = JSON.parse(JSON.stringify(plan)) as RestorePlan;
    bad.ranges[0]!.archive = 9;
    expect(() => parseRestorePlan(bad)).toThrow(/archive #9/);
    const bad2 = JSON.parse(JSON.stringify(plan)) as RestorePlan;
    bad2.devices[0]!.name = '../etc/passwd';
    expect(() => parseRestorePlan(bad2)).toThrow(/invalid restore plan/);
    const bad3 = JSON.parse(JSON.stringify(plan)) as RestorePlan;
    bad3.ranges[0]!.extents[0]!.runs[0]![2] = 1e9;
    expect(() => parseRestorePlan(bad3)).toThrow(/outside device/);
  });
});
