/**
 * Seeded random devices and archive builders for the format tests.
 */
import { CLUSTER_SIZE, ZERO_BLOCK_SIZE } from '../../src/format/constants.js';
import type { DeviceInfo } from '../../src/format/header.js';
import { MemoryByteSink } from '../../src/format/memory.js';
import { ArchiveWriter, type ArchiveSummary, type ArchiveWriterOptions } from '../../src/format/writer.js';
import { TestZstdCompressor } from './format-compressor.js';
import { mulberry32 } from './prng.js';

/** mulberry32: small, fast, seedable PRNG (test data only). */
export const rng: (seed: number) => () => number = mulberry32;

export function shuffle<T>(xs: T[], rand: () => number): T[] {
  for (let i = xs.length - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [xs[i], xs[j]] = [xs[j], xs[i]];
  }
  return xs;
}

/**
 * A device image mixing zero regions, random (incompressible) blocks,
 * compressible text-like blocks and partially-zero clusters.
 */
export function makeImage(size: number, seed: number): Buffer {
  const rand = rng(seed);
  const img = Buffer.alloc(size);
  for (let off = 0; off < size; off += ZERO_BLOCK_SIZE) {
    const end = Math.min(off + ZERO_BLOCK_SIZE, size);
    const kind = rand();
    if (kind < 0.35) continue; // zero block
    if (kind < 0.6) {
      for (let i = off; i < end; i++) img[i] = Math.floor(rand() * 256);
    } else {
      const word = `block-${seed}-${Math.floor(rand() * 8)} `;
      for (let i = off; i < end; i++) img[i] = word.charCodeAt((i - off) % word.length);
    }
    // Whole-zero clusters now and then (become zero runs).
    if (off % CLUSTER_SIZE === 0 && rand() < 0.2) {
      off += CLUSTER_SIZE - ZERO_BLOCK_SIZE;
    }
  }
  return img;
}

export function clusterOf(img: Buffer, c: number): Buffer {
  return img.subarray(c * CLUSTER_SIZE, Math.min((c + 1) * CLUSTER_SIZE, img.length));
}

export interface BuiltArchive {
  bytes: Buffer;
  summary: ArchiveSummary;
  images: Map<number, Buffer>;
  devices: DeviceInfo[];
}

/** Writes every cluster of every image, in a seeded random order across devices. */
export async function buildArchive(
  images: { id: number; name: string; data: Buffer }[],
  opts: Partial<Omit<ArchiveWriterOptions, 'devices' | 'output'>> & { seed?: number } = {},
): Promise<BuiltArchive> {
  const out = new MemoryByteSink();
  const devices = images.map((i) => ({ id: i.id, name: i.name, size: i.data.length }));
  const w = await ArchiveWriter.create({
    hostId: 'test-host',
    compressor: opts.compressor ?? new TestZstdCompressor(),
    ...opts,
    devices,
    output: out,
  });
  const work: [number, number][] = [];
  for (const i of images) for (let c = 0; c * CLUSTER_SIZE < i.data.length; c++) work.push([i.id, c]);
  shuffle(work, rng(opts.seed ?? 1));
  const byId = new Map(images.map((i) => [i.id, i.data]));
  for (const [id, c] of work) await w.writeCluster(id, c, clusterOf(byId.get(id) as Buffer, c));
  const summary = await w.finish();
  return { bytes: out.toBuffer(), summary, images: byId, devices };
}
