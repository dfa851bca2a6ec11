/**
 * ByteSink over an S3 multipart upload (@aws-sdk/lib-storage `Upload`).
 *
 * Data path: write(chunk) → bounded PassThrough → Upload's part splitter →
 * `queueSize` concurrent UploadPart calls. No temp files.
 *
 * Memory bound (per sink), documented in docs/s3-and-restore.md:
 *   ≈ (queueSize + 2) × partSize + 2 × highWaterMark
 *   - queueSize parts held by in-flight UploadPart calls (kept for SDK retries),
 *   - one part being assembled by the splitter plus one transient copy
 *     (Buffer.concat when a part is cut),
 *   - the PassThrough's writable + readable buffers (highWaterMark each).
 * plus whatever the producer (archive writer: extents in flight) holds.
 * write() resolves only once the chunk fits under highWaterMark, so a slow
 * endpoint stalls the producer instead of growing memory.
 *
 * Failure: the first error (a part that failed after SDK retries, abort(),
 * a stream error) ends the upload; the multipart upload is aborted so no
 * object and no parts remain. Servers that cannot abort (s3rver: 405) get a
 * warning through `onWarning`, and the ORIGINAL error is still what callers see.
 */
import { PassThrough } from 'node:stream';
import {
  AbortMultipartUploadCommand,
  type ChecksumAlgorithm,
  type ObjectLockMode,
  type PutObjectCommandInput,
  type S3Client,
  type ServerSideEncryption,
  type StorageClass,
} from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import { StoreError, UsageError } from '../errors.js';
import type { ByteSink } from '../format/sink.js';
import { mapS3Error } from './s3-errors.js';
import { timeoutsOf } from './s3-client.js';
import type { ArchiveUploadParams, SseOption } from './upload-params.js';

/** S3 hard limits (https://docs.aws.amazon.com/AmazonS3/latest/userguide/qfacts.html). */
export const S3_MAX_PARTS = 10_000;
export const S3_MIN_PART_SIZE = 5 * 1024 * 1024;
export const S3_MAX_PART_SIZE = 5 * 1024 * 1024 * 1024;
/** User-defined metadata: 2 KB total for keys + values (UTF-8). */
export const S3_USER_METADATA_LIMIT = 2048;

export const DEFAULT_PART_SIZE = 8 * 1024 * 1024;
export const DEFAULT_QUEUE_SIZE = 4;
export const DEFAULT_HIGH_WATER_MARK = 1024 * 1024;

const MiB = 1024 * 1024;

/**
 * Part size for an archive of devices totalling `expectedBytes`: at least
 * `minPartSize` (8 MiB), and large enough that even an incompressible archive
 * (data + per-extent headers + index: we allow 2 % + 64 MiB) fits in 9,000
 * parts — 10 % headroom under the 10,000-part limit. Rounded up to 1 MiB.
 */
export function computePartSize(expectedBytes: number | undefined, minPartSize = DEFAULT_PART_SIZE): number {
  if (minPartSize < S3_MIN_PART_SIZE) throw new UsageError(`part size ${minPartSize} is below the S3 minimum of 5 MiB`);
  if (!expectedBytes || expectedBytes <= 0) return minPartSize;
  const worstCase = expectedBytes * 1.02 + 64 * MiB;
  const needed = Math.ceil(worstCase / (S3_MAX_PARTS * 0.9) / MiB) * MiB;
  const size = Math.max(minPartSize, needed);
  if (size > S3_MAX_PART_SIZE) {
    throw new UsageError(`an archive of ${expectedBytes} bytes cannot fit in ${S3_MAX_PARTS} parts of at most 5 GiB`);
  }
  return size;
}

/** Identity of the archive, stored as S3 user metadata (x-amz-meta-*). */
export interface ArchiveObjectMetadata {
  uuid: string;
  parentUuid?: string | null;
  hostId: string;
  deviceNames: string[];
}

/**
 * Encodes archive metadata as S3 user metadata. Values are percent-encoded
 * (HTTP headers carry ASCII only) and the device list is truncated, with
 * `devices-truncated` set, so the total never exceeds the 2 KB limit.
 */
export function encodeArchiveMetadata(meta: ArchiveObjectMetadata): Record<string, string> {
  const enc = (s: string): string => encodeURIComponent(s);
  const out: Record<string, string> = {
    'cowstream-uuid': enc(meta.uuid),
    'cowstream-host': enc(meta.hostId).slice(0, 256),
    'cowstream-device-count': String(meta.deviceNames.length),
  };
  if (meta.parentUuid) out['cowstream-parent'] = enc(meta.parentUuid);
  const size = (rec: Record<string, string>): number =>
    Object.entries(rec).reduce((n, [k, v]) => n + Buffer.byteLength(k) + Buffer.byteLength(v), 0);
  const budget = S3_USER_METADATA_LIMIT - size(out) - Buffer.byteLength('cowstream-devices') - 64;
  let devices = '';
  let truncated = false;
  for (const name of meta.deviceNames) {
    const next = devices === '' ? enc(name) : `${devices},${enc(name)}`;
    if (Buffer.byteLength(next) > budget) {
      truncated = true;
      break;
    }
    devices = next;
  }
  out['cowstream-devices'] = devices;
  if (truncated) out['cowstream-devices-truncated'] = '1';
  return out;
}

/** Reverse of encodeArchiveMetadata (keys arrive lower-cased from S3). */
export function decodeArchiveMetadata(rec: Record<string, string> | undefined): Partial<ArchiveObjectMetadata> & { devicesTruncated?: boolean } {
  if (!rec) return {};
  const dec = (s: string | undefined): string | undefined => {
    if (s === undefined) return undefined;
    try {
      return decodeURIComponent(s);
    } catch {
      return s;
    }
  };
  const out: Partial<ArchiveObjectMetadata> & { devicesTruncated?: boolean } = {};
  const uuid = dec(rec['cowstream-uuid']);
  if (uuid) out.uuid = uuid;
  const host = dec(rec['cowstream-host']);
  if (host) out.hostId = host;
  out.parentUuid = dec(rec['cowstream-parent']) ?? null;
  const devices = rec['cowstream-devices'];
  out.deviceNames = devices ? devices.split(',').map((d) => dec(d) ?? d) : [];
  if (rec['cowstream-devices-truncated'] === '1') out.devicesTruncated = true;
  return out;
}

export type { SseOption };

export interface S3ArchiveSinkOptions extends ArchiveUploadParams {
  client: S3Client;
  bucket: string;
  key: string;
  /** Devices' total size: grows the part size so 10,000 parts always suffice. */
  expectedBytes?: number;
  /** Minimum part size (default 8 MiB; S3 minimum 5 MiB). */
  partSize?: number;
  /** Concurrent UploadPart calls (default 4). */
  queueSize?: number;
  /** Bytes buffered between write() and the part splitter (default 1 MiB). */
  highWaterMark?: number;
  metadata?: ArchiveObjectMetadata;
  /** Non-fatal problems (e.g. the server could not abort the multipart upload). */
  onWarning?: (warning: StoreError) => void;
  /** Upload progress in bytes acknowledged by the server. */
  onProgress?: (uploadedBytes: number) => void;
}

/** Builds the PutObject/CreateMultipartUpload parameters from sink options (pure). */
export function buildUploadParams(opts: S3ArchiveSinkOptions): PutObjectCommandInput {
  const params: PutObjectCommandInput = {
    Bucket: opts.bucket,
    Key: opts.key,
    ContentType: 'application/vnd.cowstream.archive',
  };
  if (opts.metadata) params.Metadata = encodeArchiveMetadata(opts.metadata);
  if (opts.sse) {
    params.ServerSideEncryption = opts.sse.mode as ServerSideEncryption;
    if (opts.sse.mode === 'aws:kms' && opts.sse.kmsKeyId) params.SSEKMSKeyId = opts.sse.kmsKeyId;
  }
  if (opts.storageClass) params.StorageClass = opts.storageClass as StorageClass;
  if (opts.checksumAlgorithm) params.ChecksumAlgorithm = opts.checksumAlgorithm as ChecksumAlgorithm;
  if (opts.objectLock) {
    params.ObjectLockMode = opts.objectLock.mode as ObjectLockMode;
    params.ObjectLockRetainUntilDate = opts.objectLock.retainUntil;
  }
  return params;
}

export interface S3SinkResult {
  bucket: string;
  key: string;
  etag?: string;
  bytes: number;
  partSize: number;
}

/** Streams an archive into one S3 object; see the module comment for the memory bound. */
export class S3ArchiveSink implements ByteSink {
  readonly bucket: string;
  readonly key: string;
  readonly partSize: number;
  readonly queueSize: number;
  readonly highWaterMark: number;
  /** Documented memory bound of this sink in bytes. */
  readonly memoryBound: number;
  private readonly stream: PassThrough;
  private readonly upload: Upload;
  private readonly client: S3Client;
  private readonly done: Promise<unknown>;
  private readonly onWarning: (w: StoreError) => void;
  private failure: unknown = undefined;
  private failed = false;
  private closing = false;
  private bytes = 0;
  private drainWaiters: { resolve: () => void; reject: (e: unknown) => void }[] = [];
  private result: S3SinkResult | undefined;
  private cleanupPromise: Promise<void> | undefined;

  constructor(opts: S3ArchiveSinkOptions) {
    this.bucket = opts.bucket;
    this.key = opts.key;
    this.client = opts.client;
    this.partSize = computePartSize(opts.expectedBytes, opts.partSize ?? DEFAULT_PART_SIZE);
    this.queueSize = opts.queueSize ?? DEFAULT_QUEUE_SIZE;
    if (!Number.isInteger(this.queueSize) || this.queueSize < 1 || this.queueSize > 64) {
      throw new UsageError(`queueSize must be 1..64, got ${opts.queueSize}`);
    }
    this.highWaterMark = opts.highWaterMark ?? DEFAULT_HIGH_WATER_MARK;
    this.memoryBound = (this.queueSize + 2) * this.partSize + 2 * this.highWaterMark;
    this.onWarning = opts.onWarning ?? ((w) => process.emitWarning(w.message, 'CowstreamStoreWarning'));
    this.stream = new PassThrough({ highWaterMark: this.highWaterMark });
    this.stream.on('drain', () => this.wakeWriters());
    // An error event without a listener would crash the process.
    this.stream.on('error', () => undefined);

    // Wrap send() so the FIRST failed S3 call (after SDK retries) stops the
    // whole upload at once: lib-storage's other workers would otherwise keep
    // consuming the stream until its end.
    const real = opts.client;
    const wrapped = Object.create(real) as S3Client;
    wrapped.send = ((command: Parameters<S3Client['send']>[0], ...rest: unknown[]) =>
      (real.send as (...a: unknown[]) => Promise<unknown>)(command, ...rest).catch((err: unknown) => {
        this.fail(err);
        throw err;
      })) as S3Client['send'];

    const params = { ...buildUploadParams(opts), Body: this.stream };
    // leavePartsOnError: we abort ourselves, so we control the order of errors
    // (lib-storage would replace the original error by the abort's error).
    this.upload = new Upload({
      client: wrapped,
      params,
      partSize: this.partSize,
      queueSize: this.queueSize,
      leavePartsOnError: true,
    });
    if (opts.onProgress) {
      const cb = opts.onProgress;
      this.upload.on('httpUploadProgress', (p) => cb(p.loaded ?? 0));
    }
    this.done = this.upload.done().then(
      (res) => res,
      (err: unknown) => {
        this.fail(err);
        throw err;
      },
    );
    this.done.catch(() => undefined); // observed in close()/abort()
  }

  /** Bytes accepted so far. */
  get bytesWritten(): number {
    return this.bytes;
  }

  /** Multipart upload id once created (undefined for small single-PUT objects). */
  get uploadId(): string | undefined {
    return (this.upload as unknown as { uploadId?: string }).uploadId;
  }

  private fail(err: unknown): void {
    if (this.failed) return;
    this.failed = true;
    this.failure = err;
    // Self-cleaning: the multipart upload is aborted even if the caller never
    // calls abort() after a failed write().
    // Ends the part splitter's for-await with this error, so every worker stops.
    this.stream.destroy(err instanceof Error ? err : new StoreError(String(err)));
    // And cancels the S3 calls in flight: against an endpoint that stopped
    // answering they would otherwise hold done() (and so cleanup) until their
    // timeouts and retries ran out.
    void this.upload.abort().catch(() => undefined);
    // Blocked writers learn of the failure only once cleanup is over, so a
    // rejected write() means "nothing left behind" (where the server allows).
    const waiters = this.drainWaiters;
    this.drainWaiters = [];
    void this.cleanup().then(() => {
      for (const w of waiters) w.reject(this.surface(err, 'upload failed'));
    });
  }

  private wakeWriters(): void {
    const waiters = this.drainWaiters;
    this.drainWaiters = [];
    for (const w of waiters) w.resolve();
  }

  private surface(err: unknown, what: string): Error {
    return mapS3Error(err, what, { bucket: this.bucket, key: this.key });
  }

  async write(chunk: Uint8Array): Promise<void> {
    if (this.failed) {
      await this.cleanup();
      throw this.surface(this.failure, 'upload failed');
    }
    if (this.closing) throw new StoreError(`write after close on s3://${this.bucket}/${this.key}`);
    if (chunk.length === 0) return;
    // No copy: the stream keeps a reference until the part is cut, which the
    // ByteSink contract allows (callers never modify what they wrote).
    const buf = Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    this.bytes += buf.length;
    if (this.stream.write(buf)) return;
    await new Promise<void>((resolve, reject) => this.drainWaiters.push({ resolve, reject }));
  }

  async close(): Promise<void> {
    if (this.failed) {
      await this.cleanup();
      throw this.surface(this.failure, 'upload failed');
    }
    this.closing = true;
    this.stream.end();
    try {
      const res = (await this.done) as { ETag?: string };
      this.result = { bucket: this.bucket, key: this.key, bytes: this.bytes, partSize: this.partSize };
      if (res?.ETag) this.result.etag = res.ETag;
    } catch (err) {
      await this.cleanup();
      throw this.surface(this.failure ?? err, 'upload failed');
    }
  }

  /** Details of the completed object (after close()). */
  get completed(): S3SinkResult | undefined {
    return this.result;
  }

  async abort(reason: unknown): Promise<void> {
    if (this.result) return; // already completed: aborting a finished object is the caller's delete
    this.closing = true;
    this.fail(reason ?? new StoreError('aborted'));
    await this.cleanup();
  }

  /**
   * Waits for lib-storage to stop, then aborts the multipart upload. Never
   * throws: an abort the server refuses becomes a warning.
   */
  private cleanup(): Promise<void> {
    this.cleanupPromise ??= this.doCleanup();
    return this.cleanupPromise;
  }

  private async doCleanup(): Promise<void> {
    await this.done.catch(() => undefined);
    const uploadId = this.uploadId;
    if (uploadId === undefined) return; // nothing created (or a single PUT that never completed)
    // Bounded (store.timeouts.cleanupMs): a cancel or shutdown must not wait on a stalled endpoint.
    const cleanupMs = timeoutsOf(this.client).cleanupMs;
    try {
      await this.client.send(new AbortMultipartUploadCommand({ Bucket: this.bucket, Key: this.key, UploadId: uploadId }), {
        abortSignal: AbortSignal.timeout(cleanupMs),
      });
    } catch (err) {
      this.onWarning(
        new StoreError(
          `could not abort multipart upload ${uploadId} of s3://${this.bucket}/${this.key}; its parts may remain until a lifecycle rule or 'cowstream uploads abort' removes them`,
          { cause: mapS3Error(err, 'AbortMultipartUpload', { bucket: this.bucket, key: this.key }) },
        ),
      );
    }
  }
}
