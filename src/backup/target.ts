/**
 * Where a backup's archive goes: the one opener of backup targets for the
 * agent (s3 / file: / the control API's stream) and `cowstream backup --qemu`
 * (s3 / file: / stdout). Every target is wrapped in a CountingSink, whose
 * count is the status's `archiveBytes`.
 */
import type { S3Client } from '@aws-sdk/client-s3';
import type { StoreError } from '../errors.js';
import type { ByteSink } from '../format/sink.js';
import { archiveKey } from '../store/config.js';
import { FileByteSink } from '../store/file.js';
import { S3ArchiveSink } from '../store/s3-sink.js';
import { sinkUploadOptions, type ChecksumPolicy, type UploadOptions } from '../store/upload-options.js';

/** An S3 bucket and prefix, with the object options of each archive upload. */
export interface S3TargetStore {
  client: S3Client;
  bucket: string;
  prefix: string;
  upload?: UploadOptions;
  /** Whether parts carry checksums; without it the upload options are not applied. */
  checksums?: ChecksumPolicy;
}

export type ArchiveTargetSpec =
  | { kind: 's3'; store: S3TargetStore }
  /** A file (`-`: stdout), or a function of the archive's UUID (e.g. `<dir>/<uuid>.cwa`). */
  | { kind: 'file'; path: string | ((uuid: string) => string) }
  /** A sink the caller made (the agent's HTTP stream); `description` names it in the status. */
  | { kind: 'sink'; sink: ByteSink; description: string };

/** What the archive is, as far as the target needs to know (S3 object metadata, part size). */
export interface ArchiveTargetContext {
  uuid: string;
  parentUuid: string | null;
  hostId: string;
  deviceNames: string[];
  /** Σ device sizes: grows the S3 part size so 10,000 parts suffice. */
  expectedBytes: number;
}

export interface ArchiveTargetOptions {
  onWarning?: (w: StoreError) => void;
  /** Test seam: wraps the raw sink (e.g. a deliberately slow or failing one). */
  wrapSink?: (sink: ByteSink, target: string) => ByteSink;
}

export interface ArchiveDestination {
  sink: CountingSink;
  /** `s3`, `file:/path`, `-`. */
  description: string;
  /** Where the archive is: s3://bucket/key, the file's path, or `-`. */
  location: string;
  bucket?: string;
  key?: string;
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

/** Opens the ByteSink of a backup target. */
export async function openArchiveTarget(spec: ArchiveTargetSpec, ctx: ArchiveTargetContext, opts: ArchiveTargetOptions = {}): Promise<ArchiveDestination> {
  const t = await openRaw(spec, ctx, opts);
  if (opts.wrapSink) t.sink = new CountingSink(opts.wrapSink(t.sink.inner, t.description));
  return t;
}

async function openRaw(spec: ArchiveTargetSpec, ctx: ArchiveTargetContext, opts: ArchiveTargetOptions): Promise<ArchiveDestination> {
  switch (spec.kind) {
    case 'file': {
      const path = typeof spec.path === 'function' ? spec.path(ctx.uuid) : spec.path;
      const sink = await FileByteSink.create(path);
      return { sink: new CountingSink(sink), description: path === '-' ? '-' : `file:${path}`, location: path };
    }
    case 'sink':
      return { sink: new CountingSink(spec.sink), description: spec.description, location: spec.description };
    case 's3': {
      const { store } = spec;
      const key = archiveKey(store.prefix, ctx.hostId, ctx.uuid);
      const sink = new S3ArchiveSink({
        client: store.client,
        bucket: store.bucket,
        key,
        expectedBytes: ctx.expectedBytes,
        metadata: { uuid: ctx.uuid, parentUuid: ctx.parentUuid, hostId: ctx.hostId, deviceNames: ctx.deviceNames },
        ...(store.checksums ? sinkUploadOptions(store.upload, store.checksums) : {}),
        ...(opts.onWarning ? { onWarning: opts.onWarning } : {}),
      });
      return { sink: new CountingSink(sink), description: 's3', location: `s3://${store.bucket}/${key}`, bucket: store.bucket, key };
    }
  }
}
