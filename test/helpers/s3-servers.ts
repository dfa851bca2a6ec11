/**
 * Real local S3 peers for tests: s3rver (on-disk, via our own embedded-s3
 * module) and fauxqs (in-memory, full multipart create/part/complete/abort).
 * Both bind 127.0.0.1 on an ephemeral port and clean up in close().
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { S3Client } from '@aws-sdk/client-s3';
import type { StoreConfig } from '../../src/store/config.js';
import { createS3Client } from '../../src/store/s3-client.js';
import { startEmbeddedS3, type EmbeddedS3 } from '../../src/store/embedded-s3.js';

export interface TestS3Server {
  kind: 's3rver' | 'fauxqs';
  endpoint: string;
  bucket: string;
  /** What the server really implements (measured, see docs/s3-and-restore.md). */
  supportsAbort: boolean;
  storeConfig(prefix?: string, endpoint?: string): StoreConfig;
  client(opts?: { endpoint?: string; maxAttempts?: number }): S3Client;
  /**
   * Server-side count of incomplete multipart uploads, read from the
   * server's own state (fauxqs) or its upload directories (s3rver) — not via
   * ListMultipartUploads, which neither server implements correctly.
   */
  pendingUploads(): Promise<number>;
  close(): Promise<void>;
  embedded?: EmbeddedS3;
}

const CREDS = { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' };

export async function startS3rver(bucket = 'test-bucket'): Promise<TestS3Server> {
  const dir = mkdtempSync(join(tmpdir(), 'cowstream-s3rver-'));
  const s3 = await startEmbeddedS3({ dir: join(dir, 's3'), bucket });
  const clients: S3Client[] = [];
  return {
    kind: 's3rver',
    endpoint: s3.endpoint,
    bucket,
    supportsAbort: false,
    embedded: s3,
    storeConfig(prefix = '', endpoint = s3.endpoint): StoreConfig {
      return { ...s3.storeConfig(prefix), endpoint };
    },
    client(opts = {}): S3Client {
      const c = createS3Client({ ...s3.storeConfig(''), endpoint: opts.endpoint ?? s3.endpoint }, opts.maxAttempts ? { maxAttempts: opts.maxAttempts } : {});
      clients.push(c);
      return c;
    },
    async pendingUploads(): Promise<number> {
      // s3rver keeps each multipart upload in <dir>/<bucket>/.../uploads/<uploadId>/ until completed.
      const { readdir } = await import('node:fs/promises');
      let n = 0;
      const walk = async (p: string): Promise<void> => {
        for (const e of await readdir(p, { withFileTypes: true }).catch(() => [])) {
          if (!e.isDirectory()) continue;
          const sub = join(p, e.name);
          if (/uploads$/.test(e.name)) n += (await readdir(sub).catch(() => [])).length;
          else await walk(sub);
        }
      };
      await walk(join(dir, 's3'));
      return n;
    },
    async close(): Promise<void> {
      for (const c of clients) c.destroy();
      await s3.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

interface FauxqsStoreShape {
  createBucket(name: string): void;
  multipartUploads: Map<string, unknown>;
}

export async function startFauxqs(bucket = 'test-bucket'): Promise<TestS3Server> {
  // fauxqs' package exports only startFauxqs(), whose S3 store is private; we
  // build the same app around our own S3Store instance so tests can read the
  // server's multipart state directly.
  const appUrl = import.meta.resolve('fauxqs');
  const { buildApp } = (await import(appUrl)) as { buildApp: (o: unknown) => FastifyLike };
  const { S3Store } = (await import(new URL('./s3/s3Store.js', appUrl).href)) as { S3Store: new () => FauxqsStoreShape };
  const s3Store = new S3Store();
  s3Store.createBucket(bucket);
  const app = buildApp({ logger: false, stores: { s3Store } });
  const address = await app.listen({ port: 0, host: '127.0.0.1' });
  const endpoint = address.replace('localhost', '127.0.0.1');
  const clients: S3Client[] = [];
  const cfg = (prefix: string, ep: string): StoreConfig => ({
    bucket,
    prefix,
    endpoint: ep,
    region: 'us-east-1',
    forcePathStyle: true,
    credentials: CREDS,
  });
  return {
    kind: 'fauxqs',
    endpoint,
    bucket,
    supportsAbort: true,
    storeConfig: (prefix = '', ep = endpoint) => cfg(prefix, ep),
    client(opts = {}): S3Client {
      const c = createS3Client(cfg('', opts.endpoint ?? endpoint), opts.maxAttempts ? { maxAttempts: opts.maxAttempts } : {});
      clients.push(c);
      return c;
    },
    async pendingUploads(): Promise<number> {
      return s3Store.multipartUploads.size;
    },
    async close(): Promise<void> {
      for (const c of clients) c.destroy();
      await app.close();
    },
  };
}

interface FastifyLike {
  listen(o: { port: number; host: string }): Promise<string>;
  close(): Promise<void>;
}
