/**
 * One hook's delivery queue: notifications are sent one at a time, in order,
 * each retried with exponential backoff and jitter. The queue is bounded: when
 * it is full the oldest pending notification is dropped and a warning logged,
 * so a dead endpoint costs at most `capacity` payloads of memory and never
 * holds up the backup that raised the event (push() is synchronous).
 */
import { describeError } from '../errors.js';
import type { Logger } from './log.js';
import type { Clock } from './scheduler.js';

/** The outcome of one attempt: `retry` says whether another attempt may help. */
export type AttemptResult = { ok: true; fields?: Record<string, unknown> } | { ok: false; retry: boolean; error: string; fields?: Record<string, unknown> };

export interface Backoff {
  /** Upper bound of the first retry's delay (ms). */
  baseMs: number;
  /** Upper bound of any delay (ms). */
  maxMs: number;
}

export const DEFAULT_BACKOFF: Backoff = { baseMs: 1_000, maxMs: 5 * 60_000 };

/**
 * Delay before retry `n` (1-based): "equal jitter" — half of min(max, base·2^(n-1))
 * fixed, half random, so delays grow while a fleet of agents does not retry in step.
 */
export function backoffDelay(n: number, b: Backoff, random: () => number): number {
  const cap = Math.min(b.maxMs, b.baseMs * 2 ** Math.min(n - 1, 30));
  return Math.round(cap / 2 + random() * (cap / 2));
}

/** What the queue needs to know about an item: a label for the log. */
export interface QueueItem {
  id: string;
  event: string;
}

export interface DeliveryQueueOptions<T extends QueueItem> {
  /** Names the hook in the log (never a secret: no URL path or query). */
  hook: string;
  capacity: number;
  /** Attempts after the first. */
  retries: number;
  attempt(item: T, signal: AbortSignal): Promise<AttemptResult>;
  backoff: Backoff;
  clock: Clock;
  random: () => number;
  log: Logger;
}

export class DeliveryQueue<T extends QueueItem> {
  private readonly pending: T[] = [];
  private worker: Promise<void> | null = null;
  private readonly abort = new AbortController();
  /** Wakes a backoff sleep early when stopping. */
  private wake: (() => void) | null = null;
  private stopping = false;
  /** Items dropped because the queue was full (for tests and status). */
  dropped = 0;

  constructor(private readonly o: DeliveryQueueOptions<T>) {}

  get length(): number {
    return this.pending.length;
  }

  /** Queues `item`; never waits. A full queue drops its oldest pending item. */
  push(item: T): void {
    if (this.stopping) return;
    if (this.pending.length >= this.o.capacity) {
      const old = this.pending.shift()!;
      this.dropped++;
      this.o.log.warn('notification queue full: oldest notification dropped', { hook: this.o.hook, dropped: old.event, id: old.id, capacity: this.o.capacity });
    }
    this.pending.push(item);
    this.worker ??= this.drain().finally(() => (this.worker = null));
  }

  /**
   * Waits up to `graceMs` for the queue to empty (each notification gets its
   * current attempt, no more retries), then aborts what is in flight and drops the rest.
   */
  async stop(graceMs: number): Promise<void> {
    this.stopping = true;
    this.wake?.(); // a backoff wait ends now: no retry is due before the agent is gone
    const worker = this.worker;
    if (worker) {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([worker, new Promise((r) => (timer = setTimeout(r, graceMs)))]);
      clearTimeout(timer);
    }
    if (this.pending.length > 0) this.o.log.warn('agent stopping: pending notifications dropped', { hook: this.o.hook, count: this.pending.length });
    this.pending.length = 0;
    this.abort.abort(new Error('the agent is stopping'));
    this.wake?.();
    await this.worker;
  }

  private async drain(): Promise<void> {
    for (let item = this.pending.shift(); item !== undefined; item = this.pending.shift()) {
      await this.deliver(item);
    }
  }

  private async deliver(item: T): Promise<void> {
    const { log, hook } = this.o;
    for (let n = 0; ; n++) {
      let r: AttemptResult;
      try {
        r = await this.o.attempt(item, this.abort.signal);
      } catch (err) {
        r = { ok: false, retry: true, error: describeError(err) };
      }
      const base = { hook, event: item.event, id: item.id, attempt: n + 1, ...r.fields };
      if (r.ok) return log.info('notification sent', base);
      if (!r.retry || n >= this.o.retries || this.stopping) {
        const reason = !r.retry ? undefined : this.stopping ? 'the agent is stopping' : 'retries exhausted';
        return log.error('notification not delivered', { ...base, error: r.error, ...(reason ? { reason } : {}) });
      }
      const delayMs = backoffDelay(n + 1, this.o.backoff, this.o.random);
      log.warn('notification attempt failed; retrying', { ...base, error: r.error, retryInMs: delayMs });
      await this.sleep(delayMs);
      if (this.stopping) return log.error('notification not delivered', { ...base, error: r.error, reason: 'the agent is stopping' });
    }
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const t = this.o.clock.setTimeout(() => done(), ms);
      const done = (): void => {
        this.o.clock.clearTimeout(t);
        this.wake = null;
        resolve();
      };
      this.wake = done;
    });
  }
}
