/**
 * Start-up checks of the agent's store and catalogue (docs/agent.md
 * "Start-up checks"): a misconfigured bucket, endpoint, credential or
 * catalogue URL fails at start, naming the setting and the fix, instead of
 * at the first backup or restore.
 *
 * Only what a host role may do is used (infra/agent-access.ts): it may list
 * `archives/*` (ListBucket with an s3:prefix condition, so a bare HeadBucket
 * would be denied), and write under its own `archives/<hostId>/`, but never
 * delete. The write probe is therefore a multipart upload that is created and
 * aborted (CreateMultipartUpload is authorised as s3:PutObject, plus
 * s3:AbortMultipartUpload): it proves the right to write there and leaves no
 * object, no version in a versioned bucket and no S3 event for the indexer.
 */
import { randomBytes } from 'node:crypto';
import { AbortMultipartUploadCommand, CreateMultipartUploadCommand, ListObjectsV2Command, type S3Client } from '@aws-sdk/client-s3';
import { CatalogError, CowstreamError, ForbiddenError, NotFoundError, StoreError, describeError } from '../errors.js';
import { archivesPrefix, effectiveEndpoint, normalizePrefix, resolveS3Timeouts } from '../store/config.js';
import { errorNameOf, httpStatusOf } from '../store/s3-errors.js';
import type { AgentConfig } from './config.js';

/** A store check failed: `field` names the config setting, `fix` says what to do. */
export class StoreCheckError extends StoreError {
  override readonly code: string = 'STORE_CHECK';
  constructor(
    readonly field: string,
    message: string,
    readonly fix: string,
    options?: { cause?: unknown },
  ) {
    super(`${field}: ${message} — ${fix}`, options);
  }
}

/** A catalogue check failed. */
export class CatalogCheckError extends CatalogError {
  override readonly code: string = 'CATALOG_CHECK';
  constructor(
    readonly field: string,
    message: string,
    readonly fix: string,
    options?: { cause?: unknown },
  ) {
    super(`${field}: ${message} — ${fix}`, options);
  }
}

export type CheckError = StoreCheckError | CatalogCheckError;

export interface CheckResult {
  name: 'store.read' | 'store.write' | 'catalog';
  status: 'ok' | 'failed' | 'skipped';
  detail: string;
  /** Set when status is 'failed'. */
  error?: CheckError;
}

/** JSON shape of a result (GET /, --check-config --json). */
export function checkResultJson(r: CheckResult): Record<string, unknown> {
  return { name: r.name, status: r.status, detail: r.detail, ...(r.error ? { field: r.error.field, code: r.error.code, fix: r.error.fix } : {}) };
}

/** Catalogue requests are small; one answer within this bound or the check fails. */
const CATALOG_CHECK_TIMEOUT_MS = 10_000;

/**
 * Runs every check the config calls for. The embedded store and catalogue
 * are started by the agent itself and are skipped here; a store from
 * `store` and a catalogue from `catalog.url` are checked for real.
 */
export async function runStartupChecks(config: AgentConfig, env: NodeJS.ProcessEnv = process.env): Promise<CheckResult[]> {
  const results: CheckResult[] = [];
  if (config.store) {
    const { createS3Client } = await import('../store/s3-client.js');
    const client = createS3Client({ ...config.store, prefix: normalizePrefix(config.store.prefix) }, { maxAttempts: 2 });
    try {
      results.push(...(await checkStore(client, config, env)));
    } finally {
      client.destroy();
    }
  } else {
    results.push({ name: 'store.read', status: 'skipped', detail: 'embedded S3 store: started by the agent under its stateDir' });
  }
  if (config.catalog && 'url' in config.catalog) results.push(await checkCatalog(config, env));
  else if (config.catalog) results.push({ name: 'catalog', status: 'skipped', detail: 'embedded catalogue: started by the agent' });
  return results;
}

async function checkStore(client: S3Client, config: AgentConfig, env: NodeJS.ProcessEnv): Promise<CheckResult[]> {
  const store = config.store!;
  const timeouts = resolveS3Timeouts(store.timeouts);
  // One bound per call over the SDK's retries: connect + one silent request + slack.
  const bound = (): AbortSignal => AbortSignal.timeout(timeouts.connectMs + 2 * timeouts.requestMs);
  const endpoint = effectiveEndpoint(store, env);
  const hostPrefix = archivesPrefix(store.prefix, config.hostId);
  const where = `s3://${store.bucket}/${hostPrefix}${endpoint ? ` at ${endpoint}` : ''}`;
  try {
    await client.send(new ListObjectsV2Command({ Bucket: store.bucket, Prefix: hostPrefix, MaxKeys: 1 }), { abortSignal: bound() });
  } catch (err) {
    const error = classifyS3(err, 'list', store.bucket, hostPrefix, endpoint, store.endpoint !== undefined);
    return [{ name: 'store.read', status: 'failed', detail: error.message, error }];
  }
  const read: CheckResult = { name: 'store.read', status: 'ok', detail: `listed ${where}` };
  const key = `${hostPrefix}.cowstream-probe-${randomBytes(6).toString('hex')}`;
  let uploadId: string | undefined;
  try {
    uploadId = (await client.send(new CreateMultipartUploadCommand({ Bucket: store.bucket, Key: key }), { abortSignal: bound() })).UploadId;
  } catch (err) {
    const error = classifyS3(err, 'write', store.bucket, hostPrefix, endpoint, store.endpoint !== undefined);
    return [read, { name: 'store.write', status: 'failed', detail: error.message, error }];
  }
  let note = '';
  try {
    if (uploadId) await client.send(new AbortMultipartUploadCommand({ Bucket: store.bucket, Key: key, UploadId: uploadId }), { abortSignal: bound() });
  } catch (err) {
    // Writing was proven; an abort the server lacks (s3rver: 405) leaves an empty upload to the bucket's lifecycle rule.
    note = ` (the probe upload could not be aborted: ${describeError(err)})`;
  }
  return [read, { name: 'store.write', status: 'ok', detail: `may write under ${where}${note}` }];
}

/** Maps an S3 failure to the setting at fault and its fix. */
function classifyS3(err: unknown, op: 'list' | 'write', bucket: string, hostPrefix: string, endpoint: string | undefined, endpointInConfig: boolean): StoreCheckError {
  const name = errorNameOf(err);
  const status = httpStatusOf(err);
  const at = endpoint ? ` at ${endpoint}` : '';
  const endpointField = endpointInConfig ? 'store.endpoint' : endpoint ? 'AWS_ENDPOINT_URL_S3' : 'store.region';
  if (name === 'NoSuchBucket' || (op === 'list' && status === 404)) {
    return new StoreCheckError('store.bucket', `bucket "${bucket}" does not exist${at}`, 'create the bucket or correct store.bucket', { cause: err });
  }
  if (name === 'CredentialsProviderError' || /could not load credentials/i.test(describeError(err))) {
    return new StoreCheckError('AWS credentials', 'no AWS credentials found', 'set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or an instance role) for this store', { cause: err });
  }
  if (name === 'InvalidAccessKeyId' || name === 'SignatureDoesNotMatch' || name === 'ExpiredToken' || name === 'InvalidToken') {
    return new StoreCheckError('AWS credentials', `the store${at} rejects the agent's credentials (${name})`, 'set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY to a valid identity of this store', { cause: err });
  }
  if (name === 'AccessDenied' || status === 403) {
    const what = op === 'list' ? `may not list ${hostPrefix} in bucket "${bucket}"` : `may not write under ${hostPrefix} in bucket "${bucket}"`;
    return new StoreCheckError('store.prefix', `the agent's identity ${what}${at} (${name})`, op === 'list' ? 'grant s3:ListBucket on the prefix (infra/agent-access.ts) or correct store.bucket / store.prefix' : 'grant s3:PutObject and s3:AbortMultipartUpload on this host\'s prefix (infra/agent-access.ts) or correct store.prefix / hostId', { cause: err });
  }
  if (name === 'TimeoutError' || name === 'AbortError' || name === 'RequestTimeout' || name === 'ETIMEDOUT' || /timed? ?out|aborted/i.test(describeError(err))) {
    return new StoreCheckError(endpointField, `the S3 endpoint${at} did not answer in time`, 'check the URL and that the server is up; store.timeouts bounds the wait', { cause: err });
  }
  if (/^E[A-Z]+$/.test(name) || /getaddrinfo|socket hang up/i.test(describeError(err))) {
    return new StoreCheckError(endpointField, `cannot reach the S3 endpoint${at} (${name})`, 'check the URL and that the server is up', { cause: err });
  }
  return new StoreCheckError('store', `the store${at} refused the check (${status !== undefined ? `${name} ${status}` : describeError(err)})`, 'check store.bucket, store.endpoint, store.region and the AWS credentials', { cause: err });
}

async function checkCatalog(config: AgentConfig, env: NodeJS.ProcessEnv): Promise<CheckResult> {
  const cat = config.catalog as { url: string; tokenFile?: string };
  const { CatalogClient } = await import('../catalog/client.js');
  const { remoteCatalogToken } = await import('../store/embedded-credentials.js');
  let token: string | undefined;
  try {
    token = await remoteCatalogToken(cat, env);
  } catch (err) {
    const error = new CatalogCheckError('catalog.tokenFile', `cannot read the token: ${describeError(err)}`, 'point catalog.tokenFile at the catalogue\'s credentials.json (mode 0600)', { cause: err });
    return { name: 'catalog', status: 'failed', detail: error.message, error };
  }
  const client = new CatalogClient({ url: cat.url, timeoutMs: CATALOG_CHECK_TIMEOUT_MS, ...(token !== undefined ? { token } : {}) });
  try {
    await client.listRestores(config.hostId, 'PENDING', 1);
    return { name: 'catalog', status: 'ok', detail: `GET /hosts/${config.hostId}/restores at ${cat.url} answered` };
  } catch (err) {
    const error = classifyCatalog(err, cat.url, client.signed, cat.tokenFile !== undefined);
    return { name: 'catalog', status: 'failed', detail: error.message, error };
  }
}

function classifyCatalog(err: unknown, url: string, signed: boolean, hasTokenFile: boolean): CatalogCheckError {
  if (err instanceof ForbiddenError) {
    if (signed) return new CatalogCheckError('AWS credentials', `the catalogue at ${url} refused the signed request (${err.message})`, 'use the host\'s role (AWS_PROFILE) allowed to call its agent routes', { cause: err });
    const field = hasTokenFile ? 'catalog.tokenFile' : 'COWSTREAM_CATALOG_TOKEN';
    return new CatalogCheckError(field, `the catalogue at ${url} refused the token (${err.message})`, 'set catalog.tokenFile to the credentials.json of that `cowstream catalog serve`', { cause: err });
  }
  if (err instanceof NotFoundError) return new CatalogCheckError('catalog.url', `${url} has no catalogue API (${err.message})`, 'set catalog.url to the base URL of the catalogue API', { cause: err });
  const why = err instanceof CowstreamError ? describeError(err) : String(err);
  return new CatalogCheckError('catalog.url', `the catalogue at ${url} did not answer (${why})`, 'check the URL and that the catalogue is up', { cause: err });
}
