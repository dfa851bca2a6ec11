/**
 * Per-cluster mutexes, FIFO per cluster. A request that spans several
 * clusters takes them in ascending order, which every request does, so two
 * requests can never wait for each other in a cycle. Only clusters somebody
 * holds or waits for have an entry: memory follows the I/O in flight, not
 * the disk size.
 */
export class ClusterLocks {
  private readonly tails = new Map<number, Promise<void>>();

  /** Locks clusters first..last (inclusive); the returned function releases them all. */
  async lock(first: number, last: number): Promise<() => void> {
    const releases: Array<() => void> = [];
    for (let c = first; c <= last; c++) releases.push(await this.lockOne(c));
    let released = false;
    return () => {
      if (released) return;
      released = true;
      for (const r of releases) r();
    };
  }

  /** Clusters currently held or waited for (tests, diagnostics). */
  get size(): number {
    return this.tails.size;
  }

  private async lockOne(c: number): Promise<() => void> {
    const prev = this.tails.get(c) ?? Promise.resolve();
    let open!: () => void;
    const mine = new Promise<void>((r) => (open = r));
    const tail = prev.then(() => mine);
    this.tails.set(c, tail);
    await prev;
    return () => {
      open();
      if (this.tails.get(c) === tail) this.tails.delete(c);
    };
  }
}
