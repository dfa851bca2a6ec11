/**
 * The one result of checking an archive, shared by `cowstream verify` (any
 * ref: UUID, S3 key, file) and `cowstream archive verify` (a file), so both
 * check the same checksums and answer in the same shape.
 */
import type { ArchiveReader, VerifyResult } from '../format/reader.js';
import { formatBytes } from './output.js';

/** The reader's VerifyResult, named: which archive, and where it was read from (a path or s3://bucket/key). */
export interface VerifyReport extends VerifyResult {
  archive: string;
  /** The parent's UUID; null for a full archive. */
  parent: string | null;
  source: string;
}

/**
 * Verifies every extent; `onProgress` sees archive bytes checked of the extents' total. The reader must have been opened with a compressor
 * (and the key, when there is one), or plaintext checksums go unchecked.
 */
export async function verifyReport(reader: ArchiveReader, source: string, onProgress?: (bytesDone: number, bytesTotal: number) => void): Promise<VerifyReport> {
  const extents = reader.index.extents;
  const total = extents.reduce((a, x) => a + x.length, 0);
  let done = 0;
  // The reader checks extents in index order and reports their count: the n-th call covers extent n-1.
  const res = await reader.verify(onProgress ? { onProgress: (n) => onProgress((done += extents[n - 1]!.length), total) } : {});
  return {
    ok: res.ok,
    archive: reader.header.uuid,
    parent: reader.header.parentUuid,
    source,
    extentCount: res.extentCount,
    extentsChecked: res.extentsChecked,
    bytesChecked: res.bytesChecked,
    plaintextChecked: res.plaintextChecked,
    authenticated: res.authenticated,
    ...(res.firstBad ? { firstBad: res.firstBad } : {}),
  };
}

/** The human-readable lines of a report. */
export function describeVerifyReport(r: VerifyReport): string {
  const what = r.plaintextChecked ? 'stored and plaintext checksums' : 'stored checksums only (the plaintext of an encrypted archive needs --key)';
  let text =
    `${r.ok ? 'OK' : 'CORRUPT'} archive ${r.archive} (${r.source}): ${r.extentsChecked}/${r.extentCount} extents, ` +
    `${formatBytes(r.bytesChecked)} checked, ${what}${r.authenticated ? ', header and index authenticated under the key' : ''}\n`;
  const b = r.firstBad;
  if (b) text += `  first bad extent ${b.seq >= 0 ? `#${b.seq} ` : ''}at offset ${b.offset} (${b.length} bytes): ${b.message}\n`;
  return text;
}
