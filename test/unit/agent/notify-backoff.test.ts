/** Backoff of webhook retries: exponential, capped, with "equal jitter" bounds. */
import { describe, expect, it } from 'vitest';
import { backoffDelay } from '../../../src/agent/notify-queue.js';

describe('backoffDelay', () => {
  const b = { baseMs: 1000, maxMs: 60_000 };
  it('doubles per retry, half fixed and half random', () => {
    for (let n = 1; n <= 5; n++) {
      const cap = 1000 * 2 ** (n - 1);
      expect(backoffDelay(n, b, () => 0)).toBe(cap / 2);
      expect(backoffDelay(n, b, () => 0.999_999)).toBe(cap);
    }
  });
  it('grows whatever the jitter draws: the shortest retry n+1 is the longest retry n', () => {
    for (let n = 1; n < 6; n++) expect(backoffDelay(n + 1, b, () => 0)).toBeGreaterThanOrEqual(backoffDelay(n, b, () => 0.999_999));
  });
  it('stops growing at maxMs, and stays finite for huge retry numbers', () => {
    expect(backoffDelay(7, b, () => 0.999_999)).toBe(60_000);
    expect(backoffDelay(1000, b, () => 0)).toBe(30_000);
  });
});
