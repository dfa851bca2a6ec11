/**
 * Decoded clusters, least recently used evicted first, bounded by a byte
 * budget that is configuration only. A Map keeps insertion order, so
 * re-inserting on a hit makes its first key the least recently used.
 */
export class ClusterCache {
  private readonly map = new Map<number, Buffer>();
  private used = 0;
  private peak = 0;

  constructor(readonly limitBytes: number) {}

  get(key: number): Buffer | undefined {
    const v = this.map.get(key);
    if (v === undefined) return undefined;
    this.map.delete(key);
    this.map.set(key, v);
    return v;
  }

  has(key: number): boolean {
    return this.map.has(key);
  }

  /** Keeps `data` (which the cache then owns) unless it alone exceeds the budget. */
  set(key: number, data: Buffer): void {
    if (data.length > this.limitBytes) return;
    const old = this.map.get(key);
    if (old !== undefined) {
      this.map.delete(key);
      this.used -= old.length;
    }
    // Evict before inserting: the budget holds at every instant.
    for (const [k, v] of this.map) {
      if (this.used + data.length <= this.limitBytes) break;
      this.map.delete(k);
      this.used -= v.length;
    }
    this.map.set(key, data);
    this.used += data.length;
    if (this.used > this.peak) this.peak = this.used;
  }

  get bytes(): number {
    return this.used;
  }

  get peakBytes(): number {
    return this.peak;
  }

  clear(): void {
    this.map.clear();
    this.used = 0;
  }
}
