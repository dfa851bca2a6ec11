/**
 * Archive reader (docs/FORMAT.md "Opening and verifying"). Opens an archive
 * with ranged reads — the footer, then trailer and header — and validates
 * every length and count against fixed limits and the source size before
 * reading or allocating anything.
 */
import { CodecError, CowstreamError, EncryptionKeyError, FormatError, TruncatedArchiveError } from '../errors.js';
import type { Compressor } from '../codec/types.js';
import { CLUSTER_SIZE } from './constants.js';
import { keyFingerprint } from './encryption.js';
import { checkTag, headerTag, indexTag, macKey, openConfig } from './auth.js';
import { IndexTooLargeError } from './errors.js';
import { maxIndexEntriesFromEnv, MAX_INDEX_ENTRIES_ENV } from './limits.js';
import { type DecodedCluster, type ExtentHeader, checkExtent, decodeExtent } from './extent.js';
import { type ArchiveFooter, decodeFooter } from './footer.js';
import { type ArchiveHeader, clusterCountOf, clusterLengthOf, decodeHeader } from './header.js';
import {
  EXTENT_REF_SIZE,
  FOOTER_BODY_SIZE,
  FOOTER_SIZE,
  FORMAT_V2,
  HEADER_FIXED_SIZE,
  MAX_HEADER_SIZE,
  MAX_TRAILER_SIZE,
  SHA256_SIZE,
  TAG_SIZE,
  TRAILER_FIXED_SIZE,
  extentHeaderSize,
} from './layout.js';
import type { RangeSource } from './sink.js';
import { type DataRun, type ExtentRef, type TrailerIndex, type ZeroRun, decodeTrailer, peekTrailerCounts, trailerSize, validateIndex } from './trailer.js';

export interface OpenArchiveOptions {
  /** 32-byte key for encrypted archives; a wrong key fails at open. */
  key?: Buffer;
  /** Needed to decode compressed extents (and for plaintext checks in verify). */
  compressor?: Compressor;
  /**
   * Index entries (extents + data runs + zero runs) this reader loads; more
   * is refused with IndexTooLargeError before the trailer is read. Default:
   * COWSTREAM_MAX_INDEX_ENTRIES, else DEFAULT_MAX_INDEX_ENTRIES.
   */
  maxIndexEntries?: number;
}

export type ClusterLocation = { kind: 'data'; run: DataRun } | { kind: 'zero'; run: ZeroRun } | { kind: 'absent' };

export interface VerifyFailure {
  /** Byte offset of the first bad extent (or of the footer for a totals mismatch). */
  offset: number;
  /** Its sequence number, or -1 when the problem is not one extent. */
  seq: number;
  length: number;
  code: string;
  message: string;
}

export interface VerifyResult {
  ok: boolean;
  extentCount: number;
  extentsChecked: number;
  bytesChecked: number;
  /** True when plaintext SHA-256s were checked too (needs compressor, and key if encrypted). */
  plaintextChecked: boolean;
  /** True when header, index and configs were authenticated under the key (v2, encrypted, key given). */
  authenticated: boolean;
  firstBad?: VerifyFailure;
}

export interface VerifyOptions {
  /** Called after each extent with (extentsChecked, extentCount). */
  onProgress?: (done: number, total: number) => void;
}

function asCowstream(err: unknown, what: string): CowstreamError {
  return err instanceof CowstreamError ? err : new FormatError(`${what}: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
}

export class ArchiveReader {
  /** Data runs grouped by extent (compressed sparse rows: no array per extent). */
  private readonly runStart: Uint32Array;
  private readonly runOrder: Uint32Array;
  private readonly deviceSizes: Map<number, number>;

  constructor(
    readonly source: RangeSource,
    readonly header: ArchiveHeader,
    readonly footer: ArchiveFooter,
    readonly index: TrailerIndex,
    private readonly opts: OpenArchiveOptions,
    /** Header, index and configs verified under the key (v2, encrypted, key given). */
    readonly authenticated = false,
  ) {
    const n = index.extents.length;
    this.runStart = new Uint32Array(n + 1);
    for (const r of index.dataRuns) this.runStart[r.extentIndex + 1]++;
    for (let i = 0; i < n; i++) this.runStart[i + 1] += this.runStart[i];
    this.runOrder = new Uint32Array(index.dataRuns.length);
    const fill = this.runStart.slice(0, n);
    index.dataRuns.forEach((r, i) => {
      this.runOrder[fill[r.extentIndex]++] = i;
    });
    this.deviceSizes = new Map(header.devices.map((d) => [d.id, d.size]));
  }

  /** v2 header tag bound into encrypted extents' associated data (null for v1 / not encrypted). */
  get headerTag(): Buffer | null {
    return this.header.version === FORMAT_V2 && this.encrypted ? this.header.tag : null;
  }

  get encrypted(): boolean {
    return this.header.encryption !== 'none';
  }

  /** Where a cluster lives: an extent (data run), a zero run, or absent (parent). Binary search. */
  lookup(deviceId: number, cluster: number): ClusterLocation {
    const find = <T extends ZeroRun>(runs: T[]): T | undefined => {
      let lo = 0;
      let hi = runs.length - 1;
      while (lo <= hi) {
        const mid = (lo + hi) >> 1;
        const r = runs[mid];
        if (r.deviceId < deviceId || (r.deviceId === deviceId && r.firstCluster + r.count <= cluster)) lo = mid + 1;
        else if (r.deviceId > deviceId || r.firstCluster > cluster) hi = mid - 1;
        else return r;
      }
      return undefined;
    };
    const d = find(this.index.dataRuns);
    if (d !== undefined) return { kind: 'data', run: d };
    const z = find(this.index.zeroRuns);
    if (z !== undefined) return { kind: 'zero', run: z };
    return { kind: 'absent' };
  }

  private extentAt(offset: number, length: number): ExtentRef {
    const xs = this.index.extents;
    let lo = 0;
    let hi = xs.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const x = xs[mid];
      if (x.offset < offset) lo = mid + 1;
      else if (x.offset > offset) hi = mid - 1;
      else {
        if (x.length !== length) throw new FormatError(`${this.source.name}: extent at ${offset} is ${x.length} bytes, not ${length}`);
        return x;
      }
    }
    throw new FormatError(`${this.source.name}: no extent starts at offset ${offset}`);
  }

  private what(x: ExtentRef): string {
    return `${this.source.name}: extent ${x.seq} at offset ${x.offset}`;
  }

  /** The extent's cluster table must list exactly the clusters the index maps to it. */
  private checkAgainstIndex(x: ExtentRef, h: ExtentHeader): void {
    let i = 0;
    for (let k = this.runStart[x.seq]; k < this.runStart[x.seq + 1]; k++) {
      const run = this.index.dataRuns[this.runOrder[k]];
      for (let c = run.firstCluster; c < run.firstCluster + run.count; c++, i++) {
        const e = h.entries[i];
        if (e === undefined || e.deviceId !== run.deviceId || e.cluster !== c) {
          throw new FormatError(`${this.what(x)}: cluster table does not match the trailer index at entry ${i}`);
        }
        const size = this.deviceSizes.get(e.deviceId) as number;
        if (e.length !== clusterLengthOf(size, c)) {
          throw new FormatError(`${this.what(x)}: cluster ${c} length ${e.length}, device needs ${clusterLengthOf(size, c)}`);
        }
      }
    }
    if (i !== h.entries.length) throw new FormatError(`${this.what(x)}: cluster table has entries not in the index`);
  }

  /** Decodes the extent at [offset, offset+length) (as listed in index.dataRuns). */
  async readExtent(offset: number, length: number): Promise<DecodedCluster[]> {
    const x = this.extentAt(offset, length);
    const bytes = await this.source.read(x.offset, x.length);
    return this.decodeRef(x, bytes);
  }

  private async decodeRef(x: ExtentRef, bytes: Buffer): Promise<DecodedCluster[]> {
    const what = this.what(x);
    const h = checkExtent(bytes, { archiveUuid: this.header.uuid, expectedSeq: x.seq, what });
    this.checkAgainstIndex(x, h);
    return decodeExtent(bytes, {
      key: this.opts.key,
      keyFingerprint: this.header.keyFingerprint,
      compressor: this.opts.compressor,
      archiveUuid: this.header.uuid,
      expectedSeq: x.seq,
      what,
      headerTag: this.headerTag,
    });
  }

  /** Every stored cluster, extent by extent in file order (one extent in memory at a time). */
  async *clusters(): AsyncGenerator<DecodedCluster> {
    for (const x of this.index.extents) {
      const bytes = await this.source.read(x.offset, x.length);
      for (const c of await this.decodeRef(x, bytes)) yield c;
    }
  }

  /**
   * Checks every extent: header checksum, stored-payload SHA-256 and index
   * consistency always; plaintext SHA-256 when it can decode (compressor,
   * plus the key for an encrypted archive). Stops at the first bad extent.
   */
  async verify(opts: VerifyOptions = {}): Promise<VerifyResult> {
    const xs = this.index.extents;
    const plaintextChecked = this.opts.compressor !== undefined && (!this.encrypted || this.opts.key !== undefined);
    const result: VerifyResult = { ok: true, extentCount: xs.length, extentsChecked: 0, bytesChecked: 0, plaintextChecked, authenticated: this.authenticated };
    let dataBytes = 0;
    // Read one extent ahead: hides S3 latency, bounds memory to two extents.
    const readAt = (i: number): Promise<Buffer> | undefined => {
      const x = xs[i];
      if (x === undefined) return undefined;
      const p = this.source.read(x.offset, x.length);
      p.catch(() => undefined);
      return p;
    };
    let next = readAt(0);
    for (let i = 0; i < xs.length; i++) {
      const x = xs[i];
      try {
        const bytes = await (next as Promise<Buffer>);
        next = readAt(i + 1);
        const what = this.what(x);
        const h = checkExtent(bytes, { archiveUuid: this.header.uuid, expectedSeq: x.seq, what });
        this.checkAgainstIndex(x, h);
        if (plaintextChecked) await this.decodeRef(x, bytes);
        dataBytes += h.plainLength;
      } catch (err) {
        // Damage (FormatError incl. checksum/truncation) or undecodable data (CodecError)
        // is a verify finding; anything else (I/O, missing key) is thrown.
        if (!(err instanceof FormatError || err instanceof CodecError)) throw asCowstream(err, this.what(x));
        const e = err;
        result.ok = false;
        result.firstBad = { offset: x.offset, seq: x.seq, length: x.length, code: e.code, message: e.message };
        return result;
      }
      result.extentsChecked++;
      result.bytesChecked += x.length;
      opts.onProgress?.(result.extentsChecked, xs.length);
    }
    if (dataBytes !== this.footer.dataBytes) {
      result.ok = false;
      result.firstBad = {
        offset: this.source.size - FOOTER_SIZE,
        seq: -1,
        length: FOOTER_SIZE,
        code: 'FORMAT',
        message: `${this.source.name}: extents hold ${dataBytes} data bytes, footer says ${this.footer.dataBytes}`,
      };
    }
    return result;
  }

  async close(): Promise<void> {
    await this.source.close();
  }
}

/**
 * Opens an archive: reads and checks the footer, then header and trailer.
 * No valid footer → TruncatedArchiveError. A key whose fingerprint differs
 * from the header's → EncryptionKeyError naming the expected fingerprint.
 */
export async function openArchive(source: RangeSource, opts: OpenArchiveOptions = {}): Promise<ArchiveReader> {
  const name = source.name;
  const size = source.size;
  const minHeader = HEADER_FIXED_SIZE + SHA256_SIZE;
  if (!Number.isSafeInteger(size) || size < FOOTER_SIZE) {
    throw new TruncatedArchiveError(`${name}: ${size} bytes is too short to be an archive (no footer)`);
  }
  const footerBuf = await readExact(source, size - FOOTER_SIZE, FOOTER_SIZE);
  const footer = decodeFooter(footerBuf, name);
  const body = size - FOOTER_SIZE;
  const { headerLength, trailerOffset, trailerLength, version } = footer;
  // Every length is checked against limits and the file size before any read/allocation.
  if (headerLength < minHeader || headerLength > MAX_HEADER_SIZE || headerLength > body) {
    throw new FormatError(`${name}: footer header length ${headerLength} out of range`);
  }
  if (trailerLength < trailerSize(0, 0, 0, version) || trailerLength > MAX_TRAILER_SIZE || trailerOffset < headerLength || trailerOffset + trailerLength !== body) {
    throw new FormatError(`${name}: footer trailer position ${trailerOffset}+${trailerLength} inconsistent with file size ${size}`);
  }
  await checkIndexSize(source, footer, opts.maxIndexEntries ?? maxIndexEntriesFromEnv());
  const [headerBuf, trailerBuf] = await Promise.all([readExact(source, 0, headerLength), readExact(source, trailerOffset, trailerLength)]);
  let header = decodeHeaderNamed(headerBuf, name);
  if (header.version !== footer.version) throw new FormatError(`${name}: header says format version ${header.version}, footer ${footer.version}`);
  if (header.uuid !== footer.uuid) throw new FormatError(`${name}: footer belongs to archive ${footer.uuid}, header says ${header.uuid}`);
  const index = decodeTrailerNamed(trailerBuf, footer, name);
  if (index.extents.length !== footer.extentCount) throw new FormatError(`${name}: footer says ${footer.extentCount} extents, trailer has ${index.extents.length}`);
  let authenticated = false;
  if (opts.key !== undefined) {
    header = authenticate(opts.key, header, headerBuf, footerBuf, trailerBuf, index, name);
    authenticated = header.version === FORMAT_V2;
  }
  try {
    validateIndex(index, header, trailerOffset);
  } catch (err) {
    throw prefix(err, name);
  }
  checkTotals(index, header, footer, name);
  return new ArchiveReader(source, header, footer, index, opts, authenticated);
}

/**
 * Refuses an index with more entries than `max` before reading it: the
 * trailer length bounds the entries (each is >= 16 bytes), and only when that
 * bound exceeds `max` are the exact counts read (16 bytes).
 */
async function checkIndexSize(source: RangeSource, footer: ArchiveFooter, max: number): Promise<void> {
  const fixed = trailerSize(0, 0, 0, footer.version);
  if ((footer.trailerLength - fixed) / EXTENT_REF_SIZE <= max) return;
  const c = peekTrailerCounts(await readExact(source, footer.trailerOffset, TRAILER_FIXED_SIZE), footer.version);
  const total = c.extents + c.dataRuns + c.zeroRuns;
  if (total > max) {
    throw new IndexTooLargeError(
      `${source.name}: the index holds ${c.extents} extents, ${c.dataRuns} data runs and ${c.zeroRuns} zero runs (${total} entries); ` +
        `this reader loads at most ${max} (raise ${MAX_INDEX_ENTRIES_ENV} if the archive is trusted and memory allows)`,
    );
  }
}

/**
 * Key checks (docs/FORMAT.md "What a reader with the key checks"): the key
 * must be the archive's, then (v2) the header tag, the index tag and every
 * sealed config must verify. Returns the header with its configs opened.
 */
function authenticate(
  key: Buffer,
  header: ArchiveHeader,
  headerBuf: Buffer,
  footerBuf: Buffer,
  trailerBuf: Buffer,
  index: TrailerIndex,
  name: string,
): ArchiveHeader {
  if (header.keyFingerprint === null) {
    throw new EncryptionKeyError(
      `${name}: archive is not encrypted, but a key was given: an unencrypted archive carries no authentication, anyone who can write the store could have made it`,
    );
  }
  const got = keyFingerprint(key);
  if (got !== header.keyFingerprint) {
    throw new EncryptionKeyError(`${name}: wrong key: archive expects key fingerprint ${header.keyFingerprint}, given key has ${got}`);
  }
  if (header.version !== FORMAT_V2) return header;
  const kMac = macKey(key, header.uuid);
  const hTag = header.tag as Buffer;
  checkTag(headerTag(kMac, headerBuf.subarray(0, headerBuf.length - SHA256_SIZE - TAG_SIZE)), hTag, `${name}: header`);
  const trailerBody = trailerBuf.subarray(0, trailerBuf.length - SHA256_SIZE - TAG_SIZE);
  checkTag(indexTag(kMac, hTag, footerBuf.subarray(0, FOOTER_BODY_SIZE), trailerBody), index.tag as Buffer, `${name}: index (trailer and footer)`);
  const configs = header.configs.map((c) => ({ name: c.name, data: openConfig(key, header.uuid, c.name, c.data, `${name}: config ${c.name}`) }));
  return { ...header, configs, configsSealed: false };
}

function prefix(err: unknown, name: string): Error {
  if (err instanceof FormatError) {
    const Ctor = err.constructor as new (m: string, o?: { cause?: unknown }) => FormatError;
    return new Ctor(`${name}: ${err.message}`, { cause: err });
  }
  return asCowstream(err, name);
}

function decodeHeaderNamed(buf: Buffer, name: string): ArchiveHeader {
  try {
    return decodeHeader(buf);
  } catch (err) {
    throw prefix(err, name);
  }
}

function decodeTrailerNamed(buf: Buffer, footer: ArchiveFooter, name: string): TrailerIndex {
  try {
    return decodeTrailer(buf, footer.trailerSha256, footer.version);
  } catch (err) {
    throw prefix(err, name);
  }
}

/** Footer totals must agree with what the index implies. */
function checkTotals(index: TrailerIndex, header: ArchiveHeader, footer: ArchiveFooter, name: string): void {
  let clusters = 0;
  let stored = 0;
  for (const x of index.extents) {
    clusters += x.clusterCount;
    stored += x.length - extentHeaderSize(x.clusterCount);
  }
  if (clusters !== footer.clusterCount) throw new FormatError(`${name}: footer says ${footer.clusterCount} stored clusters, index has ${clusters}`);
  if (stored !== footer.storedBytes) throw new FormatError(`${name}: footer says ${footer.storedBytes} stored bytes, index implies ${stored}`);
  const sizes = new Map(header.devices.map((d) => [d.id, d.size]));
  let logical = 0;
  const add = (r: ZeroRun): void => {
    const size = sizes.get(r.deviceId) as number;
    logical += r.count * CLUSTER_SIZE;
    if (r.firstCluster + r.count === clusterCountOf(size)) logical -= clusterCountOf(size) * CLUSTER_SIZE - size;
  };
  for (const r of index.dataRuns) add(r);
  for (const r of index.zeroRuns) add(r);
  if (footer.dataBytes + footer.zeroBytes !== logical) {
    throw new FormatError(`${name}: footer data+zero bytes ${footer.dataBytes + footer.zeroBytes} != ${logical} logical bytes in the index`);
  }
}

async function readExact(source: RangeSource, offset: number, length: number): Promise<Buffer> {
  let buf: Buffer;
  try {
    buf = await source.read(offset, length);
  } catch (err) {
    throw asCowstream(err, `${source.name}: read of ${length} bytes at ${offset}`);
  }
  if (buf.length !== length) throw new TruncatedArchiveError(`${source.name}: short read at ${offset}: ${buf.length} of ${length} bytes`);
  return buf;
}
