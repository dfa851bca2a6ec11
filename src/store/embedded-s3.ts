/**
 * The embedded S3-compatible server (s3rver 3.7.1) used when no bucket is
 * configured: loopback only, objects persisted under `<stateDir>/s3`, one
 * bucket created on start. Clients use the same S3 code path as for AWS.
 *
 * Only SigV4 requests signed with the state directory's generated keys
 * (embedded-credentials.ts) reach s3rver: it serves anonymous requests and
 * does not check V4 signatures itself, so our own HTTP server verifies each
 * request (sigv4-verify.ts) before handing it to s3rver's request handler.
 * s3rver never listens on a socket of its own.
 *
 * Limits of s3rver (measured): ListMultipartUploads → 501 NotImplemented,
 * AbortMultipartUpload → 405 MethodNotAllowed. The sink therefore warns
 * when it cannot abort, and `cowstream uploads` says it cannot list.
 */
import { mkdirSync } from 'node:fs';
import { createServer, type IncomingMessage, type RequestListener, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import S3rver from 's3rver';
import { StoreError } from '../errors.js';
import { DEFAULT_EMBEDDED_BUCKET, type StoreConfig } from './config.js';
import { generateEmbeddedCredentials, type EmbeddedS3Credentials } from './embedded-credentials.js';
import { verifySigV4, type SigV4Refusal } from './sigv4-verify.js';

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
  /**
   * The only keys accepted (usually `loadOrCreateEmbeddedCredentials(stateDir).s3`).
   * Absent: fresh random keys for this run only (tests), see `credentials`.
   */
  credentials?: EmbeddedS3Credentials;
}

export interface EmbeddedS3 {
  /** e.g. http://127.0.0.1:43567 */
  readonly endpoint: string;
  readonly port: number;
  readonly bucket: string;
  readonly dir: string;
  /** The keys requests must be signed with. */
  readonly credentials: EmbeddedS3Credentials;
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
  // s3rver never listens itself (listenVerified does), so no address/port here.
  const server = new S3rver({
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
  const credentials = opts.credentials ?? generateEmbeddedCredentials().s3;
  registerWithS3rver(credentials);
  let http: Server;
  try {
    await server.configureBuckets();
    http = await listenVerified(server.callback(), credentials, host, opts.port ?? 0);
  } catch (err) {
    throw new StoreError(`cannot start the embedded S3 server on ${host}:${opts.port ?? 0}`, { cause: err });
  }
  const address = http.address() as AddressInfo;
  const endpoint = `http://${host.includes(':') ? `[${host}]` : host}:${address.port}`;
  let closed = false;
  return {
    endpoint,
    port: address.port,
    bucket,
    dir: opts.dir,
    credentials: { ...credentials },
    storeConfig(prefix = ''): StoreConfig {
      // s3rver neither stores nor checks additional checksums: computing them would only cost CPU.
      return { bucket, prefix, endpoint, region: 'us-east-1', forcePathStyle: true, credentials: { ...credentials }, requestChecksumCalculation: 'WHEN_REQUIRED', responseChecksumValidation: 'WHEN_REQUIRED' };
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
      const p = new Promise<void>((resolve) => http.close(() => resolve()));
      http.closeAllConnections();
      await p;
      server.logger?.close();
    },
  };
}

interface S3rverAccount {
  createKeyPair(accessKeyId: string, secretAccessKey: string): void;
  revokeAccessKey(accessKeyId: string): void;
}

/**
 * s3rver looks the access key id of every signed request up in its own
 * (process-wide) account registry, which holds only its built-in
 * S3RVER/S3RVER; requests that passed our verification must find their key
 * there. The built-in key is removed: nothing may use it.
 */
function registerWithS3rver(keys: EmbeddedS3Credentials): void {
  const require = createRequire(import.meta.url);
  const { DUMMY_ACCOUNT } = require('s3rver/lib/models/account.js') as { DUMMY_ACCOUNT: S3rverAccount };
  DUMMY_ACCOUNT.revokeAccessKey('S3RVER');
  DUMMY_ACCOUNT.createKeyPair(keys.accessKeyId, keys.secretAccessKey);
}

/** Answers a refused request with an S3 XML error and closes the connection (its body is not read). */
function sendRefusal(res: ServerResponse, r: SigV4Refusal): void {
  const xml = (t: string): string => t.replace(/[<>&'"]/g, (c) => `&#${c.charCodeAt(0)};`);
  res.writeHead(r.status, { 'content-type': 'application/xml', connection: 'close' });
  res.end(`<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>${r.code}</Code><Message>${xml(r.message)}</Message></Error>`);
}

/** Our HTTP server: each request is verified, then handed to s3rver's Koa handler. */
async function listenVerified(handler: RequestListener, keys: EmbeddedS3Credentials, host: string, port: number): Promise<Server> {
  const http = createServer((req: IncomingMessage, res: ServerResponse) => {
    verifySigV4(req, keys).then(
      (refusal) => (refusal === null ? handler(req, res) : sendRefusal(res, refusal)),
      () => sendRefusal(res, { status: 403, code: 'AccessDenied', message: 'request could not be verified' }),
    );
  });
  await new Promise<void>((resolve, reject) => {
    http.once('error', reject);
    http.listen(port, host, () => {
      http.off('error', reject);
      resolve();
    });
  });
  return http;
}
