/**
 * A MemoryDevice with seeded latency around every read and map, so copies
 * made by overlays and hydration interleave with other requests differently
 * per seed.
 */
import { MemoryDevice } from '../../src/device/memory-device.js';
import type { DeviceExtent } from '../../src/device/types.js';
import { jitter } from './cbw-memdev.js';
import type { Rng } from './prng.js';

export class SlowMemoryDevice extends MemoryDevice {
  reads = 0;
  constructor(init: Buffer, private readonly rng: Rng | null, opts: { readOnly?: boolean } = { readOnly: true }) {
    super(init, opts);
  }
  override async read(offset: number, length: number): Promise<Buffer> {
    await jitter(this.rng, 0.2);
    this.reads++;
    const b = await super.read(offset, length);
    await jitter(this.rng, 0.2);
    return b;
  }
  override async mapExtents(offset: number, length: number): Promise<DeviceExtent[]> {
    await jitter(this.rng);
    return super.mapExtents(offset, length);
  }
}
