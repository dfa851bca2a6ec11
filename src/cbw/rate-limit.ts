/**
 * Token bucket for the background pass (`speed`). CBW copies and fleecing
 * drains are never delayed by it (a guest write must not wait for the rate
 * limit), but they are charged to the bucket so the job's total sink rate
 * still averages `speed`: the background pass slows down to compensate.
 */
export class TokenBucket {
  private tokens: number;
  private last: number;
  /** Max burst: 100 ms worth of bytes, at least one batch. */
  private readonly capacity: number;

  constructor(
    private readonly bytesPerSec: number,
    minBurst: number,
    private readonly now: () => number = () => performance.now(),
  ) {
    this.capacity = Math.max(bytesPerSec / 10, minBurst);
    this.tokens = this.capacity;
    this.last = this.now();
  }

  private refill(): void {
    const t = this.now();
    this.tokens = Math.min(this.capacity, this.tokens + ((t - this.last) / 1000) * this.bytesPerSec);
    this.last = t;
  }

  /** Takes `bytes` without waiting (may go into debt). */
  charge(bytes: number): void {
    this.refill();
    this.tokens -= bytes;
  }

  /** Milliseconds to wait before `bytes` may be taken (0 = now). */
  delayFor(bytes: number): number {
    this.refill();
    const need = Math.min(bytes, this.capacity);
    if (this.tokens >= need) return 0;
    return ((need - this.tokens) / this.bytesPerSec) * 1000;
  }
}
