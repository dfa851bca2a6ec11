/**
 * The consistency stress through the REAL archive path: BackupJob →
 * ArchiveWriter → bytes → openArchive → extract, compared byte for byte with
 * the pre-backup copy. (The engine-level stress in stress.test.ts covers more
 * seeds; this one proves the engine and the format agree.)
 */
import { afterAll, describe, expect, it } from 'vitest';
import type { Compressor } from '../../../src/codec/types.js';
import { ZstdPool } from '../../../src/codec/zstd-pool.js';
import { CLUSTER_SIZE } from '../../../src/format/constants.js';
import { BufferRangeSource, MemoryByteSink } from '../../../src/format/memory.js';
import { openArchive } from '../../../src/format/reader.js';
import { ArchiveWriter } from '../../../src/format/writer.js';
import { runStress } from '../../helpers/cbw-stress.js';

/**
 * A pass-through "compressor": output as long as the input makes the writer
 * store extents uncompressed (most seeds; the zstd pool has its own tests).
 */
const storeRaw: Compressor = {
  compress: async (data) => Buffer.from(data),
  decompress: async (data, expectedSize) => {
    if (data.length !== expectedSize) throw new Error('unexpected size');
    return Buffer.from(data);
  },
  close: async () => undefined,
};

/** Lazily binds a writer to the stress run's devices: runStress picks sizes from the seed. */
class LazyArchiveSink {
  writer: ArchiveWriter | null = null;
  output = new MemoryByteSink();
  constructor(readonly compressor: Compressor) {}
  async init(devices: { id: number; size: number }[]): Promise<void> {
    this.writer = await ArchiveWriter.create({
      hostId: 'cbw-test',
      devices: devices.map((d) => ({ id: d.id, name: `d${d.id}`, size: d.size })),
      compressor: this.compressor,
      output: this.output,
    });
  }
  writeCluster(deviceId: number, cluster: number, data: Buffer): Promise<void> {
    return this.writer!.writeCluster(deviceId, cluster, data);
  }
}

describe('CBW stress through ArchiveWriter + reader', () => {
  const seeds = Array.from({ length: 10 }, (_, i) => 7000 + i);
  const zstd = new ZstdPool({ workers: 1 });
  afterAll(async () => {
    await zstd.close();
  });

  it.each(seeds)('seed %i: extracted archive equals the pre-backup copy', async (seed) => {
    // The last three seeds use the real zstd pool on compressible images.
    const real = seed >= 7007;
    const compressor = real ? zstd : storeRaw;
    const sink = new LazyArchiveSink(compressor);
    const run = await runStress({
      seed,
      fleecing: seed % 2 === 1,
      incremental: false,
      compressible: real,
      makeSink: async (devs) => {
        await sink.init(devs);
        return sink;
      },
    });
    const sizes = run.devices.map((d) => d.initial.length);
    expect(run.unexpectedErrors).toEqual([]);
    expect(run.result.status, `seed ${seed}: ${run.result.error}`).toBe('done');
    const summary = await sink.writer!.finish();
    if (real) expect(summary.storedBytes).toBeLessThan(summary.dataBytes / 2); // really compressed
    expect(summary.clusterCount + summary.zeroClusterCount).toBe(sizes.reduce((a, s) => a + Math.ceil(s / CLUSTER_SIZE), 0));

    const reader = await openArchive(new BufferRangeSource(sink.output.toBuffer()), { compressor });
    const extracted = sizes.map((s) => Buffer.alloc(s)); // zero runs stay zero
    for await (const c of reader.clusters()) c.data.copy(extracted[c.deviceId]!, c.cluster * CLUSTER_SIZE);
    for (const d of run.devices) {
      expect(extracted[d.id]!.equals(d.initial), `seed ${seed} device ${d.id} (rerun: CBW_SEED=${seed})`).toBe(true);
    }
    expect((await reader.verify()).ok).toBe(true);
    await reader.close();
  });
});
