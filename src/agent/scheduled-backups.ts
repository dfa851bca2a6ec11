/**
 * The agent's side of schedules (src/agent/scheduler.ts decides when):
 * a scheduled run starts a backup through the BackupManager exactly as
 * POST /backups does and waits for it; after a successful run the group's
 * retention policy is applied to this host's archives; the schedule state
 * lives in `<stateDir>/schedules.json` (0600, atomic replace) so a run
 * missed while the agent was down runs once at start.
 *
 * Overlap with a manual backup (the agent takes one backup at a time): a
 * scheduled run that finds another backup running WAITS for it and then
 * starts, logged once; it is never silently dropped. Only the agent's stop
 * ends the wait (the run is then recorded as failed).
 */
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { z } from 'zod';
import { BackupRunningError, ConflictError, describeError } from '../errors.js';
import { writeFileAtomic } from '../device/durable.js';
import { forget } from '../catalog/forget.js';
import type { BackupRequest, DiskStatus } from './backup-request.js';
import type { BackupManager } from './backup-manager.js';
import type { AgentConfig } from './config.js';
import type { Logger } from './log.js';
import type { Notifier } from './notify.js';
import type { AgentSchedule } from './schedule-config.js';
import { Scheduler, type Clock, type RunOutcome, type ScheduleState, type ScheduleStatus, type ScheduledMode } from './scheduler.js';
import type { AgentStore } from './targets.js';
import { readBoundedFile } from './bounded-file.js';

export const SCHEDULE_STATE_FILE = 'schedules.json';
/** The state file is a few hundred bytes per group; anything larger is not ours. */
const MAX_STATE_BYTES = 1024 * 1024;
/** Retry floor while another backup runs: bounds the retry rate whatever `idle()` does. */
const CONFLICT_RETRY_MS = 250;

const outcomeSchema = z.object({ ok: z.boolean(), uuid: z.string().max(64).optional(), error: z.string().max(4096).optional() });
const stateSchema = z.object({
  groups: z.record(
    z.string().max(64),
    z.object({
      slot: z.number(),
      mode: z.enum(['full', 'incremental']),
      startedAt: z.number().optional(),
      finishedAt: z.number().optional(),
      outcome: outcomeSchema.optional(),
    }),
  ),
});

/**
 * Reads `<stateDir>/schedules.json`. Missing → empty state (first start: no
 * catch-up). Unreadable or malformed → empty state and a warning: the only
 * loss is one catch-up run, never a start failure.
 */
export async function loadScheduleState(stateDir: string, log: Logger): Promise<ScheduleState> {
  const path = join(stateDir, SCHEDULE_STATE_FILE);
  let text: string;
  try {
    text = (await readBoundedFile(path, MAX_STATE_BYTES)).toString('utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') log.warn('schedule state unreadable; starting without it (no catch-up run)', { path, error: describeError(err) });
    return { groups: {} };
  }
  let parsed: ReturnType<typeof stateSchema.safeParse>;
  try {
    parsed = stateSchema.safeParse(JSON.parse(text));
  } catch (err) {
    log.warn('schedule state is not JSON; starting without it (no catch-up run)', { path, error: describeError(err) });
    return { groups: {} };
  }
  if (!parsed.success) {
    log.warn('schedule state is malformed; starting without it (no catch-up run)', { path, error: parsed.error.message });
    return { groups: {} };
  }
  return parsed.data as ScheduleState;
}

export async function saveScheduleState(stateDir: string, state: ScheduleState): Promise<void> {
  await writeFileAtomic(join(stateDir, SCHEDULE_STATE_FILE), JSON.stringify(state, null, 2) + '\n', 0o600);
}

/** GET /schedules item. */
export interface ScheduleReport extends ScheduleStatus {
  /** What retention does after a successful run: applied here, skipped (a catalogue URL has its own policy), or none configured. */
  retention: { policy: AgentSchedule['retention'] | null; appliedBy: 'agent' | 'catalogue' | 'none' };
  /** Per disk of the group: the last successful backup (scheduled or manual) and its age. */
  lastGood: Array<{ disk: string; uuid: string; time: string; mode: 'full' | 'incremental'; ageSeconds: number } | { disk: string; uuid: null }>;
}

export interface ScheduledBackups {
  status(): Promise<ScheduleReport[]>;
  /** Next and last run of each schedule, without the disks' state (no QMP round trip: metrics scrapes). */
  runs(): ScheduleStatus[];
  /** Stops arming runs, ends a wait for another backup, and waits for the running scheduled backup to end. */
  stop(): Promise<void>;
}

export interface ScheduledBackupsOptions {
  config: AgentConfig;
  backups: BackupManager;
  store: AgentStore | null;
  log: Logger;
  clock?: Clock;
  /** Told the end of each retention run, and of scheduled backups that could not start (src/agent/notify.ts). */
  notifier?: Pick<Notifier, 'retentionEnded' | 'backupNotStarted'>;
}

/** The disks a group backs up: its list, else the default selection of POST /backups. */
function groupDisks(s: AgentSchedule, config: AgentConfig): string[] {
  if (s.disks.length > 0) return s.disks;
  if (config.disks.length > 0) return config.disks.map((d) => d.name);
  return config.qemu[0]?.drives.map((d) => d.name) ?? [];
}

export async function startScheduledBackups(opts: ScheduledBackupsOptions): Promise<ScheduledBackups> {
  const { config, backups, store, log } = opts;
  const clock = opts.clock;
  const stopping = new AbortController();
  const byName = new Map(config.schedules.map((s) => [s.name, s]));
  // A remote catalogue has its own policy (the prune Lambda); so has an embedded one given `retention`.
  const catalogueOwnsRetention = config.catalog !== undefined && ('url' in config.catalog || config.catalog.retention !== undefined);

  /** Starts the backup as POST /backups does; waits for a running one instead of failing with 409. */
  const start = async (s: AgentSchedule, mode: ScheduledMode): Promise<string> => {
    const req: BackupRequest = { ...s.request, mode, ...(s.disks.length > 0 ? { disks: s.disks } : {}) };
    let waited = false;
    for (;;) {
      if (stopping.signal.aborted) throw new ConflictError('the agent is stopping');
      try {
        return (await backups.startBackup(req)).uuid;
      } catch (err) {
        if (!(err instanceof BackupRunningError)) throw err;
        if (!waited) log.info('scheduled backup waits: another backup is running', { schedule: s.name, mode, reason: err.message });
        waited = true;
        await Promise.all([backups.idle(), sleep(CONFLICT_RETRY_MS, undefined, { signal: stopping.signal })]).catch(() => undefined);
      }
    }
  };

  const runBackup = async (spec: { name: string }, mode: ScheduledMode): Promise<RunOutcome> => {
    const s = byName.get(spec.name)!;
    const before = backups.current()?.uuid;
    const uuid = await start(s, mode).catch((err: unknown) => {
      // Refused before a run existed (a missing key file…): no run end will report it. Stopping is not a failure.
      if (!(err instanceof ConflictError) && backups.current()?.uuid === before) opts.notifier?.backupNotStarted({ schedule: s.name, disks: groupDisks(s, config), error: err });
      throw err;
    });
    const final = await backups.waitFor(uuid);
    if (final?.status === 'done') return { ok: true, uuid };
    return { ok: false, uuid, error: final ? `backup ${final.status}${final.error ? `: ${final.error}` : ''}` : 'backup replaced before its end could be seen' };
  };

  const afterSuccess = async (spec: { name: string }): Promise<void> => {
    const s = byName.get(spec.name)!;
    if (!s.retention) return;
    if (catalogueOwnsRetention) {
      log.info('retention skipped: the configured catalogue applies its own policy', { schedule: s.name });
      return;
    }
    if (!store) return;
    const disks = groupDisks(s, config);
    const startTime = new Date().toISOString();
    // Scoped to this host and the group's disks: other hosts' and other groups' archives get an empty policy (kept).
    const report = await forget({
      client: store.client,
      bucket: store.bucket,
      prefix: store.prefix,
      ...(store.endpoint ? { endpoint: store.endpoint } : {}),
      policy: s.retention,
      host: config.hostId,
      disk: disks,
      dryRun: false,
    }).catch((err: unknown) => {
      opts.notifier?.retentionEnded({ schedule: s.name, disks, startTime, error: err });
      throw err;
    });
    opts.notifier?.retentionEnded({ schedule: s.name, disks, startTime, report: { removed: report.removed.map((r) => r.uuid), kept: report.kept.length } });
    log.info('retention applied', { schedule: s.name, removed: report.removed.map((r) => r.uuid), kept: report.kept.length, skipped: report.skipped.map((k) => ({ uuid: k.uuid, reason: k.reason })) });
  };

  const state = await loadScheduleState(config.stateDir, log);
  const scheduler = new Scheduler({
    specs: config.schedules,
    state,
    saveState: (st) => saveScheduleState(config.stateDir, st),
    runBackup,
    afterSuccess,
    ...(clock ? { clock } : {}),
    log: (level, message, fields) => log[level](message, fields),
  });
  scheduler.start();
  if (config.schedules.length > 0) log.info('schedules armed', { schedules: scheduler.status().map((g) => ({ name: g.name, next: g.next })) });

  return {
    async status(): Promise<ScheduleReport[]> {
      const disks = new Map<string, DiskStatus>((await backups.disks()).map((d) => [d.name, d]));
      const now = clock ? clock.now() : Date.now();
      return scheduler.status().map((g) => {
        const s = byName.get(g.name)!;
        const lastGood = groupDisks(s, config).map((name) => {
          const lb = disks.get(name)?.lastBackup;
          if (!lb) return { disk: name, uuid: null };
          return { disk: name, uuid: lb.uuid, time: lb.time, mode: lb.mode, ageSeconds: Math.max(0, Math.round((now - Date.parse(lb.time)) / 1000)) };
        });
        const appliedBy = !s.retention ? 'none' : catalogueOwnsRetention ? 'catalogue' : 'agent';
        return { ...g, disks: groupDisks(s, config), retention: { policy: s.retention ?? null, appliedBy }, lastGood };
      });
    },
    runs(): ScheduleStatus[] {
      return scheduler.status();
    },
    async stop(): Promise<void> {
      stopping.abort();
      await scheduler.stop();
    },
  };
}
