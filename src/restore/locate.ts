/**
 * Turning a user's `<ref>` into archives: a local `.cwa` file, an S3 URI
 * (`s3://bucket/key`), a key in the configured bucket, or an archive UUID
 * found under `<prefix>/archives/<host>/<uuid>.cwa`. Also the parent lookup
 * used by chain resolution and the RangeSource factory used by restore.
 */
import { access, stat } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import type { S3Client } from '@aws-sdk/client-s3';
import { NotFoundError, UsageError } from '../errors.js';
import type { RangeSource } from '../format/sink.js';
import { resolveChain } from './chain.js';
import { planRestore, type ArchiveLocator, type PlanOptions, type PlannerArchive, type RestorePlan } from './plan.js';
import { archiveKey, archivesPrefix, effectiveEndpoint, parseArchiveKey, parseS3Uri, type StoreConfig } from '../store/config.js';
import { FileRangeSource } from '../store/file.js';
import { httpStatusOf, mapS3Error } from '../store/s3-errors.js';

export interface ArchiveContext {
  /** Configured store (bucket/prefix), or null when only files / s3 URIs are used. */
  store: StoreConfig | null;
  /** Client for the store's endpoint (also used for s3:// URIs). */
  client: S3Client | null;
  /**
   * Builds the client on first use when `client` is null: a local `.cwa`
   * never loads the S3 SDK (docs/startup.md). Called at most once per context.
   */
  connect?: () => Promise<S3Client>;
}

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

async function isFile(path: string): Promise<boolean> {
  try {
    return (await stat(path)).isFile();
  } catch {
    return false;
  }
}

/** The context's client, built now by `connect` if needed; null when the context has no S3. */
async function clientOf(ctx: ArchiveContext): Promise<S3Client | null> {
  if (!ctx.client && ctx.connect) {
    const connect = ctx.connect;
    delete ctx.connect;
    ctx.client = await connect();
  }
  return ctx.client;
}

async function needClient(ctx: ArchiveContext, what: string): Promise<S3Client> {
  const client = await clientOf(ctx);
  if (!client) throw new UsageError(`${what} needs an S3 bucket: pass --bucket (or set COWSTREAM_S3_BUCKET), or --state <dir> of an agent with the embedded store`);
  return client;
}

async function headExists(client: S3Client, bucket: string, key: string, endpoint?: string): Promise<boolean> {
  const { HeadObjectCommand } = await import('@aws-sdk/client-s3');
  try {
    await client.send(new HeadObjectCommand({ Bucket: bucket, Key: key }));
    return true;
  } catch (err) {
    if (httpStatusOf(err) === 404) return false;
    throw mapS3Error(err, 'HeadObject', { bucket, key, ...(endpoint ? { endpoint } : {}) });
  }
}

/** Host ids that have archives under the prefix (ListObjectsV2 with '/' delimiter, paginated). */
export async function listHosts(client: S3Client, store: StoreConfig): Promise<string[]> {
  const { ListObjectsV2Command } = await import('@aws-sdk/client-s3');
  const base = archivesPrefix(store.prefix);
  const hosts: string[] = [];
  let token: string | undefined;
  do {
    let res;
    try {
      res = await client.send(new ListObjectsV2Command({ Bucket: store.bucket, Prefix: base, Delimiter: '/', ...(token ? { ContinuationToken: token } : {}) }));
    } catch (err) {
      throw mapS3Error(err, 'ListObjectsV2', { bucket: store.bucket, ...(effectiveEndpoint(store) ? { endpoint: effectiveEndpoint(store)! } : {}) });
    }
    for (const p of res.CommonPrefixes ?? []) if (p.Prefix) hosts.push(p.Prefix.slice(base.length).replace(/\/$/, ''));
    token = res.IsTruncated ? res.NextContinuationToken : undefined;
  } while (token);
  return hosts;
}

/** Finds `<prefix>/archives/<host>/<uuid>.cwa`; `preferHost` is tried first. */
export async function findArchiveByUuid(client: S3Client, store: StoreConfig, uuid: string, preferHost?: string): Promise<ArchiveLocator | null> {
  const endpoint = effectiveEndpoint(store);
  if (preferHost) {
    const key = archiveKey(store.prefix, preferHost, uuid);
    if (await headExists(client, store.bucket, key, endpoint)) return { kind: 's3', bucket: store.bucket, key };
  }
  for (const host of await listHosts(client, store)) {
    if (host === preferHost) continue;
    let key: string;
    try {
      key = archiveKey(store.prefix, host, uuid);
    } catch {
      continue; // a foreign prefix that is not a valid host id
    }
    if (await headExists(client, store.bucket, key, endpoint)) return { kind: 's3', bucket: store.bucket, key };
  }
  return null;
}

/** Resolves `<ref>` to one archive. Errors name what was looked for and where. */
export async function resolveRef(ref: string, ctx: ArchiveContext): Promise<ArchiveLocator> {
  if (ref.trim() === '') throw new UsageError('archive reference is empty');
  const uri = parseS3Uri(ref);
  if (uri) return { kind: 's3', ...uri };
  if (await isFile(ref)) return { kind: 'file', path: resolve(ref) };
  if (ref.endsWith('.cwa') && (ref.startsWith('/') || ref.startsWith('.') || !ctx.store)) {
    throw new NotFoundError(`archive file ${ref} does not exist`);
  }
  if (UUID_RE.test(ref)) {
    if (!ctx.store) throw new UsageError(`looking up archive ${ref} needs an S3 bucket: pass --bucket (or set COWSTREAM_S3_BUCKET), or --state <dir> of an agent with the embedded store`);
    const client = await needClient(ctx, `looking up archive ${ref}`);
    const store = ctx.store;
    const loc = await findArchiveByUuid(client, store, ref.toLowerCase());
    if (!loc) throw new NotFoundError(`archive ${ref} not found under s3://${store.bucket}/${archivesPrefix(store.prefix)}*/`);
    return loc;
  }
  if (ctx.store && ref.endsWith('.cwa')) {
    const client = await needClient(ctx, `reading ${ref}`);
    if (!(await headExists(client, ctx.store.bucket, ref, effectiveEndpoint(ctx.store)))) {
      throw new NotFoundError(`archive object s3://${ctx.store.bucket}/${ref} not found`);
    }
    return { kind: 's3', bucket: ctx.store.bucket, key: ref };
  }
  throw new UsageError(`"${ref}" is not an archive file, an s3://bucket/key URI, an archive key or an archive UUID`);
}

/** RangeSource factory for locators (S3 via the context's client, files directly). */
export function sourceOpener(ctx: ArchiveContext): (loc: ArchiveLocator) => Promise<RangeSource> {
  return async (loc) => {
    if (loc.kind === 'file') return FileRangeSource.open(loc.path);
    const client = await needClient(ctx, `reading s3://${loc.bucket}/${loc.key}`);
    const endpoint = ctx.store ? effectiveEndpoint(ctx.store) : undefined;
    const { S3RangeSource } = await import('../store/s3-source.js');
    return S3RangeSource.open(client, loc.bucket, loc.key, endpoint ? { endpoint } : {});
  };
}

/** Parent lookup: next to the child first (same directory / same host prefix), then the configured store. */
export function parentLocator(ctx: ArchiveContext): (uuid: string, child: PlannerArchive) => Promise<ArchiveLocator | null> {
  return async (uuid, child) => {
    const loc = child.locator;
    if (loc.kind === 'file') {
      const candidate = join(dirname(loc.path), `${uuid}.cwa`);
      try {
        await access(candidate);
        return { kind: 'file', path: candidate };
      } catch {
        /* fall through to the store */
      }
    } else {
      const client = await clientOf(ctx);
      const parsed = parseArchiveKey(loc.key);
      if (client && parsed) {
        const key = archiveKey(parsed.prefix, parsed.hostId, uuid);
        if (await headExists(client, loc.bucket, key)) return { kind: 's3', bucket: loc.bucket, key };
        const local: StoreConfig = { ...(ctx.store ?? {}), bucket: loc.bucket, prefix: parsed.prefix };
        const found = await findArchiveByUuid(client, local, uuid, child.hostId);
        if (found) return found;
      }
    }
    // Only a configured store is searched; without one a local chain never loads the SDK.
    const client = ctx.store ? await clientOf(ctx) : null;
    if (client && ctx.store) return findArchiveByUuid(client, ctx.store, uuid, child.hostId);
    return null;
  };
}

/** ref → chain → plan (what `cowstream restore` and the catalogue's plan builder do). */
export async function buildRestorePlan(ref: string | ArchiveLocator, ctx: ArchiveContext, opts: PlanOptions = {}): Promise<RestorePlan> {
  const start = typeof ref === 'string' ? await resolveRef(ref, ctx) : ref;
  const chain = await resolveChain(start, { openSource: sourceOpener(ctx), locateParent: parentLocator(ctx) });
  return planRestore(chain, opts);
}
