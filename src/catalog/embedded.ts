/**
 * The embedded catalogue: everything the AWS deployment runs, on one
 * machine. dynalite (LevelDB under <stateDir>/catalog-db) stands in for
 * DynamoDB, node:http + the payload-2.0 adapter for API Gateway, and the
 * embedded S3 server's created/removed notifications — already in the
 * Lambda S3 event shape — feed the same Indexer the Lambda runs.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { ListObjectsV2Command, S3Client } from '@aws-sdk/client-s3';
import { CatalogError, describeError } from '../errors.js';
import { createApiHandler } from './api.js';
import { startDynalite, type RunningDynalite } from './dynalite.js';
import { httpListener } from './http-adapter.js';
import { Indexer, type IndexResult, type S3NotificationEvent } from './indexer.js';
import { createLogger, nullLogger, type Logger } from './log.js';
import { CatalogRepository } from './repository.js';
import { createPlanBuilder } from './restore-plan.js';
import { createDocumentClient, ensureCatalogTable } from './table.js';
import { s3RequestHandler } from '../store/config.js';

export const EMBEDDED_TABLE_NAME = 'cowstream-catalog';

/** What the embedded catalogue needs of the S3 server (EmbeddedS3 from src/store/embedded-s3.ts fits). */
export interface EmbeddedCatalogS3 {
  endpoint: string;
  bucket: string;
  region?: string;
  credentials: { accessKeyId: string; secretAccessKey: string };
  /** Object created/removed notifications; absent → only the start-up scan indexes. */
  onEvent?(listener: (event: S3NotificationEvent) => void): () => void;
}

export interface EmbeddedCatalogOptions {
  stateDir: string;
  /** HTTP port, 0 (default) = ephemeral. */
  port?: number;
  host?: string;
  s3: EmbeddedCatalogS3;
  /** Index archives already in the bucket that the table does not know (missed while down). Default true. */
  scanOnStart?: boolean;
  logger?: Logger | 'quiet';
  /** Called after each indexed record (tests, demo). */
  onIndexed?: (r: IndexResult) => void;
}

export interface EmbeddedCatalog {
  /** e.g. http://127.0.0.1:41234 */
  readonly url: string;
  readonly port: number;
  readonly repo: CatalogRepository;
  readonly s3Client: S3Client;
  readonly dynamoEndpoint: string;
  /** Resolves once every notification received so far has been indexed. */
  idle(): Promise<void>;
  close(): Promise<void>;
}

export function catalogDbDir(stateDir: string): string {
  return join(stateDir, 'catalog-db');
}

export async function startEmbeddedCatalog(opts: EmbeddedCatalogOptions): Promise<EmbeddedCatalog> {
  const logger = opts.logger === 'quiet' ? nullLogger : (opts.logger ?? createLogger('cowstream-catalog'));
  const cleanups: Array<() => Promise<void> | void> = [];
  const cleanup = async (): Promise<void> => {
    for (const c of cleanups.reverse()) await Promise.resolve(c()).catch(() => undefined);
    cleanups.length = 0;
  };
  try {
    const dyn: RunningDynalite = await startDynalite({ path: catalogDbDir(opts.stateDir) });
    cleanups.push(() => dyn.close());
    const region = opts.s3.region ?? 'us-east-1';
    // dynalite accepts any credentials; reuse the S3 ones so no AWS chain lookup happens.
    const { client, doc } = createDocumentClient({ endpoint: dyn.endpoint, region, credentials: opts.s3.credentials });
    cleanups.push(() => client.destroy());
    await ensureCatalogTable(client, EMBEDDED_TABLE_NAME);
    const repo = new CatalogRepository(doc, EMBEDDED_TABLE_NAME);
    const s3 = new S3Client({ endpoint: opts.s3.endpoint, region, forcePathStyle: true, credentials: opts.s3.credentials, requestHandler: s3RequestHandler(undefined) });
    cleanups.push(() => s3.destroy());

    const indexer = new Indexer({ repo, s3, logger: logger.child({ component: 'indexer' }), endpoint: opts.s3.endpoint });
    // Events are indexed one batch at a time, in arrival order, like one Lambda shard.
    let queue: Promise<void> = Promise.resolve();
    const enqueue = (event: S3NotificationEvent): void => {
      queue = queue.then(async () => {
        try {
          for (const r of await indexer.handleEvent(event)) opts.onIndexed?.(r);
        } catch (err) {
          logger.error('embedded indexing failed', { error: describeError(err) });
        }
      });
    };
    let off: () => void = () => undefined;
    if (opts.s3.onEvent) {
      off = opts.s3.onEvent(enqueue);
      cleanups.push(() => off());
    }
    if (opts.scanOnStart ?? true) {
      await scanBucket(s3, opts.s3.bucket, repo, enqueue);
    }

    const api = createApiHandler({ repo, s3, bucket: opts.s3.bucket, buildPlan: createPlanBuilder(repo, s3), logger: logger.child({ component: 'api' }) });
    const server: Server = createServer(httpListener(api));
    const host = opts.host ?? '127.0.0.1';
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err) => reject(new CatalogError(`catalogue cannot listen on ${host}:${opts.port ?? 0}`, { cause: err })));
      server.listen(opts.port ?? 0, host, () => resolve());
    });
    cleanups.push(
      () =>
        new Promise<void>((resolve) => {
          server.closeAllConnections();
          server.close(() => resolve());
        }),
    );
    const port = (server.address() as AddressInfo).port;
    let closed = false;
    return {
      url: `http://${host}:${port}`,
      port,
      repo,
      s3Client: s3,
      dynamoEndpoint: dyn.endpoint,
      idle: async () => {
        let seen: Promise<void>;
        do {
          seen = queue;
          await seen;
        } while (seen !== queue);
      },
      close: async () => {
        if (closed) return;
        closed = true;
        // Stop intake, let in-flight indexing finish, then tear down.
        off();
        await queue.catch(() => undefined);
        await cleanup();
      },
    };
  } catch (err) {
    await cleanup();
    throw err;
  }
}

/** Feeds archive objects the table does not know into the indexer as synthetic created events. */
async function scanBucket(s3: S3Client, bucket: string, repo: CatalogRepository, enqueue: (e: S3NotificationEvent) => void): Promise<void> {
  let token: string | undefined;
  do {
    let page;
    try {
      page = await s3.send(new ListObjectsV2Command({ Bucket: bucket, ContinuationToken: token }));
    } catch (err) {
      throw new CatalogError(`cannot list bucket ${bucket} for the start-up scan`, { cause: err });
    }
    for (const o of page.Contents ?? []) {
      if (!o.Key || !/(^|\/)archives\/[^/]+\/[^/]+\.cwa$/.test(o.Key)) continue;
      const m = /([^/]+)\.cwa$/.exec(o.Key);
      const known = m ? await repo.getArchive(m[1]!.toLowerCase()).catch(() => null) : null;
      if (known && known.key === o.Key) continue;
      enqueue({
        Records: [
          {
            eventName: 'ObjectCreated:Scan',
            s3: { bucket: { name: bucket }, object: { key: encodeURIComponent(o.Key).replace(/%2F/g, '/').replace(/%20/g, '+'), size: o.Size } },
          },
        ],
      });
    }
    token = page.IsTruncated ? page.NextContinuationToken : undefined;
  } while (token);
}
