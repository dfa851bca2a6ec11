/**
 * Applies archives to in-memory disk images with the format reader, the
 * way a restore applies a chain: oldest first, each archive overwriting the
 * clusters it holds (data runs and zero runs); clusters absent from an
 * incremental keep the parent's content.
 */
import { openArchive } from '../../src/format/reader.js';
import { FileRangeSource } from '../../src/store/file.js';
import { ZstdPool } from '../../src/codec/zstd-pool.js';
import { CLUSTER_SIZE } from '../../src/format/constants.js';

export interface AppliedArchive {
  uuid: string;
  parentUuid: string | null;
  devices: { id: number; name: string; size: number }[];
}

/** Applies one archive file onto `images` (name → Buffer, created as zeroes for unknown devices). */
export async function applyArchive(path: string, images: Map<string, Buffer>, compressor?: ZstdPool): Promise<AppliedArchive> {
  const ownPool = compressor ?? new ZstdPool({ workers: 1 });
  const src = await FileRangeSource.open(path);
  try {
    const reader = await openArchive(src, { compressor: ownPool });
    const byId = new Map<number, Buffer>();
    for (const d of reader.header.devices) {
      let img = images.get(d.name);
      if (!img) {
        img = Buffer.alloc(d.size);
        images.set(d.name, img);
      }
      if (img.length !== d.size) throw new Error(`device ${d.name}: archive size ${d.size} != image ${img.length}`);
      byId.set(d.id, img);
    }
    for (const z of reader.index.zeroRuns) {
      const img = byId.get(z.deviceId)!;
      const start = z.firstCluster * CLUSTER_SIZE;
      img.fill(0, start, Math.min(img.length, (z.firstCluster + z.count) * CLUSTER_SIZE));
    }
    const seen = new Set<number>();
    for (const r of reader.index.dataRuns) {
      if (seen.has(r.extentOffset)) continue;
      seen.add(r.extentOffset);
      const clusters = await reader.readExtent(r.extentOffset, r.extentLength);
      for (const c of clusters) {
        const img = byId.get(c.deviceId)!;
        Buffer.from(c.data).copy(img, c.cluster * CLUSTER_SIZE);
      }
    }
    return { uuid: reader.header.uuid, parentUuid: reader.header.parentUuid, devices: reader.header.devices.map((d) => ({ id: d.id, name: d.name, size: d.size })) };
  } finally {
    await src.close();
    if (!compressor) await ownPool.close();
  }
}

/** Index of the first differing byte, or -1. */
export function firstDiff(a: Buffer, b: Buffer): number {
  if (a.length !== b.length) return Math.min(a.length, b.length);
  if (a.equals(b)) return -1;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return i;
  return -1;
}

/**
 * Restores a chain of archive files (oldest first) into images and returns
 * the image of `device`; throws if an archive's parent is not the previous one.
 */
export async function restoreChainFiles(chain: string[], device: string, compressor?: ZstdPool): Promise<Buffer> {
  const images = new Map<string, Buffer>();
  let parent: string | null = null;
  for (const [i, p] of chain.entries()) {
    const a = await applyArchive(p, images, compressor);
    if (i > 0 && a.parentUuid !== parent) throw new Error(`${p}: parent ${a.parentUuid}, expected ${parent}`);
    parent = a.uuid;
  }
  const img = images.get(device);
  if (!img) throw new Error(`no device ${device} in the chain`);
  return img;
}
