/**
 * What an archive says about itself without its index: the footer and the
 * header, read with two ranged reads (docs/FORMAT.md "Reading"). Listing a
 * bucket needs no more, and costs the same for a 1 GiB and a 1 TiB archive.
 *
 * Nothing here is authenticated: these are the claims of an object in a
 * bucket, checked for consistency (checksums, lengths against the object
 * size, the same uuid in footer and header), never trusted for restores.
 */
import { FormatError, TruncatedArchiveError } from '../errors.js';
import { decodeFooter, type ArchiveFooter } from './footer.js';
import { decodeHeader, type ArchiveHeader } from './header.js';
import { FOOTER_SIZE, HEADER_FIXED_SIZE, MAX_HEADER_SIZE, SHA256_SIZE } from './layout.js';
import type { RangeSource } from './sink.js';

export interface ArchiveSummary {
  header: ArchiveHeader;
  footer: ArchiveFooter;
}

export async function readArchiveSummary(source: RangeSource): Promise<ArchiveSummary> {
  const { name, size } = source;
  if (!Number.isSafeInteger(size) || size < FOOTER_SIZE) {
    throw new TruncatedArchiveError(`${name}: ${size} bytes is too short to be an archive (no footer)`);
  }
  const footer = decodeFooter(await readExact(source, size - FOOTER_SIZE, FOOTER_SIZE), name);
  const { headerLength } = footer;
  // The length comes from the object: check it against the limit and the size before reading.
  if (headerLength < HEADER_FIXED_SIZE + SHA256_SIZE || headerLength > MAX_HEADER_SIZE || headerLength > size - FOOTER_SIZE) {
    throw new FormatError(`${name}: footer header length ${headerLength} out of range`);
  }
  let header: ArchiveHeader;
  try {
    header = decodeHeader(await readExact(source, 0, headerLength));
  } catch (err) {
    if (err instanceof FormatError) throw new FormatError(`${name}: ${err.message}`, { cause: err });
    throw err;
  }
  if (header.uuid !== footer.uuid) throw new FormatError(`${name}: footer belongs to archive ${footer.uuid}, header says ${header.uuid}`);
  return { header, footer };
}

async function readExact(source: RangeSource, offset: number, length: number): Promise<Buffer> {
  const buf = await source.read(offset, length);
  if (buf.length !== length) throw new TruncatedArchiveError(`${source.name}: short read at ${offset}: ${buf.length} of ${length} bytes`);
  return buf;
}
