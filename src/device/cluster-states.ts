/**
 * A packed array of small per-cluster states (2 bits each: 0..3), with the
 * pages changed since the last `takeDirty` remembered so a flush writes only
 * those. 2 bits per cluster: a 1 TiB disk in 64 KiB clusters needs 4 MiB.
 */
export class ClusterStates {
  readonly count: number;
  readonly bytes: Uint8Array;
  private dirty = new Set<number>();

  /** `bytes`, when given, is adopted (not copied) and must be `bytesFor(count)` long. */
  constructor(count: number, bytes?: Uint8Array) {
    this.count = count;
    this.bytes = bytes ?? new Uint8Array(ClusterStates.bytesFor(count));
    if (this.bytes.length !== ClusterStates.bytesFor(count)) throw new RangeError('cluster state array of the wrong length');
  }

  static bytesFor(count: number): number {
    return Math.ceil(count / 4);
  }

  // Index arithmetic in doubles, not `c >>> 2` / `c & 3`: those cut c to 32 bits,
  // and a 16 TiB disk in 4 KiB clusters already has 2^32 of them.
  get(c: number): number {
    return (this.bytes[Math.floor(c / 4)]! >>> ((c % 4) * 2)) & 3;
  }

  set(c: number, v: number, pageBytes = 4096): void {
    const i = Math.floor(c / 4);
    const shift = (c % 4) * 2;
    const old = this.bytes[i]!;
    const next = (old & ~(3 << shift)) | ((v & 3) << shift);
    if (next === old) return;
    this.bytes[i] = next;
    this.dirty.add(Math.floor(i / pageBytes));
  }

  /** First cluster >= from (and < to) whose state is not `v`, or `to`. */
  nextNot(from: number, to: number, v: number): number {
    let c = from;
    while (c < to && this.get(c) === v) c++;
    return c;
  }

  /** How many clusters have state v. */
  countOf(v: number): number {
    let n = 0;
    for (let c = 0; c < this.count; c++) if (this.get(c) === v) n++;
    return n;
  }

  /** True if some cluster has state 3 (both bits set), which no writer of 0..2 states sets. */
  hasState3(): boolean {
    // Per byte: a 2-bit pair is 3 exactly when its low bit and its high bit are both set.
    for (const b of this.bytes) if ((b & (b >>> 1) & 0x55) !== 0) return true;
    return false;
  }

  /** True when the padding bits after the last cluster are zero. */
  paddingClear(): boolean {
    const used = this.count & 3;
    if (used === 0 || this.bytes.length === 0) return true;
    return (this.bytes[this.bytes.length - 1]! >>> (used * 2)) === 0;
  }

  /**
   * Copies of the pages changed since the last call (byte offset into the
   * array, contents as of now), and forgets them. Copies, so later changes
   * cannot leak into what a flush already decided to write.
   */
  takeDirty(pageBytes = 4096): Array<{ offset: number; data: Buffer }> {
    const pages = [...this.dirty].sort((a, b) => a - b);
    this.dirty = new Set();
    return pages.map((p) => {
      const start = p * pageBytes;
      return { offset: start, data: Buffer.from(this.bytes.subarray(start, Math.min(this.bytes.length, start + pageBytes))) };
    });
  }

  /** Puts pages back (a flush that failed to write them). */
  markDirty(offsets: readonly number[], pageBytes = 4096): void {
    for (const o of offsets) this.dirty.add(Math.floor(o / pageBytes));
  }
}
