/**
 * What someone who can write the bucket but has no key can do to an archive:
 * edit bytes and then recompute every SHA-256 (header, extents, trailer,
 * footer), which needs no key. Tests use it to check that only the
 * key-dependent tags (docs/FORMAT.md "Version 2") stand in the way.
 */
import { createHash } from 'node:crypto';
import { BufferRangeSource } from '../../src/format/memory.js';
import { openArchive } from '../../src/format/reader.js';
import { encodeFooter } from '../../src/format/footer.js';
import { encodeTrailer, type ZeroRun } from '../../src/format/trailer.js';
import { extentHeaderSize, FOOTER_BODY_SIZE, FOOTER_SIZE, SHA256_SIZE, TAG_SIZE } from '../../src/format/layout.js';

const sha = (b: Uint8Array): Buffer => createHash('sha256').update(b).digest();

export interface Layout {
  headerLength: number;
  extents: { offset: number; length: number; clusterCount: number }[];
  trailerOffset: number;
  trailerLength: number;
}

/** Layout of an intact archive (opened without a key). */
export async function layoutOf(archive: Buffer): Promise<Layout> {
  const r = await openArchive(new BufferRangeSource(archive));
  return {
    headerLength: r.footer.headerLength,
    extents: r.index.extents.map((x) => ({ offset: x.offset, length: x.length, clusterCount: x.clusterCount })),
    trailerOffset: r.footer.trailerOffset,
    trailerLength: r.footer.trailerLength,
  };
}

/** Recomputes every SHA-256 of `archive` (in place) at the positions of `layout`. */
export function resealAll(archive: Buffer, layout: Layout): Buffer {
  const h = layout.headerLength;
  sha(archive.subarray(0, h - SHA256_SIZE)).copy(archive, h - SHA256_SIZE);
  for (const x of layout.extents) {
    const hl = extentHeaderSize(x.clusterCount);
    const e = archive.subarray(x.offset, x.offset + x.length);
    sha(e.subarray(hl)).copy(e, hl - 2 * SHA256_SIZE);
    sha(e.subarray(0, hl - SHA256_SIZE)).copy(e, hl - SHA256_SIZE);
  }
  const t = archive.subarray(layout.trailerOffset, layout.trailerOffset + layout.trailerLength);
  sha(t.subarray(0, t.length - SHA256_SIZE)).copy(t, t.length - SHA256_SIZE);
  const f = archive.length - FOOTER_SIZE;
  sha(t).copy(archive, f + 32);
  sha(archive.subarray(f, f + FOOTER_BODY_SIZE)).copy(archive, f + FOOTER_BODY_SIZE);
  return archive;
}

/**
 * Drops the last extent: its clusters become zero runs, the trailer and
 * footer are rewritten consistently (keeping the old index tag, which the
 * attacker cannot recompute), every checksum is valid.
 */
export async function dropLastExtent(archive: Buffer): Promise<Buffer> {
  const r = await openArchive(new BufferRangeSource(archive));
  const last = r.index.extents[r.index.extents.length - 1]!;
  const dropped = r.index.dataRuns.filter((d) => d.extentIndex === last.seq);
  const dataRuns = r.index.dataRuns.filter((d) => d.extentIndex !== last.seq);
  const zeroRuns: ZeroRun[] = [...r.index.zeroRuns, ...dropped.map((d) => ({ deviceId: d.deviceId, firstCluster: d.firstCluster, count: d.count }))].sort(
    (a, b) => a.deviceId - b.deviceId || a.firstCluster - b.firstCluster,
  );
  const oldTag = r.index.tag ?? Buffer.alloc(TAG_SIZE);
  const extents = r.index.extents.slice(0, -1).map((x) => ({ offset: x.offset, length: x.length, clusterCount: x.clusterCount }));
  const trailer = encodeTrailer({ extents, dataRuns, zeroRuns }, () => oldTag);
  const head = archive.subarray(0, last.offset);
  const storedLast = last.length - extentHeaderSize(last.clusterCount);
  const plainLast = archive.readUInt32LE(last.offset + 32);
  const f = r.footer;
  const footer = encodeFooter({
    headerLength: f.headerLength,
    trailerOffset: last.offset,
    trailerLength: trailer.length,
    extentCount: extents.length,
    trailerSha256: sha(trailer),
    uuid: f.uuid,
    storedBytes: f.storedBytes - storedLast,
    dataBytes: f.dataBytes - plainLast,
    zeroBytes: f.zeroBytes + plainLast,
    clusterCount: f.clusterCount - last.clusterCount,
  });
  return Buffer.concat([head, trailer, footer]);
}
