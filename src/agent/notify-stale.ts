/**
 * Staleness: a disk is stale when its last good backup is older than
 * `staleAfter` (a disk never backed up: once the agent has been up that long).
 * Checked at start, periodically and after each backup. `disk.stale` fires
 * once per disk per stale episode; the episode ends when a good backup
 * arrives. Open episodes are kept in `<stateDir>/notify-stale.json` (0600),
 * so a restart in the middle of one does not send it again.
 */
import { join } from 'node:path';
import { z } from 'zod';
import { describeError } from '../errors.js';
import { writeFileAtomic } from '../device/durable.js';
import { parsePrivateJson, readPrivateFile } from '../store/private-file.js';
import type { Logger } from './log.js';
import type { Clock } from './scheduler.js';

export const STALE_STATE_FILE = 'notify-stale.json';
/** Between checks: a tenth of staleAfter, within [1 s, 5 min]. */
const MIN_CHECK_MS = 1_000;
const MAX_CHECK_MS = 5 * 60_000;

export interface DiskLastGood {
  disk: string;
  lastGood: { uuid: string; time: string } | null;
}

export interface StaleInfo extends DiskLastGood {
  /** Null when the disk has no good backup. */
  ageSeconds: number | null;
  staleAfterSeconds: number;
}

/** Per disk: which last good backup (uuid, or "none") the open episode is about. */
const stateSchema = z.object({ episodes: z.record(z.string().max(256), z.string().max(256)) });

export interface StaleWatcherOptions {
  staleAfterMs: number;
  stateDir: string;
  /** The disks and their last good backups (as persisted: dirty bitmaps, QEMU history). */
  disks(): Promise<DiskLastGood[]>;
  onStale(info: StaleInfo): void;
  clock: Clock;
  log: Logger;
}

export class StaleWatcher {
  private episodes = new Map<string, string>();
  private readonly startedAt: number;
  private timer: unknown = null;
  private running: Promise<void> | null = null;
  private again = false;
  private stopped = false;

  constructor(private readonly o: StaleWatcherOptions) {
    this.startedAt = o.clock.now();
  }

  get checkIntervalMs(): number {
    return Math.min(MAX_CHECK_MS, Math.max(MIN_CHECK_MS, Math.round(this.o.staleAfterMs / 10)));
  }

  /** Loads open episodes, checks at once, then every checkIntervalMs. */
  async start(): Promise<void> {
    this.episodes = await this.load();
    await this.check();
    this.arm();
  }

  stop(): Promise<void> {
    this.stopped = true;
    if (this.timer !== null) this.o.clock.clearTimeout(this.timer);
    this.timer = null;
    return this.running ?? Promise.resolve();
  }

  /** Checks now (after a backup); a check already running is followed by one more. */
  check(): Promise<void> {
    if (this.running) {
      this.again = true;
      return this.running;
    }
    this.running = (async () => {
      do {
        this.again = false;
        await this.checkOnce().catch((err: unknown) => this.o.log.warn('staleness check failed', { error: describeError(err) }));
      } while (this.again && !this.stopped);
    })().finally(() => (this.running = null));
    return this.running;
  }

  private arm(): void {
    if (this.stopped) return;
    // Armed before the check runs: a slow check (a QEMU that answers late) never stops the period; check() coalesces.
    this.timer = this.o.clock.setTimeout(() => {
      this.arm();
      void this.check();
    }, this.checkIntervalMs);
  }

  private async checkOnce(): Promise<void> {
    const now = this.o.clock.now();
    const limit = this.o.staleAfterMs;
    let changed = false;
    for (const d of await this.o.disks()) {
      const key = d.lastGood?.uuid ?? 'none';
      const age = d.lastGood ? now - Date.parse(d.lastGood.time) : null;
      const open = this.episodes.get(d.disk);
      // Never backed up: stale after `limit` of uptime, or at once if it already was before a restart (only a backup ends that).
      const stale = age !== null ? age > limit : open === 'none' || now - this.startedAt > limit;
      if (!stale) {
        if (open !== undefined) {
          this.episodes.delete(d.disk);
          changed = true;
          this.o.log.info('disk no longer stale', { disk: d.disk, lastGood: d.lastGood });
        }
        continue;
      }
      if (open === key) continue; // this episode was reported already
      this.episodes.set(d.disk, key);
      changed = true;
      this.o.log.warn('disk stale: its last good backup is too old', { disk: d.disk, lastGood: d.lastGood, ageSeconds: age === null ? null : Math.round(age / 1000), staleAfterSeconds: limit / 1000 });
      this.o.onStale({ ...d, ageSeconds: age === null ? null : Math.round(age / 1000), staleAfterSeconds: Math.round(limit / 1000) });
    }
    if (changed) await this.save();
  }

  private get path(): string {
    return join(this.o.stateDir, STALE_STATE_FILE);
  }

  /** Missing → no open episode. Unreadable → a warning; the cost is one repeated notification. */
  private async load(): Promise<Map<string, string>> {
    try {
      const st = parsePrivateJson(this.path, await readPrivateFile(this.path), stateSchema, 'stale-disk episodes');
      return new Map(Object.entries(st.episodes));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') this.o.log.warn('stale-disk state unreadable; starting without it', { path: this.path, error: describeError(err) });
      return new Map();
    }
  }

  private async save(): Promise<void> {
    await writeFileAtomic(this.path, JSON.stringify({ episodes: Object.fromEntries(this.episodes) }) + '\n', 0o600).catch((err: unknown) =>
      this.o.log.warn('could not save the stale-disk state', { path: this.path, error: describeError(err) }),
    );
  }
}
