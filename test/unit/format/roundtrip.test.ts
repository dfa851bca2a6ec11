import { execFileSync } from 'node:child_process';
import { afterAll, describe, expect, it } from 'vitest';
import { parseExtentHeader } from '../../../src/format/extent.js';
import { ZstdPool } from '../../../src/codec/zstd-pool.js';
import { CLUSTER_SIZE } from '../../../src/format/constants.js';
import { BufferRangeSource } from '../../../src/format/memory.js';
import { type ArchiveReader, openArchive } from '../../../src/format/reader.js';
import { TestZstdCompressor } from '../../helpers/format-compressor.js';
import { buildArchive, makeImage } from '../../helpers/format-fixtures.js';

/** Rebuilds every device image from the archive alone (data clusters + zero runs). */
async function restoreAll(r: ArchiveReader): Promise<Map<number, Buffer>> {
  const out = new Map<number, Buffer>();
  const seen = new Map<number, Set<number>>();
  for (const d of r.header.devices) {
    // Fill with 0xAA so a zero run that is not honoured shows up as a mismatch.
    out.set(d.id, Buffer.alloc(d.size, 0xaa));
    seen.set(d.id, new Set());
  }
  for await (const c of r.clusters()) {
    c.data.copy(out.get(c.deviceId) as Buffer, c.cluster * CLUSTER_SIZE);
    seen.get(c.deviceId)?.add(c.cluster);
  }
  for (const z of r.index.zeroRuns) {
    const img = out.get(z.deviceId) as Buffer;
    img.fill(0, z.firstCluster * CLUSTER_SIZE, Math.min(img.length, (z.firstCluster + z.count) * CLUSTER_SIZE));
    for (let c = z.firstCluster; c < z.firstCluster + z.count; c++) seen.get(z.deviceId)?.add(c);
  }
  for (const d of r.header.devices) expect(seen.get(d.id)?.size).toBe(Math.ceil(d.size / CLUSTER_SIZE));
  return out;
}

describe('archive round trip', () => {
  // The real worker pool; the in-thread TestZstdCompressor reads the same archives (cross-check below).
  const compressor = new ZstdPool({ workers: 2 });
  const inThread = new TestZstdCompressor();
  afterAll(async () => {
    await compressor.close();
  });

  for (const seed of [1, 2, 3]) {
    it(`restores several odd-sized devices fed in random order (seed ${seed})`, async () => {
      const images = [
        { id: 0, name: 'disk0', data: makeImage(3 * CLUSTER_SIZE * 17 + 12345, seed) },
        { id: 7, name: 'efi.vars', data: makeImage(4096 * 3 + 1, seed + 100) },
        { id: 200, name: 'tiny', data: makeImage(1, seed + 200) },
        { id: 3, name: 'big-zero', data: Buffer.alloc(70 * CLUSTER_SIZE + 100) },
      ];
      const built = await buildArchive(images, {
        compressor,
        seed,
        configs: [{ name: 'vm.conf', data: Buffer.from(`memory: 2048\nseed: ${seed}\n`) }],
      });
      const r = await openArchive(new BufferRangeSource(built.bytes), { compressor });
      expect(r.header.uuid).toBe(built.summary.uuid);
      expect(r.header.uuid).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-7/); // v7
      expect(r.header.parentUuid).toBeNull();
      expect(r.header.devices.map((d) => [d.id, d.name, d.size])).toEqual(images.map((i) => [i.id, i.name, i.data.length]));
      expect(r.header.configs[0].data.toString()).toContain(`seed: ${seed}`);
      const restored = await restoreAll(r);
      for (const i of images) expect((restored.get(i.id) as Buffer).equals(i.data)).toBe(true);

      const v = await r.verify();
      expect(v).toMatchObject({ ok: true, plaintextChecked: true, extentsChecked: r.index.extents.length });
      const v2 = await (await openArchive(new BufferRangeSource(built.bytes), { compressor: inThread })).verify();
      expect(v2).toMatchObject({ ok: true, plaintextChecked: true });
      expect(r.footer.extentCount).toBe(built.summary.extentCount);
      expect(built.summary.bytesWritten).toBe(built.bytes.length);
      const logical = images.reduce((s, i) => s + i.data.length, 0);
      expect(built.summary.dataBytes + built.summary.zeroBytes).toBe(logical);
      // The all-zero device is stored as one zero run, no extent data.
      expect(r.index.zeroRuns.filter((z) => z.deviceId === 3)).toEqual([{ deviceId: 3, firstCluster: 0, count: 71 }]);
      expect(r.lookup(3, 70)).toMatchObject({ kind: 'zero' });
    });
  }

  it('coalesces contiguous clusters of one extent into one data run and stores incompressible extents raw', async () => {
    const data = Buffer.alloc(200 * CLUSTER_SIZE);
    const rand = (await import('../../helpers/format-fixtures.js')).rng(9);
    for (let i = 0; i < data.length; i++) data[i] = Math.floor(rand() * 256);
    const built = await buildArchive([{ id: 1, name: 'rnd', data }], { compressor, seed: 5 });
    const r = await openArchive(new BufferRangeSource(built.bytes), { compressor });
    // 200 clusters at 64 per extent → 4 extents; random input order but each
    // extent's table is sorted: runs ≥ extents, far fewer than clusters.
    expect(r.index.extents.length).toBe(4);
    // Random data does not shrink: stored raw (payload = 32-byte digest + plaintext).
    for (const x of r.index.extents) expect(x.length).toBe(120 + 16 * x.clusterCount + 32 + x.clusterCount * CLUSTER_SIZE);
    const restored = await restoreAll(r);
    expect((restored.get(1) as Buffer).equals(data)).toBe(true);
  });

  it('sequential input gives one data run per extent', async () => {
    const data = Buffer.alloc(130 * CLUSTER_SIZE, 'abc');
    const { ArchiveWriter } = await import('../../../src/format/writer.js');
    const { MemoryByteSink } = await import('../../../src/format/memory.js');
    const out = new MemoryByteSink();
    const w = await ArchiveWriter.create({ hostId: 'h', devices: [{ id: 0, name: 'd', size: data.length }], compressor, output: out });
    for (let c = 0; c < 130; c++) await w.writeCluster(0, c, data.subarray(c * CLUSTER_SIZE, (c + 1) * CLUSTER_SIZE));
    const s = await w.finish();
    const r = await openArchive(new BufferRangeSource(out.toBuffer()), { compressor });
    // Extents are appended in sequence order even though they compress in parallel.
    expect(r.index.dataRuns.map((d) => [d.firstCluster, d.count, d.extentSeq])).toEqual([
      [0, 64, 0],
      [64, 64, 1],
      [128, 2, 2],
    ]);
    expect(s.storedBytes).toBeLessThan(data.length / 100);
    const one = await r.readExtent(r.index.dataRuns[2].extentOffset, r.index.dataRuns[2].extentLength);
    expect(one.map((c) => c.cluster)).toEqual([128, 129]);
    expect(one[1].data.equals(data.subarray(129 * CLUSTER_SIZE))).toBe(true);
  });

  it('records only present clusters for an incremental archive', async () => {
    const { ArchiveWriter } = await import('../../../src/format/writer.js');
    const { MemoryByteSink } = await import('../../../src/format/memory.js');
    const out = new MemoryByteSink();
    const parent = '01890a5d-ac96-774b-bcce-b302099a8057';
    const size = 100 * CLUSTER_SIZE + 5;
    const w = await ArchiveWriter.create({ hostId: 'h', parentUuid: parent, devices: [{ id: 0, name: 'd', size }], compressor, output: out });
    const partial = Buffer.alloc(5, 7);
    await w.writeCluster(0, 100, partial);
    await w.writeCluster(0, 10, Buffer.alloc(CLUSTER_SIZE, 1));
    await w.writeCluster(0, 11, Buffer.alloc(CLUSTER_SIZE));
    await w.writeZeroes(0, 50, 20);
    await w.finish();
    const r = await openArchive(new BufferRangeSource(out.toBuffer()), { compressor });
    expect(r.header.parentUuid).toBe(parent);
    expect(r.lookup(0, 10).kind).toBe('data');
    expect(r.lookup(0, 100).kind).toBe('data');
    expect(r.lookup(0, 11).kind).toBe('zero');
    expect(r.lookup(0, 60).kind).toBe('zero');
    expect(r.lookup(0, 12).kind).toBe('absent');
    expect(r.lookup(0, 0).kind).toBe('absent');
    expect(r.index.zeroRuns).toEqual([
      { deviceId: 0, firstCluster: 11, count: 1 },
      { deviceId: 0, firstCluster: 50, count: 20 },
    ]);
    const cl = [];
    for await (const c of r.clusters()) cl.push(c);
    expect(cl.map((c) => [c.cluster, c.data.length])).toEqual([
      [10, CLUSTER_SIZE],
      [100, 5],
    ]);
    expect(cl[1].data.equals(partial)).toBe(true);
  });

  it('compressed extent bodies are plain zstd frames the zstd CLI decodes', async () => {
    const data = Buffer.alloc(10 * CLUSTER_SIZE, 'zstd cli interop ');
    const built = await buildArchive([{ id: 0, name: 'd', data }], { compressor });
    const r = await openArchive(new BufferRangeSource(built.bytes), { compressor });
    const x = r.index.extents[0];
    const ext = built.bytes.subarray(x.offset, x.offset + x.length);
    const h = parseExtentHeader(ext);
    expect(h.compressed).toBe(true);
    // payload = SHA-256(plaintext) || zstd frame (unencrypted)
    const frame = ext.subarray(h.headerLength + 32);
    const plain = execFileSync('zstd', ['-d', '-c', '-q'], { input: frame });
    expect(plain.equals(data)).toBe(true);
  });
});
