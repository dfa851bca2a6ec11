/**
 * Contracts between the stages of the data path.
 *
 *   device → cbw ──ClusterSink──▶ archive writer ──ByteSink──▶ store (S3, file, stdout)
 *
 * Both sinks apply backpressure by returning a promise that resolves only
 * when the data has been accepted into a bounded buffer.
 */

export type { ClusterSink } from '../cbw/cluster.js';

/** An append-only byte stream: an S3 multipart upload, a file, stdout. */
export interface ByteSink {
  /**
   * Resolves once the chunk is accepted (bounded buffering = backpressure).
   * The sink may keep a reference to `chunk` until the stream completes (an
   * S3 part is assembled from several writes), so the caller must not modify
   * it afterwards. The archive writer never reuses what it writes, which
   * spares a copy of every archive byte.
   */
  write(chunk: Uint8Array): Promise<void>;
  /** Completes the stream; only now may the result become visible. */
  close(): Promise<void>;
  /** Abandons the stream; nothing partial may remain visible. */
  abort(reason: unknown): Promise<void>;
}

/** Random access to a finished archive: a local file or S3 ranged GETs. */
export interface RangeSource {
  /** Total size in bytes. */
  readonly size: number;
  /** A human-readable name for errors (path or s3 URI). */
  readonly name: string;
  /**
   * `length` bytes at `offset`. With `into` (at least `length` bytes) the
   * bytes land in it and the result is a view of it, so hot loops (restore)
   * can reuse their range buffers instead of allocating one per read.
   */
  read(offset: number, length: number, into?: Buffer): Promise<Buffer>;
  close(): Promise<void>;
}
