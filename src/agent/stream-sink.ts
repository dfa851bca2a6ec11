import type { ServerResponse } from 'node:http';
import { ConflictError, StoreError } from '../errors.js';
import type { ByteSink } from '../format/sink.js';

/**
 * The `-` target over the control API. The agent cannot write to the CLI's
 * stdout, so the archive bytes flow through `GET /backups/current/stream`:
 * the CLI starts the backup, opens the stream and copies it to its stdout.
 *
 * Backpressure: write() resolves only once the HTTP response accepted the
 * chunk (`drain`), so a slow reader slows the backup like a slow S3 upload.
 * Until a reader attaches, write() waits (at most `attachTimeoutMs`).
 * abort() destroys the response, so the reader sees a truncated transfer
 * and the CLI reports the failure from the backup status.
 */
export class HttpStreamSink implements ByteSink {
  private res: ServerResponse | null = null;
  private attached: Promise<ServerResponse>;
  private resolveAttached!: (r: ServerResponse) => void;
  private rejectAttached!: (e: unknown) => void;
  private readonly timer: NodeJS.Timeout;
  private failed: unknown = null;
  private closed = false;
  bytes = 0;

  constructor(attachTimeoutMs = 60_000) {
    this.attached = new Promise((resolve, reject) => {
      this.resolveAttached = resolve;
      this.rejectAttached = reject;
    });
    this.attached.catch(() => undefined);
    this.timer = setTimeout(() => this.fail(new StoreError(`no client fetched the archive stream (GET /backups/current/stream) within ${attachTimeoutMs} ms`)), attachTimeoutMs);
    this.timer.unref();
  }

  /** Hands the HTTP response over as the archive's consumer (once). */
  attach(res: ServerResponse): void {
    if (this.res) throw new ConflictError('the archive stream already has a reader');
    if (this.failed) throw new ConflictError(`the archive stream is no longer available: ${String((this.failed as Error).message ?? this.failed)}`);
    clearTimeout(this.timer);
    this.res = res;
    res.writeHead(200, { 'content-type': 'application/octet-stream' });
    res.on('close', () => {
      if (!res.writableFinished) this.fail(new StoreError('the archive stream reader disconnected'));
    });
    this.resolveAttached(res);
  }

  private fail(err: unknown): void {
    if (this.failed) return;
    this.failed = err;
    this.rejectAttached(err);
  }

  async write(chunk: Uint8Array): Promise<void> {
    // A response that has ended accepts no more bytes and never drains again.
    if (this.closed) throw new StoreError('write to the archive stream after close');
    const res = await this.attached;
    if (this.failed) throw this.failed;
    this.bytes += chunk.length;
    if (res.write(chunk)) return;
    await new Promise<void>((resolve, reject) => {
      const done = (): void => {
        res.off('drain', done);
        res.off('close', done);
        if (this.failed) reject(this.failed);
        else resolve();
      };
      res.on('drain', done);
      res.on('close', done);
    });
  }

  async close(): Promise<void> {
    if (this.closed) throw new StoreError('the archive stream is already closed');
    this.closed = true;
    const res = await this.attached;
    if (this.failed) throw this.failed;
    await new Promise<void>((resolve, reject) => {
      res.end(() => (this.failed ? reject(this.failed) : resolve()));
    });
  }

  async abort(reason: unknown): Promise<void> {
    clearTimeout(this.timer);
    this.fail(reason ?? new StoreError('aborted'));
    this.res?.destroy();
  }
}
