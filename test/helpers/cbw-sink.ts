/**
 * A ClusterSink that captures every cluster in memory, with optional seeded
 * random delays (a deliberately slow archive) and failure/hang injection.
 * It records duplicates instead of throwing so tests can assert on them.
 */
import type { ClusterSink } from '../../src/format/sink.js';
import type { Rng } from './prng.js';

export interface CaptureSinkOptions {
  rng?: Rng;
  /** Max random delay per cluster in ms (0 = only yields). */
  maxDelayMs?: number;
  /** Fixed delay per cluster in ms (e.g. to hold a target rate). */
  fixedDelayMs?: number;
}

export class CaptureSink implements ClusterSink {
  readonly clusters = new Map<string, Buffer>();
  readonly duplicates: string[] = [];
  /** Concurrent writeCluster calls seen at once (the job promises 1). */
  maxConcurrent = 0;
  calls = 0;
  private active = 0;
  /** When set, writeCluster rejects with it. */
  failWith: Error | null = null;
  /** When true, writeCluster never resolves (a hung upload). */
  hang = false;
  private gate: Promise<void> | null = null;
  private openGate: (() => void) | null = null;

  constructor(private readonly opts: CaptureSinkOptions = {}) {}

  /** Blocks every writeCluster until release() (deterministic backpressure). */
  block(): void {
    if (this.gate) return;
    this.gate = new Promise((res) => (this.openGate = res));
  }

  release(): void {
    this.openGate?.();
    this.gate = null;
    this.openGate = null;
  }

  async writeCluster(deviceId: number, cluster: number, data: Buffer): Promise<void> {
    this.calls++;
    this.active++;
    this.maxConcurrent = Math.max(this.maxConcurrent, this.active);
    try {
      const { rng, maxDelayMs = 0, fixedDelayMs = 0 } = this.opts;
      if (this.gate) await this.gate;
      if (this.hang) await new Promise(() => undefined);
      if (this.failWith) throw this.failWith;
      const key = `${deviceId}:${cluster}`;
      if (this.clusters.has(key)) this.duplicates.push(key);
      this.clusters.set(key, Buffer.from(data));
      let delay = fixedDelayMs;
      if (rng && maxDelayMs > 0 && rng() < 0.5) delay += rng() * maxDelayMs;
      if (delay > 0) await new Promise((res) => setTimeout(res, delay));
      else await new Promise((res) => setImmediate(res));
    } finally {
      this.active--;
    }
  }

  get(deviceId: number, cluster: number): Buffer | undefined {
    return this.clusters.get(`${deviceId}:${cluster}`);
  }

  /** Reconstructs device `deviceId` of `size` bytes from the captured clusters (missing = left as `base`). */
  reconstruct(deviceId: number, base: Buffer): Buffer {
    const out = Buffer.from(base);
    for (const [key, data] of this.clusters) {
      const [d, c] = key.split(':').map(Number);
      if (d === deviceId) data.copy(out, c! * 65536);
    }
    return out;
  }
}
