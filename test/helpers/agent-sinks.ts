/**
 * ByteSink wrappers for the agent's `wrapSink` test seam: a deliberately
 * slow sink (backpressure reaches CBW) and a sink that fails on demand.
 */
import type { ByteSink, ClusterSink } from '../../src/format/sink.js';
import { StoreError } from '../../src/errors.js';

/** Delays each write so the sink accepts at most ~`bytesPerSec`; abort() wakes a waiting write at once. */
export class SlowSink implements ByteSink {
  private budgetStart = Date.now();
  private bytes = 0;
  private aborted: unknown = null;
  private readonly sleepers = new Set<() => void>();
  constructor(
    private readonly inner: ByteSink,
    private readonly bytesPerSec: number,
  ) {}
  async write(chunk: Uint8Array): Promise<void> {
    if (this.aborted) throw this.aborted;
    this.bytes += chunk.length;
    const due = this.budgetStart + (this.bytes / this.bytesPerSec) * 1000;
    const wait = due - Date.now();
    if (wait > 0) {
      await new Promise<void>((resolve) => {
        const wake = (): void => {
          clearTimeout(t);
          this.sleepers.delete(wake);
          resolve();
        };
        const t = setTimeout(wake, wait);
        this.sleepers.add(wake);
      });
    }
    if (this.aborted) throw this.aborted;
    await this.inner.write(chunk);
  }
  close(): Promise<void> {
    return this.inner.close();
  }
  abort(reason: unknown): Promise<void> {
    this.aborted = reason ?? new StoreError('aborted');
    for (const wake of [...this.sleepers]) wake();
    return this.inner.abort(reason);
  }
}

/** Fails every write once `armed` and at least `afterBytes` went through. */
export class FailingSink implements ByteSink {
  written = 0;
  constructor(
    private readonly inner: ByteSink,
    private readonly control: { armed: boolean; afterBytes: number; failures: number },
  ) {}
  async write(chunk: Uint8Array): Promise<void> {
    if (this.control.armed && this.written >= this.control.afterBytes) {
      this.control.failures++;
      throw new StoreError('injected sink failure');
    }
    this.written += chunk.length;
    await this.inner.write(chunk);
  }
  close(): Promise<void> {
    if (this.control.armed) {
      this.control.failures++;
      return Promise.reject(new StoreError('injected sink failure at close'));
    }
    return this.inner.close();
  }
  abort(reason: unknown): Promise<void> {
    return this.inner.abort(reason);
  }
}

/**
 * A ClusterSink that accepts at most ~`bytesPerSec`: the backpressure of a
 * slow archive path reaches the CBW job (and so the guest writes) directly,
 * whatever the archive writer buffers.
 */
export class SlowClusterSink implements ClusterSink {
  private readonly t0 = Date.now();
  private bytes = 0;
  constructor(
    private readonly inner: ClusterSink,
    private readonly bytesPerSec: number,
  ) {}
  async writeCluster(deviceId: number, cluster: number, data: Buffer): Promise<void> {
    this.bytes += data.length;
    const wait = this.t0 + (this.bytes / this.bytesPerSec) * 1000 - Date.now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    await this.inner.writeCluster(deviceId, cluster, data);
  }
}
