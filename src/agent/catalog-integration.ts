import { ConfigError, describeError } from '../errors.js';
import { readKeyFile } from '../codec/crypto.js';
import { startEmbeddedCatalog } from '../catalog/embedded.js';
import type { Logger as CatalogLogger } from '../catalog/log.js';
import type { EmbeddedS3 } from '../store/embedded-s3.js';
import { loadOrCreateEmbeddedCredentials, remoteCatalogToken } from '../store/embedded-credentials.js';
import type { AgentConfig } from './config.js';
import type { Logger } from './log.js';
import { RestorePoller, type RestorePollerOptions } from './restore-poller.js';
import type { AgentStore } from './targets.js';
import type { ArchiveExports } from './archive-exports.js';

export interface CatalogIntegration {
  url: string;
  poller: RestorePoller;
  stop(): Promise<void>;
}

/** Adapts the agent's JSON-lines logger to the catalogue's logger shape (with child()). */
function catalogLogger(log: Logger, keys: Record<string, unknown> = {}): CatalogLogger {
  return {
    debug: (m, e) => log.debug(m, { ...keys, ...e }),
    info: (m, e) => log.info(m, { ...keys, ...e }),
    warn: (m, e) => log.warn(m, { ...keys, ...e }),
    error: (m, e) => log.error(m, { ...keys, ...e }),
    child: (k) => catalogLogger(log, { ...keys, ...k }),
  };
}

/**
 * The agent's side of the catalogue. With `catalog: { embedded: true }` it
 * runs the embedded catalogue (dynalite under <stateDir>/catalog-db, the API
 * handler on loopback HTTP, the indexer fed by the embedded S3's events).
 * With any catalogue it runs the restore poller (src/agent/restore-poller.ts),
 * which claims this host's PENDING restore jobs and executes them — only into
 * `restore.allowedDirs`, never onto an exported disk.
 */
export async function startCatalogIntegration(opts: {
  config: AgentConfig;
  store: AgentStore | null;
  embeddedS3: EmbeddedS3 | null;
  log: Logger;
  exportedPaths: string[];
  /** Called once each restore job the poller claimed has ended (the agent's metrics and notifications). */
  onRestoreEnd?: RestorePollerOptions['onJobEnd'];
  /** Serves the catalogue's export jobs for this host. */
  archiveExports?: ArchiveExports;
}): Promise<CatalogIntegration> {
  const { config, log } = opts;
  const cat = config.catalog!;
  // Read first, before anything is started, so a bad key file stops the agent
  // with a clear error instead of failing every encrypted restore job later.
  let key: Buffer | undefined;
  if (config.restore.keyFile !== undefined) {
    try {
      key = await readKeyFile(config.restore.keyFile);
    } catch (err) {
      throw new ConfigError(`restore.keyFile: ${describeError(err)}`, { cause: err });
    }
  }

  const stops: Array<() => Promise<void>> = [];
  const stopAll = async (): Promise<void> => {
    for (const s of stops.splice(0).reverse()) await s().catch((err: unknown) => log.warn('catalogue stop failed', { error: describeError(err) }));
  };
  try {
    let url: string;
    let token: string | undefined;
    if ('url' in cat) {
      url = cat.url;
      // A remote `cowstream catalog serve` needs its token; an AWS (execute-api) URL is IAM-signed instead.
      try {
        token = await remoteCatalogToken(cat);
      } catch (err) {
        throw new ConfigError(`catalog.tokenFile: ${describeError(err)}`, { cause: err });
      }
    } else {
      if (!opts.embeddedS3) {
        throw new ConfigError('catalog.embedded: the embedded catalogue indexes the embedded S3 store; remove `store` or set `catalog.url`');
      }
      const s3 = opts.embeddedS3;
      token = (await loadOrCreateEmbeddedCredentials(config.stateDir)).catalogToken;
      const catalog = await startEmbeddedCatalog({
        token,
        stateDir: config.stateDir,
        ...(cat.port !== undefined ? { port: cat.port } : {}),
        ...(cat.retention !== undefined ? { retention: cat.retention } : {}),
        s3: { endpoint: s3.endpoint, bucket: s3.bucket, region: 'us-east-1', credentials: s3.credentials, onEvent: (l) => s3.onEvent(l) },
        logger: catalogLogger(log, { component: 'catalog' }),
      });
      stops.push(() => catalog.close());
      url = catalog.url;
      log.info('embedded catalogue started', { url });
    }

    const poller = new RestorePoller({
      catalogUrl: url,
      ...(token !== undefined ? { catalogToken: token } : {}),
      hostId: config.hostId,
      allowedDirs: config.restore.allowedDirs,
      forbiddenPaths: opts.exportedPaths,
      store: opts.store ? { client: opts.store.client, bucket: opts.store.bucket, prefix: opts.store.prefix } : null,
      ...(config.restore.pollIntervalMs !== undefined ? { pollIntervalMs: config.restore.pollIntervalMs } : {}),
      ...(key ? { key } : {}),
      ...(opts.archiveExports ? { archiveExports: opts.archiveExports } : {}),
      log,
      ...(opts.onRestoreEnd ? { onJobEnd: opts.onRestoreEnd } : {}),
    });
    poller.start();
    stops.push(() => poller.stop());
    log.info('restore poller started', { catalog: url, allowedDirs: config.restore.allowedDirs });
    return { url, poller, stop: stopAll };
  } catch (err) {
    // Release what was started (e.g. the embedded catalogue's LevelDB lock in stateDir).
    await stopAll();
    throw err;
  }
}
