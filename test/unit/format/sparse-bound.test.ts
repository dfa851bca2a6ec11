/**
 * The metadata bound: a sparse 1 TiB device holding 1 GiB of data must
 * produce less than 1 MiB of archive metadata.
 *
 * What this measures, honestly:
 * - The device is a REAL sparse file of exactly 1 TiB (ftruncate) with 1 GiB
 *   of data written in 4 regions of 256 MiB. The data is really written to
 *   disk and really read back, compressed and hashed.
 * - Holes are found the way a real full backup of a raw file would find
 *   them: `qemu-img map` (SEEK_DATA/SEEK_HOLE). The 1023 GiB of holes are
 *   handed to the writer as zero runs (writeZeroes), never read — reading
 *   1 TiB of zeros would take minutes and measure nothing about the format.
 * - "Metadata" = every archive byte that is not compressed cluster data:
 *   header + extent headers + per-extent plaintext digests + trailer +
 *   footer. It is computed from the archive bytes themselves (by parsing each
 *   extent header), not taken from the writer's own summary.
 * - The data compresses well, which makes the metadata a LARGER share of
 *   the archive; the bound is on absolute bytes and does not depend on it.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import { CLUSTER_SIZE, MAX_EXTENT_DATA } from '../../../src/format/constants.js';
import { parseExtentHeader } from '../../../src/format/extent.js';
import { SHA256_SIZE } from '../../../src/format/layout.js';
import { BufferRangeSource, MemoryByteSink } from '../../../src/format/memory.js';
import { openArchive } from '../../../src/format/reader.js';
import { ArchiveWriter } from '../../../src/format/writer.js';
import { ZstdPool } from '../../../src/codec/zstd-pool.js';

const TiB = 2 ** 40;
const MiB = 2 ** 20;
const REGIONS = [3 * 2 ** 30, 200 * 2 ** 30, 512 * 2 ** 30 + 64 * MiB, TiB - 256 * MiB];
const REGION_SIZE = 256 * MiB;

interface MapEntry {
  start: number;
  length: number;
  data: boolean;
}

describe('sparse metadata bound', () => {
  let dir: string | undefined;
  let pool: ZstdPool | undefined;
  afterAll(async () => {
    await pool?.close();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('a 1 TiB sparse device with 1 GiB of data produces < 1 MiB of metadata', async () => {
    dir = await mkdtemp(join(tmpdir(), 'cowstream-sparse-'));
    const path = join(dir, 'sparse.raw');
    const fh = await open(path, 'w+');
    try {
      await fh.truncate(TiB);
      // Text-like, compressible data; every 4 KiB block is made unique by its offset.
      const chunk = Buffer.alloc(MAX_EXTENT_DATA, 'the quick brown fox jumps over the lazy dog; ');
      for (const start of REGIONS) {
        for (let off = 0; off < REGION_SIZE; off += chunk.length) {
          for (let b = 0; b < chunk.length; b += 4096) chunk.writeDoubleLE(start + off + b, b);
          await fh.write(chunk, 0, chunk.length, start + off);
        }
      }

      const { stdout } = await promisify(execFile)('qemu-img', ['map', '--output=json', '-f', 'raw', path], { maxBuffer: 16 * MiB });
      const map = JSON.parse(stdout) as MapEntry[];
      const dataBytes = map.filter((m) => m.data).reduce((s, m) => s + m.length, 0);
      expect(dataBytes).toBe(REGIONS.length * REGION_SIZE);

      const out = new MemoryByteSink();
      const compressor = new ZstdPool({ workers: 2 });
      pool = compressor;
      const w = await ArchiveWriter.create({ hostId: 'sparse-test', devices: [{ id: 0, name: 'sparse', size: TiB }], compressor, output: out });
      const buf = Buffer.alloc(MAX_EXTENT_DATA);
      for (const m of map) {
        // Regions are 64 KiB aligned here (the test writes them so).
        expect(m.start % CLUSTER_SIZE).toBe(0);
        expect(m.length % CLUSTER_SIZE).toBe(0);
        const first = m.start / CLUSTER_SIZE;
        if (!m.data) {
          await w.writeZeroes(0, first, m.length / CLUSTER_SIZE);
          continue;
        }
        for (let off = 0; off < m.length; off += buf.length) {
          const n = Math.min(buf.length, m.length - off);
          const { bytesRead } = await fh.read(buf, 0, n, m.start + off);
          expect(bytesRead).toBe(n);
          for (let c = 0; c < n / CLUSTER_SIZE; c++) {
            await w.writeCluster(0, (m.start + off) / CLUSTER_SIZE + c, buf.subarray(c * CLUSTER_SIZE, (c + 1) * CLUSTER_SIZE));
          }
        }
      }
      const summary = await w.finish();
      const archive = out.toBuffer();
      expect(archive.length).toBe(summary.bytesWritten);

      // Independent measurement from the bytes: sum the compressed bodies.
      const r = await openArchive(new BufferRangeSource(archive), { compressor });
      let bodyBytes = 0;
      for (const x of r.index.extents) {
        const h = parseExtentHeader(archive.subarray(x.offset, x.offset + x.length));
        bodyBytes += h.payloadLength - SHA256_SIZE; // digest counted as metadata
      }
      const metadata = archive.length - bodyBytes;
      console.log(
        `sparse 1 TiB / 1 GiB data: archive ${archive.length} B, metadata ${metadata} B ` +
          `(${r.index.extents.length} extents, ${r.index.dataRuns.length} data runs, ${r.index.zeroRuns.length} zero runs)`,
      );
      expect(metadata).toBeLessThan(MiB);
      expect(r.footer.dataBytes).toBe(REGIONS.length * REGION_SIZE);
      expect(r.footer.dataBytes + r.footer.zeroBytes).toBe(TiB);
      expect(r.index.zeroRuns.length).toBe(REGIONS.length); // holes between/around regions, coalesced
      expect(r.lookup(0, REGIONS[1] / CLUSTER_SIZE).kind).toBe('data');
      expect(r.lookup(0, REGIONS[1] / CLUSTER_SIZE - 1).kind).toBe('zero');
      // A spot check that the stored data is the file's data.
      const run = r.index.dataRuns[r.index.dataRuns.length - 1];
      const clusters = await r.readExtent(run.extentOffset, run.extentLength);
      const back = Buffer.alloc(CLUSTER_SIZE);
      await fh.read(back, 0, CLUSTER_SIZE, clusters[0].cluster * CLUSTER_SIZE);
      expect(clusters[0].data.equals(back)).toBe(true);
    } finally {
      await fh.close();
    }
  });
});
