/**
 * Backup schedules in the agent: cron expressions (croner parses them; no
 * hand-written parser) for full and incremental backups per group of disks.
 *
 * Rules, each with a test (test/unit/agent/scheduler.test.ts):
 * - A run fires at its cron time plus a random delay in [0, jitter), so a
 *   fleet of hosts with the same schedule does not hit the store at once.
 * - When full and incremental fall due together, the full one runs.
 * - A run missed while the agent was down runs once at start (the newest
 *   missed one; full if any missed slot was full), not once per missed slot.
 * - Two runs never overlap: the agent takes one backup at a time, so a run
 *   due while another group's backup is running waits for it; a run of a
 *   group whose previous run is still going is skipped, and logged.
 * - After a successful run, `afterSuccess` (retention) is called; never after
 *   a failed one.
 *
 * Time comes from an injected Clock, so an hour of schedule runs in
 * milliseconds under a fake clock.
 */
import { Cron } from 'croner';
import { ConfigError, describeError } from '../errors.js';

export type ScheduledMode = 'full' | 'incremental';

export interface ScheduleSpec {
  /** Names the group in logs, state and status. */
  name: string;
  /** Disks (or QEMU drives) the group backs up; empty = the agent's default selection. */
  disks: string[];
  /** Cron expressions (5 or 6 fields, UTC unless `timezone`). At least one. */
  full?: string;
  incremental?: string;
  /** Upper bound of the random delay added to each run, in seconds (default 0). */
  jitterSeconds?: number;
  timezone?: string;
}

export interface Clock {
  now(): number;
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

export const systemClock: Clock = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => {
    const t = setTimeout(fn, ms);
    t.unref();
    return t;
  },
  clearTimeout: (h) => clearTimeout(h as NodeJS.Timeout),
};

export interface RunOutcome {
  ok: boolean;
  uuid?: string;
  error?: string;
}

/** What the scheduler remembers across restarts (kept by the caller, e.g. a 0600 JSON file). */
export interface ScheduleState {
  /** Per group: the cron slot (ms) of the last run that fired, and its outcome. */
  groups: Record<string, { slot: number; mode: ScheduledMode; startedAt?: number; finishedAt?: number; outcome?: RunOutcome }>;
}

export interface SchedulerOptions {
  specs: ScheduleSpec[];
  runBackup(spec: ScheduleSpec, mode: ScheduledMode): Promise<RunOutcome>;
  afterSuccess?(spec: ScheduleSpec, outcome: RunOutcome): Promise<void>;
  state: ScheduleState;
  saveState(state: ScheduleState): Promise<void>;
  clock?: Clock;
  /** In [0, 1); injectable for tests. */
  random?: () => number;
  log?(level: 'info' | 'warn' | 'error', message: string, fields: Record<string, unknown>): void;
}

export interface ScheduleStatus {
  name: string;
  disks: string[];
  next: { at: string; mode: ScheduledMode } | null;
  last: { slot: string; mode: ScheduledMode; startedAt?: string; finishedAt?: string; outcome?: RunOutcome } | null;
  running: boolean;
}

interface Slot {
  at: number;
  mode: ScheduledMode;
}

/** Validates a group's cron expressions; ConfigError names the group and field. */
export function compileSpec(spec: ScheduleSpec): { full?: Cron; incremental?: Cron } {
  if (spec.full === undefined && spec.incremental === undefined) {
    throw new ConfigError(`schedules.${spec.name}: needs "full" or "incremental" (a cron expression)`);
  }
  const compile = (field: 'full' | 'incremental'): Cron | undefined => {
    const expr = spec[field];
    if (expr === undefined) return undefined;
    try {
      return new Cron(expr, { paused: true, ...(spec.timezone ? { timezone: spec.timezone } : { timezone: 'UTC' }) });
    } catch (err) {
      throw new ConfigError(`schedules.${spec.name}.${field}: invalid cron expression "${expr}": ${describeError(err)}`, { cause: err });
    }
  };
  return { full: compile('full'), incremental: compile('incremental') };
}

/** The first slot strictly after `after` (ms); full wins a tie. */
function nextSlot(crons: { full?: Cron; incremental?: Cron }, after: number): Slot | null {
  const f = crons.full?.nextRun(new Date(after))?.getTime();
  const i = crons.incremental?.nextRun(new Date(after))?.getTime();
  if (f === undefined && i === undefined) return null;
  if (i === undefined || (f !== undefined && f <= i)) return { at: f!, mode: 'full' };
  return { at: i, mode: 'incremental' };
}

export class Scheduler {
  private readonly clock: Clock;
  private readonly random: () => number;
  private readonly groups: Array<{ spec: ScheduleSpec; crons: { full?: Cron; incremental?: Cron }; next: Slot | null; timer: unknown; running: boolean }>;
  /** One backup at a time: runs queue here (FIFO) while another is going. */
  private chain: Promise<void> = Promise.resolve();
  private stopped = false;
  private readonly inFlight = new Set<Promise<void>>();

  constructor(private readonly opts: SchedulerOptions) {
    this.clock = opts.clock ?? systemClock;
    this.random = opts.random ?? Math.random;
    const names = new Set<string>();
    this.groups = opts.specs.map((spec) => {
      if (names.has(spec.name)) throw new ConfigError(`schedules: duplicate group name "${spec.name}"`);
      names.add(spec.name);
      return { spec, crons: compileSpec(spec), next: null, timer: null, running: false };
    });
  }

  /** Runs what was missed while down (once per group), then arms every group's next slot. */
  start(): void {
    const now = this.clock.now();
    for (const g of this.groups) {
      const last = this.opts.state.groups[g.spec.name];
      const missed = last ? this.missedSince(g.crons, last.slot, now) : null;
      if (missed) {
        this.log('info', 'running a scheduled backup missed while the agent was down', { group: g.spec.name, mode: missed.mode, slot: new Date(missed.at).toISOString() });
        this.fire(g, missed);
      }
      this.arm(g, now);
    }
  }

  /** Stops arming timers and waits for runs already started. */
  async stop(): Promise<void> {
    this.stopped = true;
    for (const g of this.groups) if (g.timer !== null) this.clock.clearTimeout(g.timer);
    await Promise.allSettled([...this.inFlight]);
  }

  status(): ScheduleStatus[] {
    return this.groups.map((g) => {
      const last = this.opts.state.groups[g.spec.name];
      const iso = (ms: number | undefined): string | undefined => (ms === undefined ? undefined : new Date(ms).toISOString());
      return {
        name: g.spec.name,
        disks: g.spec.disks,
        next: g.next ? { at: new Date(g.next.at).toISOString(), mode: g.next.mode } : null,
        last: last
          ? {
              slot: new Date(last.slot).toISOString(),
              mode: last.mode,
              ...(last.startedAt !== undefined ? { startedAt: iso(last.startedAt) } : {}),
              ...(last.finishedAt !== undefined ? { finishedAt: iso(last.finishedAt) } : {}),
              ...(last.outcome ? { outcome: last.outcome } : {}),
            }
          : null,
        running: g.running,
      };
    });
  }

  /** The newest slot in (lastSlot, now], full if any of them was full; null if none. */
  private missedSince(crons: { full?: Cron; incremental?: Cron }, lastSlot: number, now: number): Slot | null {
    let found: Slot | null = null;
    let anyFull = false;
    // Bounded: a long outage with a per-minute schedule must not loop for ever.
    for (let s = nextSlot(crons, lastSlot), n = 0; s !== null && s.at <= now && n < 100_000; s = nextSlot(crons, s.at), n++) {
      found = s;
      anyFull ||= s.mode === 'full';
    }
    return found ? { at: found.at, mode: anyFull ? 'full' : found.mode } : null;
  }

  private arm(g: Scheduler['groups'][number], after: number): void {
    if (this.stopped) return;
    g.next = nextSlot(g.crons, after);
    if (g.next === null) return;
    const slot = g.next;
    const jitter = Math.floor(this.random() * (g.spec.jitterSeconds ?? 0) * 1000);
    const delay = Math.max(0, slot.at + jitter - this.clock.now());
    g.timer = this.clock.setTimeout(() => {
      g.timer = null;
      this.fire(g, slot);
      this.arm(g, slot.at);
    }, delay);
  }

  private fire(g: Scheduler['groups'][number], slot: Slot): void {
    if (this.stopped) return;
    if (g.running) {
      this.log('warn', 'scheduled backup skipped: the previous run of this group is still going', { group: g.spec.name, mode: slot.mode, slot: new Date(slot.at).toISOString() });
      return;
    }
    g.running = true;
    const run = this.chain.then(() => this.execute(g, slot));
    this.chain = run;
    this.inFlight.add(run);
    void run.finally(() => this.inFlight.delete(run));
  }

  private async execute(g: Scheduler['groups'][number], slot: Slot): Promise<void> {
    const state = this.opts.state.groups;
    state[g.spec.name] = { slot: slot.at, mode: slot.mode, startedAt: this.clock.now() };
    let outcome: RunOutcome;
    try {
      outcome = await this.opts.runBackup(g.spec, slot.mode);
    } catch (err) {
      outcome = { ok: false, error: describeError(err) };
    }
    state[g.spec.name] = { ...state[g.spec.name]!, finishedAt: this.clock.now(), outcome };
    this.log(outcome.ok ? 'info' : 'error', outcome.ok ? 'scheduled backup done' : 'scheduled backup failed', { group: g.spec.name, mode: slot.mode, ...outcome });
    if (outcome.ok && this.opts.afterSuccess) {
      await this.opts.afterSuccess(g.spec, outcome).catch((err: unknown) =>
        this.log('error', 'retention after a scheduled backup failed', { group: g.spec.name, error: describeError(err) }),
      );
    }
    await this.opts.saveState(this.opts.state).catch((err: unknown) => this.log('error', 'could not save the schedule state', { error: describeError(err) }));
    g.running = false;
  }

  private log(level: 'info' | 'warn' | 'error', message: string, fields: Record<string, unknown>): void {
    this.opts.log?.(level, message, fields);
  }
}
