/**
 * Re-seals checksums after a test deliberately edits archive fields, so the
 * tests reach the reader's semantic checks (limits, versions, counts) rather
 * than stopping at a checksum mismatch.
 */
import { createHash } from 'node:crypto';
import { FOOTER_BODY_SIZE, FOOTER_SIZE, SHA256_SIZE } from '../../src/format/layout.js';

const sha = (b: Uint8Array): Buffer => createHash('sha256').update(b).digest();

export function footerStart(archive: Buffer): number {
  return archive.length - FOOTER_SIZE;
}

/** Recomputes the footer checksum in place. */
export function resealFooter(archive: Buffer): Buffer {
  const f = footerStart(archive);
  sha(archive.subarray(f, f + FOOTER_BODY_SIZE)).copy(archive, f + FOOTER_BODY_SIZE);
  return archive;
}

/** Recomputes the header checksum (header length from bytes 12..15) in place. */
export function resealHeader(archive: Buffer, len = archive.readUInt32LE(12)): Buffer {
  sha(archive.subarray(0, len - SHA256_SIZE)).copy(archive, len - SHA256_SIZE);
  return archive;
}

/** Recomputes the trailer's own checksum, the footer's trailer checksum, then the footer's. */
export function resealTrailer(archive: Buffer): Buffer {
  const f = footerStart(archive);
  const off = Number(archive.readBigUInt64LE(f + 16));
  const len = archive.readUInt32LE(f + 24);
  sha(archive.subarray(off, off + len - SHA256_SIZE)).copy(archive, off + len - SHA256_SIZE);
  sha(archive.subarray(off, off + len)).copy(archive, f + 32);
  return resealFooter(archive);
}

export function trailerStart(archive: Buffer): number {
  return Number(archive.readBigUInt64LE(footerStart(archive) + 16));
}

/**
 * Writes a valid (v2, unencrypted, full) archive of one device whose index
 * holds `runs` zero runs of one cluster each and no extents: a few bytes per
 * run on disk, a heap object per run for a reader that loads them all. The
 * file is streamed, never held in memory. Returns its uuid.
 */
export async function writeZeroRunArchive(path: string, runs: number, hostId = 'h1'): Promise<string> {
  const { openSync, writeSync, closeSync } = await import('node:fs');
  const { v7 } = await import('uuid');
  const { encodeHeader } = await import('../../src/format/header.js');
  const { encodeFooter } = await import('../../src/format/footer.js');
  const { CLUSTER_SIZE } = await import('../../src/format/constants.js');
  const { TRAILER_MAGIC_V2, TAG_SIZE, ZERO_RUN_SIZE } = await import('../../src/format/layout.js');
  const uuid = v7();
  const size = runs * CLUSTER_SIZE;
  const header = encodeHeader({
    uuid,
    parentUuid: null,
    createdAt: Date.now(),
    hostId,
    codec: 'zstd',
    encryption: 'none',
    keyFingerprint: null,
    devices: [{ id: 0, name: 'disk', size }],
    configs: [],
  });
  const fd = openSync(path, 'wx', 0o600);
  try {
    writeSync(fd, header);
    const own = createHash('sha256');
    const whole = createHash('sha256');
    const emit = (b: Buffer): void => {
      own.update(b);
      whole.update(b);
      writeSync(fd, b);
    };
    const fixed = Buffer.alloc(16);
    TRAILER_MAGIC_V2.copy(fixed, 0);
    fixed.writeUInt32LE(0, 4);
    fixed.writeUInt32LE(0, 8);
    fixed.writeUInt32LE(runs, 12);
    emit(fixed);
    const perChunk = 65536;
    const chunk = Buffer.alloc(perChunk * ZERO_RUN_SIZE);
    for (let first = 0; first < runs; first += perChunk) {
      const n = Math.min(perChunk, runs - first);
      for (let i = 0; i < n; i++) {
        const o = i * ZERO_RUN_SIZE;
        chunk.writeUInt8(0, o);
        chunk.writeUInt32LE(1, o + 4);
        chunk.writeBigUInt64LE(BigInt(first + i), o + 8);
      }
      emit(chunk.subarray(0, n * ZERO_RUN_SIZE));
    }
    emit(Buffer.alloc(TAG_SIZE));
    const ownSha = own.digest();
    whole.update(ownSha);
    writeSync(fd, ownSha);
    const trailerLength = 16 + runs * ZERO_RUN_SIZE + TAG_SIZE + SHA256_SIZE;
    writeSync(
      fd,
      encodeFooter({
        headerLength: header.length,
        trailerOffset: header.length,
        trailerLength,
        extentCount: 0,
        trailerSha256: whole.digest(),
        uuid,
        storedBytes: 0,
        dataBytes: 0,
        zeroBytes: size,
        clusterCount: 0,
      }),
    );
  } finally {
    closeSync(fd);
  }
  return uuid;
}
