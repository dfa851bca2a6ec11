/**
 * The embedded catalogue: everything the AWS deployment runs, on one
 * machine. dynalite (LevelDB under <stateDir>/catalog-db) stands in for
 * DynamoDB, node:http + the payload-2.0 adapter for API Gateway, and the
 * embedded S3 server's created/removed notifications — already in the
 * Lambda S3 event shape — feed the same Indexer the Lambda runs. Every API
 * request must bear the catalogue token (bearer-auth.ts), as every AWS API
 * request must be IAM-signed.
 */
import { randomBytes } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { ListObjectsV2Command, S3Client } from '@aws-sdk/client-s3';
import { CatalogError, describeError } from '../errors.js';
import { loadConsoleAssets, withConsole, type ConsoleAssets } from '../console/assets.js';
import { createApiHandler } from './api.js';
import { requireBearerToken } from './bearer-auth.js';
import { startDynalite, type RunningDynalite } from './dynalite.js';
import { httpListener } from './http-adapter.js';
import { Indexer, objectIdForKey, type IndexResult, type S3NotificationEvent } from './indexer.js';
import { archivesPrefix, classifyArchiveKey, normalizePrefix } from '../store/config.js';
import { createLogger, nullLogger, type Logger } from './log.js';
import { CatalogRepository } from './repository.js';
import { createPlanBuilder } from './restore-plan.js';
import { createRetentionRunner, type RetentionRunner } from './embedded-retention.js';
import { parseRetentionConfig, type RetentionConfig } from './retention.js';
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
  /** The store prefix archives live under (the agent's embedded store uses none). */
  prefix?: string;
  /** Index archives already in the bucket that the table does not know (missed while down). Default true. */
  scanOnStart?: boolean;
  logger?: Logger | 'quiet';
  /** Lease of a claimed restore job, renewed by each progress report (default 5 min). */
  restoreLeaseMs?: number;
  /** Called after each indexed record (tests, demo). */
  onIndexed?: (r: IndexResult) => void;
  /**
   * The bearer token every API request must carry (usually
   * `loadOrCreateEmbeddedCredentials(stateDir).catalogToken`). Absent: a
   * random token for this run only (tests), see `token`.
   */
  token?: string;
  /** The web console served at `/` (default: the package's dist/web build); false = API only. */
  console?: ConsoleAssets | false;
  /**
   * Retention policy (the prune Lambda's RETENTION schema) applied to a host's
   * archives after each of its archives is indexed; absent = keep everything.
   */
  retention?: RetentionConfig;
}

export interface EmbeddedCatalog {
  /** e.g. http://127.0.0.1:41234 */
  readonly url: string;
  readonly port: number;
  /** The bearer token the API requires. */
  readonly token: string;
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
  // Validated before anything starts: a bad policy must stop start-up, not fail every run later.
  const retention = opts.retention !== undefined ? parseRetentionConfig(opts.retention) : undefined;
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

    const prefix = normalizePrefix(opts.prefix);
    const indexer = new Indexer({ repo, s3, logger: logger.child({ component: 'indexer' }), endpoint: opts.s3.endpoint, prefix });
    const retentionRunner: RetentionRunner | null = retention
      ? createRetentionRunner({ repo, s3, config: retention, logger: logger.child({ component: 'retention' }) })
      : null;
    // Events are indexed one batch at a time, in arrival order, like one Lambda shard.
    let queue: Promise<void> = Promise.resolve();
    const enqueue = (event: S3NotificationEvent): void => {
      queue = queue.then(async () => {
        try {
          for (const r of await indexer.handleEvent(event)) {
            opts.onIndexed?.(r);
            // created/replaced = an INDEXED record (a rejected one is reported as 'rejected').
            if (retentionRunner && (r.action === 'created' || r.action === 'replaced')) {
              const where = classifyArchiveKey(r.key, prefix);
              if (where.kind === 'archive') retentionRunner.request(where.hostId);
            }
          }
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
      await scanBucket(s3, opts.s3.bucket, prefix, repo, enqueue);
    }

    const api = createApiHandler({
      repo,
      s3,
      bucket: opts.s3.bucket,
      buildPlan: createPlanBuilder(repo, s3),
      logger: logger.child({ component: 'api' }),
      ...(opts.restoreLeaseMs !== undefined ? { restoreLeaseMs: opts.restoreLeaseMs } : {}),
    });
    const token = opts.token ?? randomBytes(32).toString('base64url');
    // The page's static files hold no data and are served without the token; every API call needs it.
    const apiListener = requireBearerToken(token, httpListener(api));
    const consoleAssets = opts.console === false ? null : (opts.console ?? loadConsoleAssets());
    const server: Server = createServer(consoleAssets ? withConsole(consoleAssets, apiListener) : apiListener);
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
      token,
      repo,
      s3Client: s3,
      dynamoEndpoint: dyn.endpoint,
      idle: async () => {
        // Retention deletes objects, whose notifications are indexed in turn: wait until both settle.
        let seen: Promise<void>;
        do {
          do {
            seen = queue;
            await seen;
          } while (seen !== queue);
          await retentionRunner?.idle();
        } while (seen !== queue);
      },
      close: async () => {
        if (closed) return;
        closed = true;
        // Stop intake, let in-flight indexing finish, then tear down.
        off();
        await queue.catch(() => undefined);
        await retentionRunner?.idle();
        await cleanup();
      },
    };
  } catch (err) {
    await cleanup();
    throw err;
  }
}

/** Feeds objects under archives/ that the table does not know into the indexer as synthetic created events. */
async function scanBucket(s3: S3Client, bucket: string, prefix: string, repo: CatalogRepository, enqueue: (e: S3NotificationEvent) => void): Promise<void> {
  let token: string | undefined;
  do {
    let page;
    try {
      page = await s3.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: archivesPrefix(prefix), ContinuationToken: token }));
    } catch (err) {
      throw new CatalogError(`cannot list bucket ${bucket} for the start-up scan`, { cause: err });
    }
    for (const o of page.Contents ?? []) {
      if (!o.Key) continue;
      const where = classifyArchiveKey(o.Key, prefix);
      if (where.kind === 'outside') continue;
      const ids = where.kind === 'archive' ? [where.uuid, objectIdForKey(bucket, o.Key)] : [objectIdForKey(bucket, o.Key)];
      let known = false;
      for (const id of ids) if ((await repo.getArchive(id).catch(() => null))?.key === o.Key) known = true;
      if (known) continue;
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
