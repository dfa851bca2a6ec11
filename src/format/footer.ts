/**
 * Fixed-size footer (docs/FORMAT.md "Footer"): the last 144 bytes.
 */
import { parse as parseUuid } from 'uuid';
import { uuidString as stringifyUuid } from './bytes.js';
import { FormatError, TruncatedArchiveError } from '../errors.js';
import { ByteReader, ByteWriter } from './bytes.js';
import { checkSha256, sha256 } from './checksum.js';
import { FOOTER_BODY_SIZE, FOOTER_MAGIC, FOOTER_SIZE, FORMAT_V1, FORMAT_V2, FORMAT_VERSION, type FormatVersion, SHA256_SIZE, UUID_SIZE } from './layout.js';

export interface ArchiveFooter {
  version: FormatVersion;
  headerLength: number;
  trailerOffset: number;
  trailerLength: number;
  extentCount: number;
  trailerSha256: Buffer;
  uuid: string;
  /** Σ stored payload bytes of all extents. */
  storedBytes: number;
  /** Logical bytes of non-zero blocks (Σ extent plaintext). */
  dataBytes: number;
  /** Logical bytes of zero runs plus zero blocks inside stored clusters. */
  zeroBytes: number;
  /** Clusters stored in extents. */
  clusterCount: number;
}

export function encodeFooter(f: Omit<ArchiveFooter, 'version'>): Buffer {
  const w = new ByteWriter(FOOTER_SIZE);
  w.bytes(FOOTER_MAGIC).u16(FORMAT_VERSION).u16(0).u32(f.headerLength).u64(f.trailerOffset).u32(f.trailerLength).u32(f.extentCount);
  w.bytes(f.trailerSha256).bytes(parseUuid(f.uuid));
  w.u64(f.storedBytes).u64(f.dataBytes).u64(f.zeroBytes).u64(f.clusterCount);
  w.bytes(sha256(w.buf.subarray(0, FOOTER_BODY_SIZE)));
  return w.done();
}

/** `buf` = the last FOOTER_SIZE bytes; `what` names the archive in messages. */
export function decodeFooter(buf: Buffer, what: string): ArchiveFooter {
  if (buf.length !== FOOTER_SIZE || !buf.subarray(0, FOOTER_MAGIC.length).equals(FOOTER_MAGIC)) {
    throw new TruncatedArchiveError(`${what}: no archive footer at the end: the archive is incomplete or truncated (or not a cowstream archive)`);
  }
  checkSha256(buf.subarray(0, FOOTER_BODY_SIZE), buf.subarray(FOOTER_BODY_SIZE), `${what}: footer`);
  const r = new ByteReader(buf.subarray(0, FOOTER_BODY_SIZE), `${what}: footer`);
  r.bytes(FOOTER_MAGIC.length);
  const version = r.u16();
  if (version !== FORMAT_V1 && version !== FORMAT_V2) {
    throw new FormatError(`${what}: unsupported archive format version ${version} (this reader knows ${FORMAT_V1} and ${FORMAT_V2})`);
  }
  r.zeros(2, 'flags');
  const headerLength = r.u32();
  const trailerOffset = r.u64('trailer offset');
  const trailerLength = r.u32();
  const extentCount = r.u32();
  const trailerSha256 = Buffer.from(r.bytes(SHA256_SIZE));
  const uuid = stringifyUuid(r.bytes(UUID_SIZE));
  const storedBytes = r.u64('stored bytes');
  const dataBytes = r.u64('data bytes');
  const zeroBytes = r.u64('zero bytes');
  const clusterCount = r.u64('cluster count');
  r.expectEnd();
  return { version, headerLength, trailerOffset, trailerLength, extentCount, trailerSha256, uuid, storedBytes, dataBytes, zeroBytes, clusterCount };
}
