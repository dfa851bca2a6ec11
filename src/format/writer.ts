/**
 * Single-pass archive writer (docs/FORMAT.md). Accepts clusters in any order
 * (ClusterSink), packs up to 64 into an extent, compresses extents through
 * the injected Compressor with a bounded number in flight, optionally seals
 * them with AES-256-GCM, and appends them to a ByteSink in sequence order.
 * The trailer index and footer are written by finish().
 *
 * CPU: with an ExtentCompressor (ZstdPool) the per-extent work — both
 * SHA-256 digests, compression, the raw/compressed choice and laying out
 * digest || body — runs in the compressor's workers, and clusters are packed
 * straight into buffers the workers take over without a copy; the main thread
 * only packs clusters and encodes extent headers. Any other Compressor gets
 * the same bytes computed here (hashes on the libuv thread pool).
 *
 * Memory: at most (maxInFlightExtents + 1) extents of ≤ 4 MiB plaintext plus
 * their compressed copies, plus the index (one entry per run) and a sparse
 * presence bitmap (1 bit per cluster, allocated in 8 KiB chunks on use);
 * writerMemoryBound() gives the whole process's bound (docs/memory.md).
 */
import { v7 as uuidv7, validate as validateUuid } from 'uuid';
import { CowstreamError } from '../errors.js';
import { type CompressedExtent, type Compressor, type ExtentCompressor, isExtentCompressor } from '../codec/types.js';
import { type SealKey, importSealKey, sealAsync } from '../codec/crypto.js';
import { sha256Async } from '../codec/hash.js';
import { RUNTIME_RSS_BYTES } from '../codec/zstd-pool.js';
import { sha256 } from './checksum.js';
import { CLUSTER_SIZE, MAX_CLUSTERS_PER_EXTENT, MAX_EXTENT_DATA } from './constants.js';
import { assertKey, keyFingerprint, randomNonce } from './encryption.js';
import { ArchiveWriteError, DuplicateClusterError, IncompleteArchiveError } from './errors.js';
import { type ClusterEntry, encodeExtentHeader, finishExtentHeader, fullMaskOf, packCluster, zeroMaskOf } from './extent.js';
import { encodeFooter } from './footer.js';
import {
  type ConfigBlob,
  type DeviceInfo,
  type HeaderFields,
  checkHeaderFields,
  clusterCountOf,
  clusterLengthOf,
  encodeHeader,
  headerTagOf,
} from './header.js';
import { indexTag, macKey } from './auth.js';
import { FOOTER_BODY_SIZE, MAX_EXTENT_SIZE, MAX_RUN_COUNT, SHA256_SIZE } from './layout.js';
import type { ByteSink, ClusterSink } from './sink.js';
import { type DataRunRecord, type ZeroRun, encodeTrailer, trailerSize } from './trailer.js';

export interface ArchiveWriterOptions {
  hostId: string;
  devices: DeviceInfo[];
  /** UUID of the parent archive for an incremental; null/undefined = full archive. */
  parentUuid?: string | null;
  configs?: ConfigBlob[];
  /** Defaults to a fresh v7 UUID. */
  uuid?: string;
  /** Milliseconds since the epoch; defaults to now. */
  createdAt?: number;
  compressor: Compressor;
  /** 32-byte AES-256 key; absent = not encrypted. */
  encryptionKey?: Buffer;
  output: ByteSink;
  /** Extents being compressed/written at once (memory bound). Default DEFAULT_IN_FLIGHT_EXTENTS. */
  maxInFlightExtents?: number;
}

/** Extents compressed or written at once by default: two workers busy, two more packed and waiting. */
export const DEFAULT_IN_FLIGHT_EXTENTS = 4;

/**
 * Peak resident memory of a process that writes one archive (docs/memory.md):
 *   RUNTIME_RSS_BYTES
 *   + pool.memoryBound(MAX_EXTENT_DATA, true, maxInFlight + 1)   (workers; the
 *       plaintext buffers extents are packed into, one more than in flight)
 *   + maxInFlight × MAX_EXTENT_SIZE   (compressed extents between worker and sink)
 *   + sinkBytes                        (S3ArchiveSink.memoryBound; ~0 for a file)
 * The index and presence bitmap (O(runs), ≤ 1 bit per cluster) are left out:
 * ~4 MiB for a 1 TiB disk with one run per extent.
 */
export function writerMemoryBound(c: { poolBytes: number; maxInFlightExtents?: number; sinkBytes?: number }): number {
  return RUNTIME_RSS_BYTES + c.poolBytes + (c.maxInFlightExtents ?? DEFAULT_IN_FLIGHT_EXTENTS) * MAX_EXTENT_SIZE + (c.sinkBytes ?? 0);
}

export interface ArchiveSummary {
  uuid: string;
  /** Total archive bytes written to the sink. */
  bytesWritten: number;
  extentCount: number;
  /** Logical bytes of non-zero 4 KiB blocks. */
  dataBytes: number;
  /** Logical bytes of zero clusters and zero blocks. */
  zeroBytes: number;
  /** Σ stored extent payload bytes (compressed, sealed). */
  storedBytes: number;
  /** Clusters stored in extents. */
  clusterCount: number;
  /** Clusters recorded as zero runs. */
  zeroClusterCount: number;
  /** Header + extent headers + trailer + footer = bytesWritten − storedBytes. */
  metadataBytes: number;
}

/** 1 bit per cluster, allocated in 64 Ki-cluster chunks only where used. */
class SparseBitmap {
  private static readonly CHUNK_BITS = 1 << 16;
  private chunks = new Map<number, Uint8Array>();
  count = 0;

  private chunk(i: number, create: boolean): Uint8Array | undefined {
    let c = this.chunks.get(i);
    if (c === undefined && create) {
      c = new Uint8Array(SparseBitmap.CHUNK_BITS / 8);
      this.chunks.set(i, c);
    }
    return c;
  }

  /** Index of the first set bit in [first, first+count), or -1. */
  firstSet(first: number, count: number): number {
    let i = first;
    const end = first + count;
    while (i < end) {
      const ci = Math.floor(i / SparseBitmap.CHUNK_BITS);
      const chunkEnd = Math.min(end, (ci + 1) * SparseBitmap.CHUNK_BITS);
      const c = this.chunk(ci, false);
      if (c !== undefined) {
        for (let b = i; b < chunkEnd; b++) {
          const o = b - ci * SparseBitmap.CHUNK_BITS;
          if ((c[o >> 3] & (1 << (o & 7))) !== 0) return b;
        }
      }
      i = chunkEnd;
    }
    return -1;
  }

  setRange(first: number, count: number): void {
    for (let b = first; b < first + count; b++) {
      const ci = Math.floor(b / SparseBitmap.CHUNK_BITS);
      const c = this.chunk(ci, true) as Uint8Array;
      const o = b - ci * SparseBitmap.CHUNK_BITS;
      c[o >> 3] |= 1 << (o & 7);
    }
    this.count += count;
  }
}

interface DeviceState {
  info: DeviceInfo;
  clusters: number;
  present: SparseBitmap;
  zeroRuns: ZeroRun[];
  /** Length of zeroRuns after the last compaction (amortised sort+merge). */
  compactedAt: number;
}

interface PendingEntry extends ClusterEntry {
  plainOffset: number;
  plainLength: number;
}

interface OpenExtent {
  entries: PendingEntry[];
  plain: Buffer;
  pos: number;
}

/**
 * compressExtent() for a plain Compressor (e.g. a test double): the same
 * result, computed on the caller's side (hashes on the libuv thread pool).
 */
async function compressOnCaller(compressor: Compressor, plain: Buffer, hashInner: boolean): Promise<CompressedExtent> {
  const [plainSha, frame] = await Promise.all([sha256Async(plain), compressor.compress(plain)]);
  const compressed = frame.length < plain.length;
  const body = compressed ? frame : plain;
  const inner = Buffer.allocUnsafe(SHA256_SIZE + body.length);
  plainSha.copy(inner, 0);
  body.copy(inner, SHA256_SIZE);
  return { inner, compressed, plainSha256: inner.subarray(0, SHA256_SIZE), innerSha256: hashInner ? await sha256Async(inner) : undefined };
}

function mergeRuns(runs: ZeroRun[]): ZeroRun[] {
  runs.sort((a, b) => a.firstCluster - b.firstCluster);
  const out: ZeroRun[] = [];
  for (const r of runs) {
    const last = out[out.length - 1];
    if (last !== undefined && last.firstCluster + last.count === r.firstCluster) last.count += r.count;
    else out.push({ ...r });
  }
  return out;
}

export class ArchiveWriter implements ClusterSink {
  readonly uuid: string;
  /** Hex fingerprint of the encryption key, or null. */
  readonly keyFingerprint: string | null;

  private readonly compressor: Compressor;
  private readonly output: ByteSink;
  private readonly key: Buffer | undefined;
  private readonly maxInFlight: number;
  private readonly devices = new Map<number, DeviceState>();
  private readonly parentUuid: string | null;

  private queue: Promise<void> = Promise.resolve();
  private emitTail: Promise<void> = Promise.resolve();
  private readonly pending = new Set<Promise<void>>();
  private cur: OpenExtent | undefined;
  private failure: Error | undefined;
  private state: 'open' | 'finishing' | 'finished' | 'aborted' = 'open';
  private outputAborted = false;
  private nextSeq = 0;
  private sealKey: Promise<SealKey> | undefined;
  /** Set when the compressor can hash + compress off-thread and take buffers over (ZstdPool). */
  private readonly extentCompressor: ExtentCompressor | undefined;

  private offset = 0;
  private readonly headerLength: number;
  /** v2 header tag (encrypted archives): bound into every extent's associated data and the index tag. */
  private readonly headerTag: Buffer | undefined;
  private readonly extents: { offset: number; length: number; clusterCount: number }[] = [];
  private readonly dataRuns: DataRunRecord[] = [];
  private storedBytes = 0;
  private dataBytes = 0;
  private zeroBytes = 0;
  private clusterCount = 0;
  private zeroClusterCount = 0;

  private constructor(opts: ArchiveWriterOptions, uuid: string, headerLength: number, headerTag: Buffer | undefined) {
    this.uuid = uuid;
    this.compressor = opts.compressor;
    this.extentCompressor = isExtentCompressor(opts.compressor) ? opts.compressor : undefined;
    this.output = opts.output;
    this.key = opts.encryptionKey;
    this.keyFingerprint = opts.encryptionKey ? keyFingerprint(opts.encryptionKey) : null;
    this.maxInFlight = opts.maxInFlightExtents ?? DEFAULT_IN_FLIGHT_EXTENTS;
    this.parentUuid = opts.parentUuid ?? null;
    this.headerLength = headerLength;
    this.headerTag = headerTag;
    this.offset = headerLength;
    for (const d of opts.devices) {
      this.devices.set(d.id, { info: d, clusters: clusterCountOf(d.size), present: new SparseBitmap(), zeroRuns: [], compactedAt: 0 });
    }
  }

  /** Validates the options and writes the header to `output` immediately. */
  static async create(opts: ArchiveWriterOptions): Promise<ArchiveWriter> {
    const uuid = opts.uuid ?? uuidv7();
    if (!validateUuid(uuid)) throw new ArchiveWriteError(`bad archive uuid ${JSON.stringify(uuid)}`);
    if (opts.parentUuid != null && !validateUuid(opts.parentUuid)) throw new ArchiveWriteError(`bad parent uuid ${JSON.stringify(opts.parentUuid)}`);
    if (opts.encryptionKey !== undefined) assertKey(opts.encryptionKey);
    const max = opts.maxInFlightExtents ?? DEFAULT_IN_FLIGHT_EXTENTS;
    if (!Number.isInteger(max) || max < 1) throw new ArchiveWriteError('maxInFlightExtents must be a positive integer');
    const fields: HeaderFields = {
      uuid,
      parentUuid: opts.parentUuid ?? null,
      createdAt: opts.createdAt ?? Date.now(),
      hostId: opts.hostId,
      codec: 'zstd',
      encryption: opts.encryptionKey ? 'aes-256-gcm' : 'none',
      keyFingerprint: opts.encryptionKey ? keyFingerprint(opts.encryptionKey) : null,
      devices: opts.devices.map((d) => ({ ...d })),
      configs: opts.configs ?? [],
    };
    checkHeaderFields(fields, ArchiveWriteError);
    const header = encodeHeader(fields, opts.encryptionKey);
    const w = new ArchiveWriter(opts, uuid, header.length, opts.encryptionKey ? Buffer.from(headerTagOf(header)) : undefined);
    try {
      await opts.output.write(header);
    } catch (err) {
      await w.abort(err);
      throw err;
    }
    return w;
  }

  /** Runs API calls one at a time, in call order (callers may not await). */
  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const p = this.queue.then(fn);
    this.queue = p.then(
      () => undefined,
      () => undefined,
    );
    return p;
  }

  private checkOpen(): void {
    if (this.failure !== undefined) throw this.failure;
    if (this.state !== 'open') throw new ArchiveWriteError(`archive writer is ${this.state}`);
  }

  private device(deviceId: number): DeviceState {
    const d = this.devices.get(deviceId);
    if (d === undefined) throw new ArchiveWriteError(`unknown device id ${deviceId}`);
    return d;
  }

  private claim(d: DeviceState, first: number, count: number): void {
    if (!Number.isSafeInteger(first) || !Number.isSafeInteger(count) || first < 0 || count < 1 || first + count > d.clusters) {
      throw new ArchiveWriteError(`device ${d.info.name}: clusters ${first}+${count} outside 0..${d.clusters}`);
    }
    const dup = d.present.firstSet(first, count);
    if (dup >= 0) throw new DuplicateClusterError(`device ${d.info.name}: cluster ${dup} written twice`);
    d.present.setRange(first, count);
  }

  private addZeroRun(d: DeviceState, first: number, count: number): void {
    const last = d.zeroRuns[d.zeroRuns.length - 1];
    if (last !== undefined && last.firstCluster + last.count === first) last.count += count;
    else d.zeroRuns.push({ deviceId: d.info.id, firstCluster: first, count });
    // Out-of-order zero clusters create many small runs; merge them now and
    // then so the list stays proportional to the real number of runs.
    if (d.zeroRuns.length > 2 * d.compactedAt + 4096) {
      d.zeroRuns = mergeRuns(d.zeroRuns);
      d.compactedAt = d.zeroRuns.length;
    }
    let bytes = count * CLUSTER_SIZE;
    if (first + count === d.clusters) bytes -= d.clusters * CLUSTER_SIZE - d.info.size;
    this.zeroBytes += bytes;
    this.zeroClusterCount += count;
  }

  /**
   * Accepts one cluster. Resolves once it is buffered (backpressure: waits
   * while maxInFlightExtents extents are being compressed/written). `data`
   * may be reused by the caller afterwards.
   */
  writeCluster(deviceId: number, cluster: number, data: Buffer): Promise<void> {
    return this.serial(async () => {
      this.checkOpen();
      const d = this.device(deviceId);
      if (!Number.isSafeInteger(cluster) || cluster < 0 || cluster >= d.clusters) {
        throw new ArchiveWriteError(`device ${d.info.name}: cluster ${cluster} outside 0..${d.clusters - 1}`);
      }
      const want = clusterLengthOf(d.info.size, cluster);
      if (data.length !== want) throw new ArchiveWriteError(`device ${d.info.name}: cluster ${cluster} has ${data.length} bytes, expected ${want}`);
      this.claim(d, cluster, 1);
      const zeroMask = zeroMaskOf(data);
      if (zeroMask === fullMaskOf(data.length)) {
        this.addZeroRun(d, cluster, 1);
        return;
      }
      const cur = (this.cur ??= { entries: [], plain: this.plainBuffer(), pos: 0 });
      const start = cur.pos;
      cur.pos = packCluster(data, zeroMask, cur.plain, cur.pos);
      cur.entries.push({ deviceId, cluster, length: data.length, zeroMask, plainOffset: start, plainLength: cur.pos - start });
      this.zeroBytes += data.length - (cur.pos - start);
      if (cur.entries.length === MAX_CLUSTERS_PER_EXTENT) await this.sealCurrent();
    });
  }

  /**
   * Records `count` all-zero clusters from `firstCluster` without their data
   * (e.g. holes reported by block status). Same duplicate rules as writeCluster.
   */
  writeZeroes(deviceId: number, firstCluster: number, count: number): Promise<void> {
    return this.serial(async () => {
      this.checkOpen();
      const d = this.device(deviceId);
      this.claim(d, firstCluster, count);
      this.addZeroRun(d, firstCluster, count);
    });
  }

  /**
   * A 4 MiB plaintext buffer. From an ExtentCompressor it is a recycled,
   * transferable buffer that is handed to the worker without a copy.
   */
  private plainBuffer(): Buffer {
    return this.extentCompressor ? this.extentCompressor.acquireBuffer(MAX_EXTENT_DATA) : Buffer.allocUnsafe(MAX_EXTENT_DATA);
  }

  private async sealCurrent(): Promise<void> {
    const cur = this.cur;
    this.cur = undefined;
    if (cur === undefined || cur.entries.length === 0) return;
    // Bound memory: wait for a free slot before starting another extent.
    while (this.pending.size >= this.maxInFlight) await Promise.race(this.pending);
    if (this.failure !== undefined) throw this.failure;

    const entries = cur.entries;
    let plain = cur.plain.subarray(0, cur.pos);
    const cmp = (a: ClusterEntry, b: ClusterEntry): number => a.deviceId - b.deviceId || a.cluster - b.cluster;
    let sorted = true;
    for (let i = 1; i < entries.length && sorted; i++) sorted = cmp(entries[i - 1], entries[i]) < 0;
    if (!sorted) {
      // The table must be sorted (docs/FORMAT.md) and the plaintext follows table order.
      entries.sort(cmp);
      const re = this.plainBuffer();
      let pos = 0;
      for (const e of entries) {
        plain.copy(re, pos, e.plainOffset, e.plainOffset + e.plainLength);
        pos += e.plainLength;
      }
      this.extentCompressor?.releaseBuffer(cur.plain);
      plain = re.subarray(0, pos);
    }
    const seq = this.nextSeq++;
    const job = this.compressAndEmit(
      seq,
      entries.map(({ deviceId, cluster, length, zeroMask }) => ({ deviceId, cluster, length, zeroMask })),
      plain,
    ).catch((err: unknown) => this.fail(err));
    this.pending.add(job);
    void job.finally(() => this.pending.delete(job));
  }

  private fail(err: unknown): void {
    if (this.failure === undefined) {
      this.failure = err instanceof CowstreamError ? err : new ArchiveWriteError('archive write failed', { cause: err });
    }
  }

  /** Compression + digests of one extent's plaintext; off the main thread with an ExtentCompressor. */
  private compressPlain(plain: Buffer, hashInner: boolean): Promise<CompressedExtent> {
    // transfer: `plain` is a view of an acquireBuffer() buffer that nothing else uses.
    if (this.extentCompressor) return this.extentCompressor.compressExtent(plain, { transfer: true, hashInner });
    return compressOnCaller(this.compressor, plain, hashInner);
  }

  /**
   * Hashes, compresses and seals one extent concurrently with the others
   * (compressor workers; AES-GCM and leftover hashing on the libuv thread
   * pool), then appends it in sequence order so that file order = sequence
   * order (docs/FORMAT.md "Trailer"). The main thread only encodes the
   * ~1 KiB header: no 4 MiB copy, hash or concat happens here.
   */
  private async compressAndEmit(seq: number, entries: ClusterEntry[], plain: Buffer): Promise<void> {
    const prev = this.emitTail;
    // Captured now: a transferred `plain` is detached (length 0) afterwards.
    const plainLength = plain.length;
    const prepared = (async () => {
      const key = this.key;
      const c = await this.compressPlain(plain, key === undefined);
      const nonce = key !== undefined ? randomNonce() : undefined;
      // Stored raw when zstd does not shrink (docs/FORMAT.md "Payload"); the compressor chose.
      const { header, aad, payloadLength } = encodeExtentHeader({
        seq,
        archiveUuid: this.uuid,
        entries,
        plainLength,
        bodyLength: c.inner.length - SHA256_SIZE,
        compressed: c.compressed,
        nonce,
      });
      let payload: Buffer;
      let payloadSha: Buffer;
      if (key !== undefined) {
        // The stored-payload digest is over the ciphertext, so it is computed after sealing.
        const sk = await (this.sealKey ??= importSealKey(key));
        payload = await sealAsync(sk, nonce as Buffer, c.inner, Buffer.concat([aad, this.headerTag as Buffer]));
        payloadSha = await sha256Async(payload);
      } else {
        payload = c.inner;
        payloadSha = c.innerSha256 ?? (await sha256Async(payload));
      }
      if (payload.length !== payloadLength) throw new Error('internal: payload length mismatch');
      return { header: finishExtentHeader(header, payloadSha), payload };
    })();
    const run = (async () => {
      let sealed: { header: Buffer; payload: Buffer };
      try {
        sealed = await prepared;
      } finally {
        await prev; // never rejects; keeps emission in sequence order
      }
      if (this.failure !== undefined) return;
      const { header, payload } = sealed;
      await this.output.write(header);
      await this.output.write(payload);
      const length = header.length + payload.length;
      this.extents.push({ offset: this.offset, length, clusterCount: entries.length });
      this.offset += length;
      this.storedBytes += payload.length;
      this.dataBytes += plainLength;
      this.clusterCount += entries.length;
      let last: DataRunRecord | undefined;
      for (const e of entries) {
        if (last !== undefined && last.deviceId === e.deviceId && last.firstCluster + last.count === e.cluster) last.count++;
        else {
          last = { deviceId: e.deviceId, firstCluster: e.cluster, count: 1, extentIndex: seq };
          this.dataRuns.push(last);
        }
      }
    })();
    this.emitTail = run.catch(() => undefined);
    await run;
  }

  /**
   * Flushes the last extent, waits for all in flight, writes trailer and
   * footer and closes the sink. A full archive (no parent) must contain every
   * cluster of every device, else IncompleteArchiveError (and the output is aborted).
   */
  finish(): Promise<ArchiveSummary> {
    return this.serial(async () => {
      if (this.failure !== undefined) {
        // A background extent failed: the archive can never complete.
        await this.abortOutput(this.failure);
        throw this.failure;
      }
      this.checkOpen();
      this.state = 'finishing';
      try {
        await this.sealCurrent();
        while (this.pending.size > 0) await Promise.race(this.pending);
        if (this.failure !== undefined) throw this.failure;
        if (this.parentUuid === null) {
          for (const d of this.devices.values()) {
            if (d.present.count !== d.clusters) {
              throw new IncompleteArchiveError(`full archive: device ${d.info.name} got ${d.present.count} of ${d.clusters} clusters`);
            }
          }
        }
        const zeroRuns: ZeroRun[] = [];
        const ids = [...this.devices.keys()].sort((a, b) => a - b);
        for (const id of ids) {
          for (const r of mergeRuns((this.devices.get(id) as DeviceState).zeroRuns)) {
            // Runs carry a u32 count: split longer ones.
            for (let first = r.firstCluster, left = r.count; left > 0; ) {
              const n = Math.min(left, MAX_RUN_COUNT);
              zeroRuns.push({ deviceId: id, firstCluster: first, count: n });
              first += n;
              left -= n;
            }
          }
        }
        const dataRuns = [...this.dataRuns].sort((a, b) => a.deviceId - b.deviceId || a.firstCluster - b.firstCluster);
        const trailerOffset = this.offset;
        const fields = {
          headerLength: this.headerLength,
          trailerOffset,
          trailerLength: trailerSize(this.extents.length, dataRuns.length, zeroRuns.length),
          extentCount: this.extents.length,
          uuid: this.uuid,
          storedBytes: this.storedBytes,
          dataBytes: this.dataBytes,
          zeroBytes: this.zeroBytes,
          clusterCount: this.clusterCount,
        };
        // The index tag covers every footer field but the trailer digest (docs/FORMAT.md "Index tag").
        const footerBody = encodeFooter({ ...fields, trailerSha256: Buffer.alloc(SHA256_SIZE) }).subarray(0, FOOTER_BODY_SIZE);
        const key = this.key;
        const hTag = this.headerTag;
        const trailer = encodeTrailer(
          { extents: this.extents, dataRuns, zeroRuns },
          key === undefined || hTag === undefined ? undefined : (body) => indexTag(macKey(key, this.uuid), hTag, footerBody, body),
        );
        await this.output.write(trailer);
        const footer = encodeFooter({ ...fields, trailerSha256: sha256(trailer) });
        await this.output.write(footer);
        await this.output.close();
        this.state = 'finished';
        const bytesWritten = trailerOffset + trailer.length + footer.length;
        return {
          uuid: this.uuid,
          bytesWritten,
          extentCount: this.extents.length,
          dataBytes: this.dataBytes,
          zeroBytes: this.zeroBytes,
          storedBytes: this.storedBytes,
          clusterCount: this.clusterCount,
          zeroClusterCount: this.zeroClusterCount,
          metadataBytes: bytesWritten - this.storedBytes,
        };
      } catch (err) {
        this.fail(err);
        await this.abortOutput(err);
        throw this.failure ?? err;
      }
    });
  }

  private async abortOutput(reason: unknown): Promise<void> {
    if (this.outputAborted) return;
    this.outputAborted = true;
    try {
      await this.output.abort(reason);
    } catch {
      // Best effort: the original failure is what the caller needs to see.
    }
  }

  /** Abandons the archive: nothing partial stays visible. Idempotent; never waits for backpressure. */
  async abort(reason: unknown): Promise<void> {
    if (this.state === 'finished') return;
    this.state = 'aborted';
    this.fail(reason instanceof Error ? reason : new ArchiveWriteError(`archive aborted: ${String(reason)}`));
    await this.abortOutput(reason);
  }
}

