import { describe, expect, it } from 'vitest';
import { ConfigError } from '../../../src/errors.js';
import { Scheduler, type RunOutcome, type ScheduleSpec, type ScheduleState, type ScheduledMode } from '../../../src/agent/scheduler.js';
import { FakeClock, settle } from '../../helpers/fake-clock.js';
import { mulberry32 } from '../../helpers/prng.js';

const T0 = Date.parse('2026-03-10T00:00:00Z');
const MIN = 60_000;
const HOUR = 60 * MIN;

interface Harness {
  clock: FakeClock;
  runs: Array<{ group: string; mode: ScheduledMode; at: number }>;
  retention: string[];
  state: ScheduleState;
  logs: string[];
  scheduler: Scheduler;
  /** Resolves the oldest unfinished run. */
  finish(outcome?: RunOutcome): void;
}

function harness(specs: ScheduleSpec[], o: { state?: ScheduleState; random?: () => number; start?: number; autoFinish?: number } = {}): Harness {
  const clock = new FakeClock(o.start ?? T0);
  const pending: Array<(r: RunOutcome) => void> = [];
  const h: Harness = {
    clock,
    runs: [],
    retention: [],
    state: o.state ?? { groups: {} },
    logs: [],
    scheduler: null as unknown as Scheduler,
    finish: (outcome = { ok: true }) => pending.shift()?.(outcome),
  };
  h.scheduler = new Scheduler({
    specs,
    clock,
    random: o.random ?? (() => 0),
    state: h.state,
    saveState: async () => undefined,
    runBackup: (spec, mode) => {
      h.runs.push({ group: spec.name, mode, at: clock.now() });
      if (o.autoFinish !== undefined) {
        // A backup that takes autoFinish ms of (fake) time.
        return new Promise((r) => clock.setTimeout(() => r({ ok: true }), o.autoFinish!));
      }
      return new Promise((r) => pending.push(r));
    },
    afterSuccess: async (spec) => {
      h.retention.push(spec.name);
    },
    log: (level, message, fields) => h.logs.push(`${level} ${message} ${String(fields.group)}`),
  });
  return h;
}

describe('Scheduler', () => {
  it('fires full and incremental at their cron times, full winning a tie, over a compressed day', async () => {
    const h = harness([{ name: 'vms', disks: ['vda'], full: '0 2 * * *', incremental: '0 * * * *' }], { autoFinish: 5 * MIN });
    h.scheduler.start();
    await h.clock.advance(24 * HOUR);
    expect(h.runs).toHaveLength(24);
    expect(h.runs.filter((r) => r.mode === 'full').map((r) => new Date(r.at).toISOString())).toEqual(['2026-03-10T02:00:00.000Z']);
    expect(h.runs.every((r) => r.at % HOUR === 0)).toBe(true);
    // The 00:00 run is still going (it takes 5 minutes): retention follows it when it ends.
    expect(h.retention).toHaveLength(23);
    await h.clock.advance(10 * MIN);
    expect(h.retention).toHaveLength(24);
    await h.scheduler.stop();
  });

  it('adds a jitter within [0, jitterSeconds)', async () => {
    const rand = mulberry32(7);
    const h = harness([{ name: 'g', disks: [], incremental: '*/10 * * * *', jitterSeconds: 120 }], { random: rand, autoFinish: MIN });
    h.scheduler.start();
    await h.clock.advance(6 * HOUR + 2 * MIN); // past the last slot's largest jitter
    expect(h.runs.length).toBe(36);
    const offsets = h.runs.map((r) => r.at % (10 * MIN));
    expect(Math.max(...offsets)).toBeLessThan(120_000);
    expect(new Set(offsets).size).toBeGreaterThan(30); // really random, not one fixed delay
  });

  it('runs a missed slot once at start (full if any missed slot was full)', async () => {
    const state: ScheduleState = { groups: { g: { slot: Date.parse('2026-03-09T05:00:00Z'), mode: 'incremental' } } };
    const h = harness([{ name: 'g', disks: [], full: '0 2 * * *', incremental: '0 * * * *' }], { state, start: Date.parse('2026-03-10T07:30:00Z'), autoFinish: MIN });
    h.scheduler.start();
    await settle();
    expect(h.runs).toEqual([{ group: 'g', mode: 'full', at: Date.parse('2026-03-10T07:30:00Z') }]);
    await h.clock.advance(HOUR);
    expect(h.runs.map((r) => new Date(r.at).toISOString())).toEqual(['2026-03-10T07:30:00.000Z', '2026-03-10T08:00:00.000Z']);
  });

  it('never overlaps: another group waits, the same group skips (logged)', async () => {
    const h = harness([
      { name: 'a', disks: ['vda'], incremental: '*/5 * * * *' },
      { name: 'b', disks: ['vdb'], incremental: '*/5 * * * *' },
    ]);
    h.scheduler.start();
    await h.clock.advanceTo(T0 + 5 * MIN);
    expect(h.runs.map((r) => r.group)).toEqual(['a']); // b waits for a
    await h.clock.advanceTo(T0 + 10 * MIN); // a still running: its 00:10 slot is skipped
    expect(h.logs.some((l) => l.startsWith('warn scheduled backup skipped') && l.endsWith(' a'))).toBe(true);
    h.finish();
    await settle();
    expect(h.runs.map((r) => r.group)).toEqual(['a', 'b']);
    expect(h.runs[1]!.at).toBe(T0 + 10 * MIN);
    h.finish();
    await settle();
    expect(h.scheduler.status().map((s) => s.running)).toEqual([false, false]);
  });

  it('applies retention after a success only', async () => {
    const h = harness([{ name: 'g', disks: [], incremental: '0 * * * *' }]);
    h.scheduler.start();
    await h.clock.advance(HOUR);
    h.finish({ ok: false, error: 'sink failed' });
    await settle();
    expect(h.retention).toEqual([]);
    expect(h.scheduler.status()[0]!.last?.outcome).toEqual({ ok: false, error: 'sink failed' });
    await h.clock.advance(HOUR);
    h.finish({ ok: true, uuid: 'u1' });
    await settle();
    expect(h.retention).toEqual(['g']);
    expect(h.scheduler.status()[0]).toMatchObject({ next: { at: '2026-03-10T03:00:00.000Z', mode: 'incremental' }, last: { outcome: { ok: true, uuid: 'u1' } } });
  });

  it('refuses bad cron expressions and groups without one, naming the group', () => {
    expect(() => harness([{ name: 'g', disks: [], full: '61 * * * *' }])).toThrow(ConfigError);
    expect(() => harness([{ name: 'g', disks: [], full: '61 * * * *' }])).toThrow(/schedules\.g\.full/);
    expect(() => harness([{ name: 'g', disks: [] }])).toThrow(/needs "full" or "incremental"/);
    expect(() => harness([{ name: 'g', disks: [], full: '0 * * * *' }, { name: 'g', disks: [], full: '0 * * * *' }])).toThrow(/duplicate/);
  });
});
