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
