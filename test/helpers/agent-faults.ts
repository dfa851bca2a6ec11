/**
 * Fault injection for the agent's test seams (wrapDevice, wrapSink,
 * wrapClusterSink), driven by one mutable plan so a scenario can arm a
 * failure while a backup runs: source read errors from an offset on, a byte
 * sink that fails after N bytes or at close, a cluster sink slowed per
 * cluster (so guest writes meet uncopied clusters and wait in CBW).
 */
import type { BlockDevice } from '../../src/device/types.js';
import type { ByteSink, ClusterSink } from '../../src/format/sink.js';
import { DeviceError, StoreError } from '../../src/errors.js';

export interface FaultPlan {
  /** Source reads touching [readFailFrom, size) fail. */
  readFailFrom: number | null;
  /** The archive byte sink fails once this many bytes went through it. */
  sinkFailAfter: number | null;
  /** The archive byte sink fails at close (after every byte was accepted). */
  sinkFailAtClose: boolean;
  /** Delay per cluster handed to the archive writer (ms). */
  clusterDelayMs: number;
  /** Failures injected so far (a scenario asserts its fault really fired). */
  fired: number;
}

export function noFaults(): FaultPlan {
  return { readFailFrom: null, sinkFailAfter: null, sinkFailAtClose: false, clusterDelayMs: 0, fired: 0 };
}

/** A device whose reads fail in the plan's range; everything else passes through. */
export class FaultyDevice implements BlockDevice {
  constructor(
    private readonly inner: BlockDevice,
    private readonly plan: FaultPlan,
  ) {}
  get size(): number {
    return this.inner.size;
  }
  get readOnly(): boolean {
    return this.inner.readOnly;
  }
  read(offset: number, length: number): Promise<Buffer> {
    const from = this.plan.readFailFrom;
    if (from !== null && offset + length > from) {
      this.plan.fired++;
      return Promise.reject(new DeviceError(`injected read error at ${offset}+${length}`, { cause: Object.assign(new Error('EIO'), { code: 'EIO' }) }));
    }
    return this.inner.read(offset, length);
  }
  write(offset: number, data: Uint8Array, opts?: { fua?: boolean }): Promise<void> {
    return this.inner.write(offset, data, opts);
  }
  writeZeroes(offset: number, length: number, opts?: { fua?: boolean; mayTrim?: boolean }): Promise<void> {
    return this.inner.writeZeroes(offset, length, opts);
  }
  trim(offset: number, length: number): Promise<void> {
    return this.inner.trim(offset, length);
  }
  flush(): Promise<void> {
    return this.inner.flush();
  }
  close(): Promise<void> {
    return this.inner.close();
  }
}

/** The archive byte sink under the plan: fails after `sinkFailAfter` bytes or at close. */
export class PlannedSink implements ByteSink {
  private written = 0;
  constructor(
    private readonly inner: ByteSink,
    private readonly plan: FaultPlan,
  ) {}
  async write(chunk: Uint8Array): Promise<void> {
    const limit = this.plan.sinkFailAfter;
    if (limit !== null && this.written + chunk.length > limit) {
      this.plan.fired++;
      throw new StoreError(`injected sink failure after ${this.written} bytes`);
    }
    this.written += chunk.length;
    await this.inner.write(chunk);
  }
  close(): Promise<void> {
    if (this.plan.sinkFailAtClose) {
      this.plan.fired++;
      return Promise.reject(new StoreError('injected sink failure at close'));
    }
    return this.inner.close();
  }
  abort(reason: unknown): Promise<void> {
    return this.inner.abort(reason);
  }
}

/** Delays each cluster by the plan's clusterDelayMs (read at each cluster, so it can change mid-backup). */
export class PlannedClusterSink implements ClusterSink {
  constructor(
    private readonly inner: ClusterSink,
    private readonly plan: FaultPlan,
  ) {}
  async writeCluster(deviceId: number, cluster: number, data: Buffer): Promise<void> {
    if (this.plan.clusterDelayMs > 0) await new Promise((r) => setTimeout(r, this.plan.clusterDelayMs));
    await this.inner.writeCluster(deviceId, cluster, data);
  }
}
