import type { S3Client } from '@aws-sdk/client-s3';
import type { ByteSink } from '../format/sink.js';
import { FileByteSink } from '../store/file.js';
import { archiveKey } from '../store/config.js';
import { S3ArchiveSink } from '../store/s3-sink.js';
import { sinkUploadOptions, type ChecksumPolicy, type UploadOptions } from '../store/upload-options.js';
import type { StoreError } from '../errors.js';
import type { BackupTarget } from './backup-request.js';
import { HttpStreamSink } from './stream-sink.js';

/** The S3 store the agent uses for the `s3` target (configured bucket or the embedded s3rver). */
export interface AgentStore {
  client: S3Client;
  bucket: string;
  prefix: string;
  endpoint?: string;
  embedded: boolean;
  /** Object options of each archive upload, and whether parts carry checksums. */
  upload?: UploadOptions;
  checksums?: ChecksumPolicy;
}

export interface OpenedTarget {
  sink: CountingSink;
  /** `s3`, `file:/path`, `-`. */
  description: string;
  bucket?: string;
  key?: string;
  /** Set for the `-` target: the control API attaches the HTTP reader to it. */
  stream?: HttpStreamSink;
}

/** Counts the archive bytes that went to the target (status `archiveBytes`). */
export class CountingSink implements ByteSink {
  bytes = 0;
  constructor(readonly inner: ByteSink) {}
  async write(chunk: Uint8Array): Promise<void> {
    await this.inner.write(chunk);
    this.bytes += chunk.length;
  }
  close(): Promise<void> {
    return this.inner.close();
  }
  abort(reason: unknown): Promise<void> {
    return this.inner.abort(reason);
  }
}

export interface TargetContext {
  hostId: string;
  uuid: string;
  parentUuid: string | null;
  deviceNames: string[];
  /** Σ device sizes: grows the S3 part size so 10,000 parts suffice. */
  expectedBytes: number;
  store: AgentStore | null;
  onWarning: (w: StoreError) => void;
  /** Test seam (StartAgentOptions.wrapSink). */
  wrapSink?: (sink: ByteSink, target: string) => ByteSink;
}

/** Opens the ByteSink for a backup target. */
export async function openTarget(target: BackupTarget, ctx: TargetContext): Promise<OpenedTarget> {
  const t = await openRawTarget(target, ctx);
  if (ctx.wrapSink) t.sink = new CountingSink(ctx.wrapSink(t.sink.inner, t.description));
  return t;
}

async function openRawTarget(target: BackupTarget, ctx: TargetContext): Promise<OpenedTarget> {
  switch (target.kind) {
    case 'file': {
      const sink = await FileByteSink.create(target.path);
      return { sink: new CountingSink(sink), description: `file:${target.path}` };
    }
    case 'stream': {
      const stream = new HttpStreamSink();
      return { sink: new CountingSink(stream), description: '-', stream };
    }
    case 's3': {
      const store = ctx.store;
      if (!store) throw new Error('no S3 store configured');
      const key = archiveKey(store.prefix, ctx.hostId, ctx.uuid);
      const sink = new S3ArchiveSink({
        client: store.client,
        bucket: store.bucket,
        key,
        expectedBytes: ctx.expectedBytes,
        metadata: { uuid: ctx.uuid, parentUuid: ctx.parentUuid, hostId: ctx.hostId, deviceNames: ctx.deviceNames },
        ...(store.checksums ? sinkUploadOptions(store.upload, store.checksums) : {}),
        onWarning: ctx.onWarning,
      });
      return { sink: new CountingSink(sink), description: 's3', bucket: store.bucket, key };
    }
  }
}
