/** Small async primitives for the CBW engine (single-threaded JS: no atomics needed). */

export interface Deferred<T> {
  promise: Promise<T>;
  resolve: (value: T) => void;
  reject: (err: unknown) => void;
  settled: boolean;
}

export function deferred<T = void>(): Deferred<T> {
  let resolve!: (value: T) => void;
  let reject!: (err: unknown) => void;
  const d = {} as Deferred<T>;
  d.settled = false;
  d.promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  d.resolve = (v: T): void => {
    if (d.settled) return;
    d.settled = true;
    resolve(v);
  };
  d.reject = (e: unknown): void => {
    if (d.settled) return;
    d.settled = true;
    reject(e);
  };
  return d;
}

/**
 * A mutex whose waiters are served by priority (lower number first), FIFO
 * within a priority. The job funnels every sink.writeCluster through it so
 * the sink sees one call at a time and a CBW copy (a guest write is waiting)
 * overtakes queued drain/background work.
 */
export class PriorityMutex {
  private locked = false;
  private readonly queues: Array<Array<() => void>>;

  constructor(levels: number) {
    this.queues = Array.from({ length: levels }, () => []);
  }

  async acquire(priority: number): Promise<() => void> {
    if (this.locked) await new Promise<void>((resolve) => this.queues[priority]!.push(resolve));
    this.locked = true;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.release();
    };
  }

  private release(): void {
    for (const q of this.queues) {
      const next = q.shift();
      if (next) {
        next(); // ownership passes directly; `locked` stays true
        return;
      }
    }
    this.locked = false;
  }
}
