import { describe, expect, it } from 'vitest';
import { CodecError } from '../../../src/errors.js';
import type { Compressor } from '../../../src/codec/types.js';
import { CLUSTER_SIZE } from '../../../src/format/constants.js';
import { ArchiveWriteError, DuplicateClusterError, IncompleteArchiveError } from '../../../src/format/errors.js';
import { BufferRangeSource, MemoryByteSink } from '../../../src/format/memory.js';
import { openArchive } from '../../../src/format/reader.js';
import { ArchiveWriter } from '../../../src/format/writer.js';
import { FailingCompressor, TestZstdCompressor } from '../../helpers/format-compressor.js';

const compressor = new TestZstdCompressor();
const dev = (size: number) => [{ id: 0, name: 'd', size }];

async function writer(size: number, extra: Partial<Parameters<typeof ArchiveWriter.create>[0]> = {}) {
  const out = new MemoryByteSink();
  const w = await ArchiveWriter.create({ hostId: 'h', devices: dev(size), compressor, output: out, ...extra });
  return { w, out };
}

/** A compressor whose calls stay pending until released (to observe backpressure). */
class GatedCompressor implements Compressor {
  started = 0;
  private gates: (() => void)[] = [];
  async compress(data: Uint8Array): Promise<Buffer> {
    this.started++;
    await new Promise<void>((r) => this.gates.push(r));
    return compressor.compress(data);
  }
  release(): void {
    for (const g of this.gates.splice(0)) g();
  }
  decompress(d: Uint8Array, n: number): Promise<Buffer> {
    return compressor.decompress(d, n);
  }
  async close(): Promise<void> {}
}

describe('ArchiveWriter', () => {
  it('rejects duplicate clusters, also across writeZeroes', async () => {
    const { w } = await writer(10 * CLUSTER_SIZE, { parentUuid: '01890a5d-ac96-774b-bcce-b302099a8057' });
    await w.writeCluster(0, 3, Buffer.alloc(CLUSTER_SIZE, 1));
    await expect(w.writeCluster(0, 3, Buffer.alloc(CLUSTER_SIZE, 1))).rejects.toBeInstanceOf(DuplicateClusterError);
    await w.writeZeroes(0, 5, 2);
    await expect(w.writeCluster(0, 6, Buffer.alloc(CLUSTER_SIZE))).rejects.toBeInstanceOf(DuplicateClusterError);
    await expect(w.writeZeroes(0, 2, 3)).rejects.toBeInstanceOf(DuplicateClusterError);
    await w.abort(new Error('test done'));
  });

  it('validates device, cluster range and exact cluster length (partial last cluster)', async () => {
    const { w } = await writer(2 * CLUSTER_SIZE + 10, { parentUuid: '01890a5d-ac96-774b-bcce-b302099a8057' });
    await expect(w.writeCluster(9, 0, Buffer.alloc(CLUSTER_SIZE))).rejects.toBeInstanceOf(ArchiveWriteError);
    await expect(w.writeCluster(0, 3, Buffer.alloc(CLUSTER_SIZE))).rejects.toThrow(/outside/);
    await expect(w.writeCluster(0, 2, Buffer.alloc(CLUSTER_SIZE))).rejects.toThrow(/expected 10/);
    await expect(w.writeCluster(0, 0, Buffer.alloc(10))).rejects.toThrow(/expected 65536/);
    await expect(w.writeZeroes(0, 1, 5)).rejects.toThrow(/outside/);
    await w.writeCluster(0, 2, Buffer.alloc(10, 3));
    await w.abort('done');
  });

  it('rejects bad header fields with typed errors', async () => {
    const out = new MemoryByteSink();
    const base = { hostId: 'h', compressor, output: out };
    await expect(ArchiveWriter.create({ ...base, devices: [] })).rejects.toBeInstanceOf(ArchiveWriteError);
    await expect(ArchiveWriter.create({ ...base, devices: [{ id: 0, name: '../etc', size: 1 }] })).rejects.toBeInstanceOf(ArchiveWriteError);
    await expect(ArchiveWriter.create({ ...base, devices: [{ id: 0, name: 'a', size: 1 }, { id: 0, name: 'b', size: 1 }] })).rejects.toThrow(/duplicate device id/);
    await expect(ArchiveWriter.create({ ...base, devices: [{ id: 256, name: 'a', size: 1 }] })).rejects.toThrow(/u8/);
    await expect(ArchiveWriter.create({ ...base, devices: dev(1), encryptionKey: Buffer.alloc(31) })).rejects.toThrow(/32 bytes/);
    const many = Array.from({ length: 256 }, (_, i) => ({ id: i, name: `d${i}`, size: 1 }));
    await expect(ArchiveWriter.create({ ...base, devices: many })).rejects.toThrow(/1\.\.255 devices/);
    expect(out.bytesWritten).toBe(0);
  });

  it('a full archive missing clusters fails at finish and aborts the output', async () => {
    const { w, out } = await writer(3 * CLUSTER_SIZE);
    await w.writeCluster(0, 0, Buffer.alloc(CLUSTER_SIZE, 1));
    await expect(w.finish()).rejects.toBeInstanceOf(IncompleteArchiveError);
    expect(out.aborted).toBe(true);
  });

  it('a compressor failure surfaces as a typed error and aborts the output', async () => {
    const { w, out } = await writer(64 * CLUSTER_SIZE, { compressor: new FailingCompressor() });
    for (let c = 0; c < 64; c++) await w.writeCluster(0, c, Buffer.alloc(CLUSTER_SIZE, c + 1));
    await expect(w.finish()).rejects.toBeInstanceOf(CodecError);
    expect(out.aborted).toBe(true);
    await expect(w.writeCluster(0, 0, Buffer.alloc(CLUSTER_SIZE))).rejects.toBeInstanceOf(CodecError);
  });

  it('bounds extents in flight: writeCluster blocks until compression catches up', async () => {
    const gated = new GatedCompressor();
    const { w, out } = await writer(64 * 4 * CLUSTER_SIZE, { compressor: gated, maxInFlightExtents: 2 });
    const data = Buffer.alloc(CLUSTER_SIZE, 5);
    // Two full extents go in flight; the third extent's last cluster must wait.
    for (let c = 0; c < 128; c++) await w.writeCluster(0, c, data);
    expect(gated.started).toBe(2);
    for (let c = 128; c < 191; c++) await w.writeCluster(0, c, data);
    let accepted = false;
    const blocked = w.writeCluster(0, 191, data).then(() => {
      accepted = true;
    });
    await new Promise((r) => setTimeout(r, 50));
    expect(accepted).toBe(false);
    expect(gated.started).toBe(2);
    gated.release();
    await blocked;
    expect(accepted).toBe(true);
    const rest = (async () => {
      for (let c = 192; c < 256; c++) await w.writeCluster(0, c, data);
      return w.finish();
    })();
    // Keep releasing until finish completes.
    const timer = setInterval(() => gated.release(), 5);
    const s = await rest;
    clearInterval(timer);
    expect(s.extentCount).toBe(4);
    const r = await openArchive(new BufferRangeSource(out.toBuffer()), { compressor });
    expect((await r.verify()).ok).toBe(true);
  });

  it('concurrent un-awaited writeCluster calls are serialized safely', async () => {
    const { w, out } = await writer(150 * CLUSTER_SIZE + 1);
    const ps = [];
    for (let c = 150; c >= 0; c--) ps.push(w.writeCluster(0, c, Buffer.alloc(c === 150 ? 1 : CLUSTER_SIZE, c % 251)));
    await Promise.all(ps);
    const s = await w.finish();
    const r = await openArchive(new BufferRangeSource(out.toBuffer()), { compressor });
    expect((await r.verify()).ok).toBe(true);
    expect(s.clusterCount + s.zeroClusterCount).toBe(151);
    expect(r.lookup(0, 0).kind).toBe('zero'); // c=0 → fill 0
  });

  it('abort after finish is a no-op; writes after abort fail', async () => {
    const { w, out } = await writer(CLUSTER_SIZE);
    await w.writeCluster(0, 0, Buffer.alloc(CLUSTER_SIZE, 1));
    await w.finish();
    await w.abort('late');
    expect(out.closed).toBe(true);
    const b = await writer(CLUSTER_SIZE);
    await b.w.abort(new Error('stop'));
    expect(b.out.aborted).toBe(true);
    await expect(b.w.writeCluster(0, 0, Buffer.alloc(CLUSTER_SIZE))).rejects.toThrow();
  });
});
