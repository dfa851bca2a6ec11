/**
 * The embedded S3-compatible server (s3rver 3.7.1) used when no bucket is
 * configured: loopback only, objects persisted under `<stateDir>/s3`, one
 * bucket created on start. Clients use the same S3 code path as for AWS.
 *
 * Limits of s3rver (measured): ListMultipartUploads → 501 NotImplemented,
 * AbortMultipartUpload → 405 MethodNotAllowed. The sink therefore warns
 * when it cannot abort, and `cowstream uploads` says it cannot list.
 */
import { mkdirSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import S3rver from 's3rver';
import { StoreError } from '../errors.js';
import { DEFAULT_EMBEDDED_BUCKET, type StoreConfig } from './config.js';

/** s3rver verifies SigV4 signatures against these fixed credentials. */
export const EMBEDDED_S3_CREDENTIALS = { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' } as const;
export { DEFAULT_EMBEDDED_BUCKET } from './config.js';

/**
 * One S3 notification record in the shape AWS delivers to Lambda
 * (aws-lambda `S3EventRecord`, subset). `s3.object.key` is URL-encoded like
 * AWS does it (space → '+', '/' kept), so the same indexer code decodes it.
 */
export interface EmbeddedS3EventRecord {
  eventVersion: string;
  eventSource: 'aws:s3';
  awsRegion: string;
  eventTime: string;
  /** e.g. ObjectCreated:Put, ObjectCreated:Post (multipart complete), ObjectCreated:Copy, ObjectRemoved:Delete */
  eventName: string;
  s3: {
    s3SchemaVersion: string;
    configurationId: string;
    bucket: { name: string; arn: string; ownerIdentity: { principalId: string } };
    object: { key: string; size?: number; eTag?: string; sequencer: string };
  };
}

export interface EmbeddedS3Event {
  Records: EmbeddedS3EventRecord[];
}

export type EmbeddedS3Listener = (event: EmbeddedS3Event) => void;

export interface EmbeddedS3Options {
  /** Directory holding the objects (usually `<stateDir>/s3`). Created if missing. */
  dir: string;
  /** TCP port; 0 (default) picks a free one. */
  port?: number;
  /** Bind address; loopback by default. */
  host?: string;
  bucket?: string;
}

export interface EmbeddedS3 {
  /** e.g. http://127.0.0.1:43567 */
  readonly endpoint: string;
  readonly port: number;
  readonly bucket: string;
  readonly dir: string;
  readonly credentials: { accessKeyId: string; secretAccessKey: string };
  /** A StoreConfig pointing at this server. */
  storeConfig(prefix?: string): StoreConfig;
  /**
   * Subscribes to object created/removed notifications (after the object is
   * durable on disk). Returns an unsubscribe function. Listener exceptions
   * are caught and reported as process warnings.
   */
  onEvent(listener: EmbeddedS3Listener): () => void;
  close(): Promise<void>;
}

/** `<stateDir>/s3` */
export function embeddedS3Dir(stateDir: string): string {
  return join(stateDir, 's3');
}

/** AWS URL-encodes keys in event notifications: form encoding, '/' kept. */
export function encodeEventKey(key: string): string {
  return encodeURIComponent(key).replace(/%2F/g, '/').replace(/%20/g, '+');
}

interface S3rverEventRaw {
  Records: Array<EmbeddedS3EventRecord>;
}

/** Starts s3rver on loopback; resolves once it accepts connections. */
export async function startEmbeddedS3(opts: EmbeddedS3Options): Promise<EmbeddedS3> {
  const bucket = opts.bucket ?? DEFAULT_EMBEDDED_BUCKET;
  const host = opts.host ?? '127.0.0.1';
  try {
    mkdirSync(opts.dir, { recursive: true });
  } catch (err) {
    throw new StoreError(`cannot create the embedded S3 directory ${opts.dir}`, { cause: err });
  }
  const server = new S3rver({
    address: host,
    port: opts.port ?? 0,
    directory: opts.dir,
    silent: true,
    configureBuckets: [{ name: bucket, configs: [] }],
    // vhost buckets need wildcard DNS; our clients always use path style.
    vhostBuckets: false,
  });
  // s3rver logs through winston unless silent; errors inside koa are emitted here.
  server.on('error', () => undefined);
  const listeners = new Set<EmbeddedS3Listener>();
  server.on('event', (raw: S3rverEventRaw) => {
    const event: EmbeddedS3Event = {
      Records: raw.Records.map((r) => ({
        ...r,
        s3: { ...r.s3, object: { ...r.s3.object, key: encodeEventKey(r.s3.object.key) } },
      })),
    };
    for (const l of listeners) {
      try {
        l(event);
      } catch (err) {
        process.emitWarning(`embedded S3 event listener failed: ${String(err)}`, 'CowstreamStoreWarning');
      }
    }
  });
  let address: AddressInfo;
  try {
    address = (await server.run()) as AddressInfo;
  } catch (err) {
    throw new StoreError(`cannot start the embedded S3 server on ${host}:${opts.port ?? 0}`, { cause: err });
  }
  const endpoint = `http://${host.includes(':') ? `[${host}]` : host}:${address.port}`;
  let closed = false;
  return {
    endpoint,
    port: address.port,
    bucket,
    dir: opts.dir,
    credentials: { ...EMBEDDED_S3_CREDENTIALS },
    storeConfig(prefix = ''): StoreConfig {
      return { bucket, prefix, endpoint, region: 'us-east-1', forcePathStyle: true, credentials: { ...EMBEDDED_S3_CREDENTIALS } };
    },
    onEvent(listener: EmbeddedS3Listener): () => void {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
    async close(): Promise<void> {
      if (closed) return;
      closed = true;
      listeners.clear();
      // Keep-alive sockets from SDK clients would hold close() open.
      const http = (server as unknown as { httpServer?: { closeAllConnections?: () => void } }).httpServer;
      const p = server.close();
      http?.closeAllConnections?.();
      await p;
    },
  };
}
