/**
 * Extent encode/decode (docs/FORMAT.md "Extent"). Pure functions apart from
 * the injected Compressor; the writer and reader drive them.
 */
import { parse as parseUuid } from 'uuid';
import { uuidString as stringifyUuid } from './bytes.js';
import { ChecksumError, CodecError, CowstreamError, EncryptionKeyError, FormatError } from '../errors.js';
import { type Compressor, type PayloadUnpacker, isPayloadUnpacker } from '../codec/types.js';
import { ByteReader, ByteWriter } from './bytes.js';
import { checkSha256, sha256 } from './checksum.js';
import { BLOCKS_PER_CLUSTER, CLUSTER_SIZE, MAX_CLUSTERS_PER_EXTENT, MAX_EXTENT_DATA, ZERO_BLOCK_SIZE } from './constants.js';
import { keyFingerprint, open } from './encryption.js';
import {
  CLUSTER_ENTRY_SIZE,
  EXTENT_FIXED_SIZE,
  EXTENT_FLAG_COMPRESSED,
  EXTENT_FLAG_ENCRYPTED,
  EXTENT_MAGIC,
  GCM_TAG_SIZE,
  NONCE_SIZE,
  SHA256_SIZE,
  UUID_SIZE,
  extentHeaderSize,
} from './layout.js';

/** One cluster-table entry. */
export interface ClusterEntry {
  deviceId: number;
  cluster: number;
  /** Logical length: CLUSTER_SIZE, or the remainder for a device's last cluster. */
  length: number;
  /** Bit i set = block i is all zero and not stored. */
  zeroMask: number;
}

export interface ExtentHeader {
  compressed: boolean;
  encrypted: boolean;
  seq: number;
  archiveUuid: string;
  plainLength: number;
  payloadLength: number;
  nonce: Buffer;
  entries: ClusterEntry[];
  payloadSha256: Buffer;
  headerLength: number;
  /** headerLength + payloadLength. */
  totalLength: number;
}

export interface DecodedCluster {
  deviceId: number;
  cluster: number;
  /** Exactly the cluster's logical length, zero blocks filled in. */
  data: Buffer;
}

export interface DecodeExtentOptions {
  /** Needed for encrypted extents. */
  key?: Buffer;
  /** Fingerprint the archive header expects; lets a wrong key be named precisely. */
  keyFingerprint?: string | null;
  /** Needed for compressed extents. */
  compressor?: Compressor;
  /** When given, the extent must carry this archive UUID / sequence number. */
  archiveUuid?: string;
  expectedSeq?: number;
  /** Used in error messages, e.g. the extent's byte offset in the archive. */
  what?: string;
  /**
   * v2: the archive's header tag, appended to the GCM associated data
   * (docs/FORMAT.md "Version 2"); null/absent for v1 archives.
   */
  headerTag?: Buffer | null;
  /**
   * Also check the stored-payload digest of an unencrypted extent decoded in
   * a PayloadUnpacker (default true). A restore that checks the plaintext
   * digest end to end passes false: damage anywhere in the payload still
   * fails (a changed body decodes to other bytes or not at all, a changed
   * plaintext digest no longer matches), decompression is bounded whatever
   * the frame claims (ZstdPool), and it saves one SHA-256 over the stored
   * bytes per extent (docs/benchmarks.md). `verify` and `restore --verify`
   * keep both digests.
   */
  checkStoredDigest?: boolean;
}

const ZERO_BLOCK = Buffer.alloc(ZERO_BLOCK_SIZE);

/** Number of 4 KiB blocks of a cluster of logical length `length`. */
export function blockCountOf(length: number): number {
  return Math.ceil(length / ZERO_BLOCK_SIZE);
}

/** Zero mask of a cluster; bit i set when block i is all zero (memcmp, fast). */
export function zeroMaskOf(data: Buffer): number {
  let mask = 0;
  const blocks = blockCountOf(data.length);
  for (let i = 0; i < blocks; i++) {
    const start = i * ZERO_BLOCK_SIZE;
    const end = Math.min(start + ZERO_BLOCK_SIZE, data.length);
    if (data.compare(ZERO_BLOCK, 0, end - start, start, end) === 0) mask |= 1 << i;
  }
  return mask;
}

/** Mask with every existing block set: such a cluster is a zero run, not stored. */
export function fullMaskOf(length: number): number {
  return (1 << blockCountOf(length)) - 1;
}

/** Bytes of the non-zero blocks of a cluster. */
export function storedBytesOf(entry: Pick<ClusterEntry, 'length' | 'zeroMask'>): number {
  let n = 0;
  const blocks = blockCountOf(entry.length);
  for (let i = 0; i < blocks; i++) {
    if ((entry.zeroMask & (1 << i)) === 0) n += Math.min(ZERO_BLOCK_SIZE, entry.length - i * ZERO_BLOCK_SIZE);
  }
  return n;
}

/** Appends the non-zero blocks of `data` to `out` at `pos`; returns the new position. */
export function packCluster(data: Buffer, zeroMask: number, out: Buffer, pos: number): number {
  const blocks = blockCountOf(data.length);
  for (let i = 0; i < blocks; i++) {
    if ((zeroMask & (1 << i)) !== 0) continue;
    const start = i * ZERO_BLOCK_SIZE;
    const end = Math.min(start + ZERO_BLOCK_SIZE, data.length);
    pos += data.copy(out, pos, start, end);
  }
  return pos;
}

export interface ExtentHeaderInput {
  seq: number;
  archiveUuid: string;
  /** Sorted ascending by (deviceId, cluster). */
  entries: ClusterEntry[];
  plainLength: number;
  /** Length of the body: the zstd frame when `compressed`, else plainLength. */
  bodyLength: number;
  compressed: boolean;
  /** Present = encrypted (12 bytes, fresh per extent). */
  nonce?: Buffer;
}

/**
 * Encodes an extent header whose two checksums are still zero; `aad` is a
 * view of its first 56+16N bytes (the AES-GCM associated data), and
 * `payloadLength` is what the stored payload must measure. Complete it with
 * finishExtentHeader() once the stored payload's SHA-256 is known.
 */
export function encodeExtentHeader(x: ExtentHeaderInput): { header: Buffer; aad: Buffer; payloadLength: number } {
  const n = x.entries.length;
  const encrypted = x.nonce !== undefined;
  const nonce = x.nonce ?? Buffer.alloc(NONCE_SIZE);
  if (nonce.length !== NONCE_SIZE) throw new Error('internal: encrypted extent needs a 12-byte nonce');
  const w = new ByteWriter(extentHeaderSize(n));
  w.bytes(EXTENT_MAGIC)
    .u8((x.compressed ? EXTENT_FLAG_COMPRESSED : 0) | (encrypted ? EXTENT_FLAG_ENCRYPTED : 0))
    .u8(0)
    .u16(n)
    .u64(x.seq)
    .bytes(parseUuid(x.archiveUuid))
    .u32(x.plainLength);
  const payloadLength = SHA256_SIZE + x.bodyLength + (encrypted ? GCM_TAG_SIZE : 0);
  w.u32(payloadLength).bytes(nonce).u32(0);
  for (const e of x.entries) w.u8(e.deviceId).u8(0).u16(e.zeroMask).u32(e.length).u64(e.cluster);
  const aadEnd = w.offset;
  const header = w.buf;
  return { header, aad: header.subarray(0, aadEnd), payloadLength };
}

/** Fills in the stored-payload SHA-256 and the header checksum (in place). */
export function finishExtentHeader(header: Buffer, payloadSha256: Uint8Array): Buffer {
  const shaAt = header.length - 2 * SHA256_SIZE;
  header.set(payloadSha256, shaAt);
  sha256(header.subarray(0, shaAt + SHA256_SIZE)).copy(header, shaAt + SHA256_SIZE);
  return header;
}

/**
 * Parses and checks an extent header from `buf` (which may hold more than
 * the header). Checks the header checksum before trusting any field.
 */
export function parseExtentHeader(buf: Buffer, what = 'extent'): ExtentHeader {
  if (buf.length < EXTENT_FIXED_SIZE) throw new FormatError(`${what}: ${buf.length} bytes is shorter than an extent header`);
  if (!buf.subarray(0, EXTENT_MAGIC.length).equals(EXTENT_MAGIC)) throw new FormatError(`${what}: bad extent magic`);
  const n = buf.readUInt16LE(6);
  if (n < 1 || n > MAX_CLUSTERS_PER_EXTENT) throw new FormatError(`${what}: cluster count ${n} not in 1..${MAX_CLUSTERS_PER_EXTENT}`);
  const hlen = extentHeaderSize(n);
  if (buf.length < hlen) throw new FormatError(`${what}: header needs ${hlen} bytes, have ${buf.length}`);
  checkSha256(buf.subarray(0, hlen - SHA256_SIZE), buf.subarray(hlen - SHA256_SIZE, hlen), `${what} header`);

  const r = new ByteReader(buf.subarray(0, hlen - 2 * SHA256_SIZE), what);
  r.bytes(EXTENT_MAGIC.length);
  const flags = r.u8();
  if ((flags & ~(EXTENT_FLAG_COMPRESSED | EXTENT_FLAG_ENCRYPTED)) !== 0) throw new FormatError(`${what}: unknown flags 0x${flags.toString(16)}`);
  r.zeros(1, 'byte 5');
  r.u16();
  const seq = r.u64('sequence number');
  const uuidRaw = r.bytes(UUID_SIZE);
  const plainLength = r.u32();
  const payloadLength = r.u32();
  const nonce = Buffer.from(r.bytes(NONCE_SIZE));
  r.zeros(4, 'bytes 52..55');
  const encrypted = (flags & EXTENT_FLAG_ENCRYPTED) !== 0;
  const compressed = (flags & EXTENT_FLAG_COMPRESSED) !== 0;
  if (!encrypted && !nonce.every((b) => b === 0)) throw new FormatError(`${what}: nonce set on an unencrypted extent`);
  if (plainLength < 1 || plainLength > MAX_EXTENT_DATA) throw new FormatError(`${what}: plaintext length ${plainLength} not in 1..${MAX_EXTENT_DATA}`);
  const overhead = SHA256_SIZE + (encrypted ? GCM_TAG_SIZE : 0);
  const bodyLength = payloadLength - overhead;
  // Stored raw when zstd does not shrink, so a compressed body is strictly smaller.
  if (bodyLength < 1 || bodyLength > plainLength || (compressed && bodyLength >= plainLength) || (!compressed && bodyLength !== plainLength)) {
    throw new FormatError(`${what}: payload length ${payloadLength} inconsistent with plaintext length ${plainLength}`);
  }
  const entries: ClusterEntry[] = [];
  let sum = 0;
  for (let i = 0; i < n; i++) {
    const deviceId = r.u8();
    r.zeros(1, 'cluster entry byte 1');
    const zeroMask = r.u16();
    const length = r.u32();
    const cluster = r.u64('cluster number');
    if (length < 1 || length > CLUSTER_SIZE) throw new FormatError(`${what}: cluster length ${length} not in 1..${CLUSTER_SIZE}`);
    const full = fullMaskOf(length);
    if ((zeroMask & ~full) !== 0) throw new FormatError(`${what}: zero mask bits beyond the cluster's ${blockCountOf(length)} blocks`);
    if (zeroMask === full) throw new FormatError(`${what}: all-zero cluster stored in an extent`);
    const prev = entries[i - 1];
    if (prev !== undefined && (deviceId < prev.deviceId || (deviceId === prev.deviceId && cluster <= prev.cluster))) {
      throw new FormatError(`${what}: cluster table not strictly ascending`);
    }
    const e = { deviceId, cluster, length, zeroMask };
    sum += storedBytesOf(e);
    entries.push(e);
  }
  if (sum !== plainLength) throw new FormatError(`${what}: cluster table holds ${sum} bytes, header says ${plainLength}`);
  if (BLOCKS_PER_CLUSTER > 16) throw new Error('internal: zero mask is 16 bits');
  return {
    compressed,
    encrypted,
    seq,
    archiveUuid: stringifyUuid(uuidRaw),
    plainLength,
    payloadLength,
    nonce,
    entries,
    payloadSha256: Buffer.from(buf.subarray(hlen - 2 * SHA256_SIZE, hlen - SHA256_SIZE)),
    headerLength: hlen,
    totalLength: hlen + payloadLength,
  };
}

/**
 * Checks everything checkable without the key or the codec: header checksum,
 * exact length, stored-payload SHA-256, and (optionally) uuid/sequence.
 */
export function checkExtent(bytes: Buffer, opts: Pick<DecodeExtentOptions, 'archiveUuid' | 'expectedSeq' | 'what'> = {}): ExtentHeader {
  const h = checkExtentHeader(bytes, opts);
  checkSha256(bytes.subarray(h.headerLength), h.payloadSha256, `${opts.what ?? 'extent'} stored payload`);
  return h;
}

/** checkExtent without the stored-payload digest (for callers that check it elsewhere, e.g. in a worker). */
function checkExtentHeader(bytes: Buffer, opts: Pick<DecodeExtentOptions, 'archiveUuid' | 'expectedSeq' | 'what'>): ExtentHeader {
  const what = opts.what ?? 'extent';
  const h = parseExtentHeader(bytes, what);
  if (bytes.length !== h.totalLength) throw new FormatError(`${what}: ${bytes.length} bytes given, extent is ${h.totalLength}`);
  if (opts.archiveUuid !== undefined && h.archiveUuid !== opts.archiveUuid) {
    throw new FormatError(`${what}: belongs to archive ${h.archiveUuid}, not ${opts.archiveUuid}`);
  }
  if (opts.expectedSeq !== undefined && h.seq !== opts.expectedSeq) {
    throw new FormatError(`${what}: sequence number ${h.seq}, index expects ${opts.expectedSeq}`);
  }
  return h;
}

function wrap(err: unknown, what: string): Error {
  if (err instanceof CowstreamError) return err;
  return new CodecError(`${what}: decompression failed`, { cause: err });
}

/**
 * Fully decodes one extent: checks, decrypts, decompresses, checks the
 * plaintext SHA-256 and expands the clusters (zero blocks filled in).
 */
export async function decodeExtent(bytes: Buffer, opts: DecodeExtentOptions = {}): Promise<DecodedCluster[]> {
  return (await decodeExtentLeased(bytes, opts)).clusters;
}

/** decodeExtent's clusters, plus `release()` to hand their memory back once they are written. */
export interface LeasedClusters {
  clusters: DecodedCluster[];
  /**
   * Returns the plaintext buffer to the compressor's pool (when it came from
   * one, see PayloadUnpacker). After it, `clusters` must not be touched.
   */
  release(): void;
}

/**
 * decodeExtent for hot loops (restore): the clusters may be views of a
 * pooled plaintext buffer that `release()` recycles, so a restore of any
 * size allocates (and garbage-collects) no per-extent plaintext.
 */
export async function decodeExtentLeased(bytes: Buffer, opts: DecodeExtentOptions = {}): Promise<LeasedClusters> {
  const what = opts.what ?? 'extent';
  const h = checkExtentHeader(bytes, opts);
  const plain = await unpackPlaintext(bytes, h, opts, what);
  const clusters = splitClusters(h, plain, plain.buffer === bytes.buffer);
  const c = opts.compressor;
  let released = false;
  return {
    clusters,
    release: (): void => {
      if (released) return;
      released = true;
      if (c !== undefined && isPayloadUnpacker(c)) c.releaseBuffer(plain);
    },
  };
}

/** The extent's checked plaintext: every digest of the payload verified, decrypted, decompressed. */
async function unpackPlaintext(bytes: Buffer, h: ExtentHeader, opts: DecodeExtentOptions, what: string): Promise<Buffer> {
  const unpacker = opts.compressor !== undefined && isPayloadUnpacker(opts.compressor) ? opts.compressor : undefined;
  const stored = bytes.subarray(h.headerLength);
  if (!h.encrypted && unpacker) {
    // Both digests and the decompression in one worker job: the caller's
    // thread (a restore's event loop) never hashes or decompresses.
    return unpackIn(unpacker, stored, h, what, opts.checkStoredDigest ?? true);
  }
  checkSha256(stored, h.payloadSha256, `${what} stored payload`);
  let inner = stored;
  if (h.encrypted) {
    const expected = opts.keyFingerprint ?? null;
    if (opts.key === undefined) {
      throw new EncryptionKeyError(`archive is encrypted${expected ? ` with key fingerprint ${expected}` : ''}; no key given`);
    }
    const got = keyFingerprint(opts.key);
    if (expected !== null && got !== expected) {
      throw new EncryptionKeyError(`wrong key: archive expects key fingerprint ${expected}, given key has ${got}`);
    }
    const aadEnd = EXTENT_FIXED_SIZE + CLUSTER_ENTRY_SIZE * h.entries.length;
    const aad = opts.headerTag ? Buffer.concat([bytes.subarray(0, aadEnd), opts.headerTag]) : bytes.subarray(0, aadEnd);
    inner = open(opts.key, h.nonce, inner, aad, what);
    if (unpacker) return unpackIn(unpacker, inner, h, what, false);
  }
  const digest = inner.subarray(0, SHA256_SIZE);
  const body = inner.subarray(SHA256_SIZE);
  let plain: Buffer;
  if (h.compressed) {
    if (opts.compressor === undefined) throw new CodecError(`${what}: compressed extent but no compressor given`);
    try {
      plain = await opts.compressor.decompress(body, h.plainLength);
    } catch (err) {
      throw wrap(err, what);
    }
    if (plain.length !== h.plainLength) {
      throw new FormatError(`${what}: decompressed to ${plain.length} bytes, expected ${h.plainLength}`);
    }
  } else {
    plain = body;
  }
  checkSha256(plain, digest, `${what} plaintext`);
  return plain;
}

async function unpackIn(
  unpacker: PayloadUnpacker,
  inner: Buffer,
  h: ExtentHeader,
  what: string,
  checkStored: boolean,
): Promise<Buffer> {
  try {
    return await unpacker.unpackPayload(inner, {
      compressed: h.compressed,
      plainLength: h.plainLength,
      checkPlain: true,
      ...(checkStored ? { payloadSha256: h.payloadSha256 } : {}),
    });
  } catch (err) {
    if (err instanceof ChecksumError) throw new ChecksumError(`${what} ${err.message}`, { cause: err });
    throw wrap(err, what);
  }
}

/**
 * Expands the plaintext into clusters (zero blocks filled in). A cluster
 * without zero blocks is a view of `plain` — no copy, no allocation — unless
 * `plain` aliases the caller's input (a raw extent decoded in place), whose
 * memory the caller may reuse.
 */
function splitClusters(h: ExtentHeader, plain: Buffer, aliasesInput: boolean): DecodedCluster[] {
  const out: DecodedCluster[] = [];
  let pos = 0;
  for (const e of h.entries) {
    const blocks = blockCountOf(e.length);
    const full = (1 << blocks) - 1;
    if ((e.zeroMask & full) === 0 && !aliasesInput) {
      out.push({ deviceId: e.deviceId, cluster: e.cluster, data: plain.subarray(pos, pos + e.length) });
      pos += e.length;
      continue;
    }
    const data = Buffer.alloc(e.length);
    for (let i = 0; i < blocks; i++) {
      if ((e.zeroMask & (1 << i)) !== 0) continue;
      const start = i * ZERO_BLOCK_SIZE;
      const len = Math.min(ZERO_BLOCK_SIZE, e.length - start);
      plain.copy(data, start, pos, pos + len);
      pos += len;
    }
    out.push({ deviceId: e.deviceId, cluster: e.cluster, data });
  }
  return out;
}
