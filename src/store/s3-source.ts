/**
 * RangeSource over one S3 object: HeadObject once for the size, then ranged
 * GetObject calls. Request-level retries (5xx, throttling, resets before the
 * response) come from the SDK; a body that breaks mid-transfer is retried here
 * because the SDK does not retry once it has handed the stream over.
 * Every read pins the ETag (If-Match) so an object replaced mid-restore is an
 * error rather than a silent mix of two archives.
 */
import { GetObjectCommand, HeadBucketCommand, HeadObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { StoreError } from '../errors.js';
import type { RangeSource } from '../format/sink.js';
import { ObjectChangedError, StoreNotFoundError } from './errors.js';
import { httpStatusOf, mapS3Error } from './s3-errors.js';

export interface S3RangeSourceOptions {
  /** Extra attempts for bodies that break mid-transfer (default 3). */
  bodyRetries?: number;
  /** Endpoint for error messages. */
  endpoint?: string;
}

export class S3RangeSource implements RangeSource {
  readonly name: string;
  private closed = false;

  private constructor(
    private readonly client: S3Client,
    readonly bucket: string,
    readonly key: string,
    readonly size: number,
    readonly etag: string | undefined,
    readonly metadata: Record<string, string>,
    private readonly opts: S3RangeSourceOptions,
  ) {
    this.name = `s3://${bucket}/${key}`;
  }

  /** HEADs the object; NotFound names whether the bucket or the key is missing. */
  static async open(client: S3Client, bucket: string, key: string, opts: S3RangeSourceOptions = {}): Promise<S3RangeSource> {
    const where = { bucket, key, ...(opts.endpoint ? { endpoint: opts.endpoint } : {}) };
    try {
      const head = await client.send(new HeadObjectCommand({ Bucket: bucket, Key: key }));
      const size = head.ContentLength;
      if (size === undefined || !Number.isSafeInteger(size) || size < 0) {
        throw new StoreError(`HeadObject s3://${bucket}/${key} returned no usable Content-Length`);
      }
      return new S3RangeSource(client, bucket, key, size, head.ETag, head.Metadata ?? {}, opts);
    } catch (err) {
      if (httpStatusOf(err) === 404) {
        // HEAD has no body, so a missing bucket and a missing key look alike: ask.
        try {
          await client.send(new HeadBucketCommand({ Bucket: bucket }));
        } catch (bucketErr) {
          if (httpStatusOf(bucketErr) === 404) {
            throw new StoreNotFoundError(`bucket "${bucket}" does not exist${opts.endpoint ? ` at ${opts.endpoint}` : ''}`, { cause: err });
          }
        }
        throw new StoreNotFoundError(`archive object s3://${bucket}/${key} not found`, { cause: err });
      }
      throw mapS3Error(err, 'HeadObject', where);
    }
  }

  /**
   * A source over an object whose size and ETag a LIST already gave: no HEAD.
   * The ETag still pins every read, so an object replaced since the LIST is
   * an error, not a mix.
   */
  static forListedObject(client: S3Client, bucket: string, key: string, size: number, etag: string | undefined, opts: S3RangeSourceOptions = {}): S3RangeSource {
    if (!Number.isSafeInteger(size) || size < 0) throw new StoreError(`s3://${bucket}/${key}: listed size ${size} is not usable`);
    return new S3RangeSource(client, bucket, key, size, etag, {}, opts);
  }

  async read(offset: number, length: number, into?: Buffer): Promise<Buffer> {
    if (this.closed) throw new StoreError(`${this.name} is closed`);
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) {
      throw new StoreError(`invalid range offset=${offset} length=${length} in ${this.name}`);
    }
    if (offset + length > this.size) {
      throw new StoreError(`range [${offset}, ${offset + length}) lies beyond the end of ${this.name} (${this.size} bytes)`);
    }
    if (length === 0) return Buffer.alloc(0);
    const attempts = 1 + (this.opts.bodyRetries ?? 3);
    // s3rver 3.7.1 reads `bytes=0-0` as "from 0 to the end" (end 0 is falsy):
    // ask for two bytes instead and slice.
    const end = offset + length - 1;
    const requestEnd = end === 0 && this.size > 1 ? 1 : end;
    let lastErr: unknown;
    for (let attempt = 0; attempt < attempts; attempt++) {
      let res;
      try {
        res = await this.client.send(
          new GetObjectCommand({
            Bucket: this.bucket,
            Key: this.key,
            Range: `bytes=${offset}-${requestEnd}`,
            ...(this.etag ? { IfMatch: this.etag } : {}),
          }),
        );
      } catch (err) {
        if (httpStatusOf(err) === 412) {
          throw new ObjectChangedError(`${this.name} changed while being read (ETag no longer ${this.etag})`, { cause: err });
        }
        throw mapS3Error(err, 'GetObject', { bucket: this.bucket, key: this.key });
      }
      try {
        // Stream the body straight into one buffer of the size we asked for
        // (our number, not the server's): one copy per byte and no list of
        // chunks to concatenate, which in a restore is most of the garbage.
        const want = requestEnd - offset + 1;
        const buf = into !== undefined && into.length >= want ? into.subarray(0, want) : Buffer.allocUnsafe(want);
        let got = 0;
        for await (const chunk of res.Body as AsyncIterable<Uint8Array>) {
          if (got + chunk.length > want) {
            // A server that ignores Range returns the whole object: detect, never trust.
            (res.Body as { destroy?: () => void }).destroy?.();
            throw new StoreError(`ranged GET of ${this.name} returned more than the ${want} bytes asked for`);
          }
          buf.set(chunk, got);
          got += chunk.length;
        }
        if (got !== want) throw new StoreError(`ranged GET of ${this.name} returned ${got} bytes, expected ${want}`);
        return want === length ? buf : buf.subarray(0, length);
      } catch (err) {
        lastErr = err;
        if (err instanceof StoreError) throw err;
        // Body stream broke (connection reset mid-transfer): retry this range.
        await new Promise((r) => setTimeout(r, 50 * 2 ** attempt));
      }
    }
    throw new StoreError(`reading ${length} bytes at ${offset} of ${this.name} failed after ${attempts} attempts`, { cause: lastErr });
  }

  async close(): Promise<void> {
    this.closed = true;
  }
}
