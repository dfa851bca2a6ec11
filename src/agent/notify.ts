/**
 * The agent's notifier (docs/notifications.md): turns the ends of backups,
 * restores and retention runs, and stale disks, into one versioned JSON
 * payload, and hands it to each configured webhook and command hook that
 * wants the event, through a bounded per-hook queue (src/agent/notify-queue.ts).
 * Nothing here throws at, or waits in, the code that raised the event.
 */
import { hostname } from 'node:os';
import { v7 as uuidv7 } from 'uuid';
import { describeError } from '../errors.js';
import { formatAge } from '../units.js';
import { readPrivateFile } from '../store/private-file.js';
import type { RestoreJob } from '../catalog/records.js';
import type { BackupStatus } from './backup-request.js';
import { AgentConfigError, type AgentConfig } from './config.js';
import type { Logger } from './log.js';
import type { NotifyEvent } from './notify-config.js';
import { hookEnv, runCommandHook } from './notify-command.js';
import { DEFAULT_BACKOFF, DeliveryQueue, type Backoff } from './notify-queue.js';
import { StaleWatcher, type DiskLastGood, type StaleInfo } from './notify-stale.js';
import { postWebhook, webhookLabel } from './notify-webhook.js';
import type { RestoreRunOutcome } from './restore-poller.js';
import { systemClock, type Clock } from './scheduler.js';

export const PAYLOAD_VERSION = 1;
/** Error messages are cut here: a payload stays small whatever failed. */
const MAX_ERROR_CHARS = 4096;
/** Archive uuids listed in a retention payload (the count is always exact): keeps a payload a few KiB. */
const MAX_LISTED_REMOVALS = 100;
/** How long stop() lets queued notifications go out before dropping them. */
const STOP_GRACE_MS = 5_000;
const USER_AGENT = 'cowstream-agent/1';

/** The JSON every hook receives (version 1; fields are only ever added). */
export interface NotifyPayload {
  version: typeof PAYLOAD_VERSION;
  /** Unique per event; the same across retries and hooks (deduplicate on it). */
  id: string;
  event: NotifyEvent;
  /** When the event happened (ISO 8601, UTC). */
  time: string;
  /** The agent's hostId, and the machine's hostname. */
  host: string;
  hostname: string;
  disks: string[];
  archive: { uuid: string; bucket?: string; key?: string; target?: string } | null;
  error: string | null;
  startTime: string | null;
  endTime: string | null;
  backup?: { mode: 'full' | 'incremental'; requestedMode: 'full' | 'incremental'; parentUuid: string | null; totalBytes: number; archiveBytes: number };
  restore?: { jobId: string; target: string; bytes: number | null };
  retention?: { schedule: string; removed: string[]; removedCount: number; kept: number };
  stale?: { disk: string; lastGood: { uuid: string; time: string } | null; ageSeconds: number | null; staleAfterSeconds: number };
}

export interface RetentionResult {
  schedule: string;
  disks: string[];
  startTime: string;
  /** Set on success. */
  report?: { removed: string[]; kept: number };
  error?: unknown;
}

export interface Notifier {
  backupEnded(status: BackupStatus): void;
  /** A scheduled backup refused before it began (no run, so no backupEnded). */
  backupNotStarted(r: { schedule: string; disks: string[]; error: unknown }): void;
  restoreEnded(job: RestoreJob, outcome: RestoreRunOutcome, startTime: string): void;
  retentionEnded(r: RetentionResult): void;
  /** Starts the staleness check (with `staleAfter`) over the agent's disks; resolves to its stop function. */
  watchStaleness(disks: () => Promise<DiskLastGood[]>): Promise<() => Promise<void>>;
  stop(): Promise<void>;
}

export interface NotifierOptions {
  config: Pick<AgentConfig, 'hostId' | 'stateDir' | 'notifications'>;
  log: Logger;
  /** Default: the system clock (tests: a fake one). */
  clock?: Clock;
  random?: () => number;
  backoff?: Backoff;
}

/** The payload's key fields as COWSTREAM_* variables for command hooks. */
export function payloadEnv(p: NotifyPayload): Record<string, string> {
  return {
    COWSTREAM_EVENT: p.event,
    COWSTREAM_EVENT_ID: p.id,
    COWSTREAM_PAYLOAD_VERSION: String(p.version),
    COWSTREAM_TIME: p.time,
    COWSTREAM_HOST: p.host,
    COWSTREAM_DISKS: p.disks.join(','),
    COWSTREAM_ARCHIVE_UUID: p.archive?.uuid ?? '',
    COWSTREAM_ARCHIVE_KEY: p.archive?.key ?? '',
    COWSTREAM_ERROR: p.error ?? '',
  };
}

function cut(s: string): string {
  return s.length > MAX_ERROR_CHARS ? `${s.slice(0, MAX_ERROR_CHARS)}…` : s;
}

interface Routed {
  wants: ReadonlySet<NotifyEvent>;
  queue: DeliveryQueue<NotifyPayload & { body: string }>;
}

/**
 * Builds the hooks of `config.notifications` (reading bearer token files now,
 * so a bad one stops the start with an error naming the field). Without
 * `notifications` every method is a no-op.
 */
export async function startNotifier(o: NotifierOptions): Promise<Notifier> {
  const n = o.config.notifications;
  const { log } = o;
  const clock = o.clock ?? systemClock;
  const random = o.random ?? Math.random;
  const common = { capacity: n?.queueSize ?? 1, backoff: o.backoff ?? DEFAULT_BACKOFF, clock, random, log };
  const routes: Routed[] = [];
  const tokens = await readWebhookTokens(o.config);
  for (const [i, w] of (n?.webhooks ?? []).entries()) {
    const token = tokens[i];
    const target = { url: new URL(w.url), headers: w.headers, ...(token !== undefined ? { token } : {}), timeoutMs: w.timeoutMs };
    routes.push({
      wants: new Set(w.events),
      queue: new DeliveryQueue({ ...common, hook: webhookLabel(target.url), retries: w.retries, attempt: (p, signal) => postWebhook(target, p.body, USER_AGENT, signal) }),
    });
  }
  for (const c of n?.commands ?? []) {
    routes.push({
      wants: new Set(c.events),
      queue: new DeliveryQueue({ ...common, hook: `command ${c.argv[0]}`, retries: 0, attempt: (p, signal) => runCommandHook(c.argv, p.body, hookEnv(payloadEnv(p)), c.timeoutMs, signal) }),
    });
  }

  const host = o.config.hostId;
  const machine = hostname();
  const emit = (event: NotifyEvent, fields: Omit<NotifyPayload, 'version' | 'id' | 'event' | 'time' | 'host' | 'hostname'>): void => {
    const targets = routes.filter((r) => r.wants.has(event));
    if (targets.length === 0) return;
    const payload: NotifyPayload = { version: PAYLOAD_VERSION, id: uuidv7(), event, time: new Date(clock.now()).toISOString(), host, hostname: machine, ...fields, error: fields.error === null ? null : cut(fields.error) };
    const item = { ...payload, body: JSON.stringify(payload) };
    for (const r of targets) r.queue.push(item);
  };

  let stale: StaleWatcher | null = null;
  return {
    backupEnded(s: BackupStatus): void {
      // A cancel is an operator's (or the agent's stop) decision, not a failure.
      if (s.status !== 'done' && s.status !== 'error') return;
      emit(s.status === 'done' ? 'backup.succeeded' : 'backup.failed', {
        disks: s.disks,
        archive: { uuid: s.uuid, target: s.target, ...(s.bucket !== undefined ? { bucket: s.bucket } : {}), ...(s.key !== undefined ? { key: s.key } : {}) },
        error: s.error,
        startTime: s.startTime,
        endTime: s.endTime,
        backup: { mode: s.mode, requestedMode: s.requestedMode, parentUuid: s.parentUuid, totalBytes: s.total, archiveBytes: s.archiveBytes },
      });
      if (s.status === 'done') void stale?.check();
    },
    backupNotStarted(r: { schedule: string; disks: string[]; error: unknown }): void {
      const now = new Date(clock.now()).toISOString();
      emit('backup.failed', { disks: r.disks, archive: null, error: `scheduled backup "${r.schedule}" could not start: ${describeError(r.error)}`, startTime: now, endTime: now });
    },
    restoreEnded(job: RestoreJob, outcome: RestoreRunOutcome, startTime: string): void {
      emit(outcome.ok ? 'restore.succeeded' : 'restore.failed', {
        disks: job.devices && job.devices.length > 0 ? job.devices : [],
        archive: { uuid: job.archiveId },
        error: outcome.ok ? null : (outcome.error ?? 'restore failed'),
        startTime,
        endTime: new Date(clock.now()).toISOString(),
        restore: { jobId: job.id, target: job.target.path, bytes: outcome.bytesTotal ?? null },
      });
    },
    retentionEnded(r: RetentionResult): void {
      const removed = r.report?.removed ?? [];
      emit(r.report ? 'retention.succeeded' : 'retention.failed', {
        disks: r.disks,
        archive: null,
        error: r.report ? null : describeError(r.error),
        startTime: r.startTime,
        endTime: new Date(clock.now()).toISOString(),
        retention: { schedule: r.schedule, removed: removed.slice(0, MAX_LISTED_REMOVALS), removedCount: removed.length, kept: r.report?.kept ?? 0 },
      });
    },
    async watchStaleness(disks: () => Promise<DiskLastGood[]>): Promise<() => Promise<void>> {
      if (n?.staleAfterMs === undefined || stale) return async () => undefined;
      const watcher = new StaleWatcher({
        staleAfterMs: n.staleAfterMs,
        stateDir: o.config.stateDir,
        disks,
        onStale: (info: StaleInfo) =>
          emit('disk.stale', {
            disks: [info.disk],
            archive: info.lastGood ? { uuid: info.lastGood.uuid } : null,
            error: info.lastGood
              ? `no good backup of ${info.disk} for ${formatAge(info.ageSeconds ?? 0)} (staleAfter ${formatAge(info.staleAfterSeconds)})`
              : `${info.disk} has no good backup (staleAfter ${formatAge(info.staleAfterSeconds)})`,
            startTime: null,
            endTime: null,
            stale: { disk: info.disk, lastGood: info.lastGood, ageSeconds: info.ageSeconds, staleAfterSeconds: info.staleAfterSeconds },
          }),
        clock,
        log,
      });
      stale = watcher;
      await watcher.start();
      return () => watcher.stop();
    },
    async stop(): Promise<void> {
      await stale?.stop();
      await Promise.all(routes.map((r) => r.queue.stop(STOP_GRACE_MS)));
    },
  };
}

/**
 * The bearer token of each webhook (undefined without `bearerTokenFile`), read
 * now so a missing or loose file is a config error naming the field — at
 * start and in `cowstream agent --check-config`.
 */
export async function readWebhookTokens(config: Pick<AgentConfig, 'notifications'>): Promise<Array<string | undefined>> {
  const hooks = config.notifications?.webhooks ?? [];
  return Promise.all(hooks.map((w, i) => (w.bearerTokenFile === undefined ? undefined : readToken(w.bearerTokenFile, `notifications.webhooks[${i}].bearerTokenFile`))));
}

/** A bearer token from a 0600 file owned by the agent's user; one line, no control characters. */
async function readToken(path: string, field: string): Promise<string> {
  let text: string;
  try {
    text = (await readPrivateFile(path)).toString('utf8').trim();
  } catch (err) {
    throw new AgentConfigError(field, `${field}: ${describeError(err)}`, { cause: err });
  }
  if (text === '' || /[\x00-\x1f\x7f]/.test(text)) throw new AgentConfigError(field, `${field}: ${path} must hold the token on one line (no control characters)`);
  return text;
}
