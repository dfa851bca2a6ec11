/**
 * The archives of a bucket, read straight from it: no catalogue service.
 *
 * One LIST (paged) under `<prefix>/archives/`, then, for each object not in
 * the local cache under the same key and ETag, two ranged GETs (footer and
 * header, src/format/summary.ts), a bounded number in flight. Each object
 * becomes the same ArchiveRecord the catalogue's indexer writes, so retention
 * (retention.ts) plans over either source with one implementation.
 *
 * An object under archives/ that is not exactly `archives/<host>/<uuid>.cwa`,
 * or whose header disagrees with its key, or that cannot be read as an
 * archive, is listed as REJECTED with the reason: never silently skipped.
 */
import { ListObjectsV2Command, type S3Client } from '@aws-sdk/client-s3';
import { CowstreamError, FormatError, describeError } from '../errors.js';
import { readArchiveSummary } from '../format/summary.js';
import { S3RangeSource } from '../store/s3-source.js';
import { archivesPrefix, classifyArchiveKey } from '../store/config.js';
import { ObjectChangedError, StoreNotFoundError } from '../store/errors.js';
import { NO_HOST, objectIdForKey } from './indexer.js';
import type { ListingCache } from './listing-cache.js';
import type { ArchiveRecord } from './records.js';

export interface BucketListingOptions {
  client: S3Client;
  bucket: string;
  prefix?: string;
  /** Summaries read at once (default 16). */
  concurrency?: number;
  cache?: ListingCache;
  /** For error messages only. */
  endpoint?: string;
}

export interface BucketListing {
  archives: ArchiveRecord[];
  /** Objects whose summary came from the cache (same key and ETag). */
  cached: number;
  /** Objects whose footer and header were read now. */
  read: number;
}

interface ListedObject {
  key: string;
  size: number;
  etag: string | undefined;
  lastModified: string;
}

async function listObjects(opts: BucketListingOptions): Promise<ListedObject[]> {
  const out: ListedObject[] = [];
  let token: string | undefined;
  do {
    const page = await opts.client.send(
      new ListObjectsV2Command({ Bucket: opts.bucket, Prefix: archivesPrefix(opts.prefix ?? ''), ...(token ? { ContinuationToken: token } : {}) }),
    );
    for (const o of page.Contents ?? []) {
      if (o.Key === undefined) continue;
      out.push({
        key: o.Key,
        size: o.Size ?? 0,
        etag: o.ETag?.replace(/^"+|"+$/g, ''),
        lastModified: (o.LastModified ?? new Date(0)).toISOString(),
      });
    }
    token = page.IsTruncated ? page.NextContinuationToken : undefined;
  } while (token);
  return out;
}

function rejected(o: ListedObject, bucket: string, reason: string, hostId: string | null, uuid?: string): ArchiveRecord {
  return {
    // No uuid to trust: the catalogue's id for a key (a v5 uuid of the object's URI).
    uuid: uuid ?? objectIdForKey(bucket, o.key),
    hostId: hostId ?? NO_HOST,
    devices: [],
    createdAt: o.lastModified,
    parentUuid: null,
    chainDepth: 0,
    bytesStored: o.size,
    zeroBytes: 0,
    dataBytes: 0,
    compressionRatio: 0,
    status: 'REJECTED',
    reason,
    bucket,
    key: o.key,
    ...(o.etag ? { etag: o.etag } : {}),
    indexedAt: new Date().toISOString(),
  };
}

/** Reads one object's footer and header into a record (chainDepth is filled in later). */
async function summarize(opts: BucketListingOptions, o: ListedObject): Promise<ArchiveRecord> {
  const parsed = classifyArchiveKey(o.key, opts.prefix ?? '');
  if (parsed.kind !== 'archive') return rejected(o, opts.bucket, parsed.kind === 'invalid' ? parsed.reason : 'outside the archive prefix', parsed.kind === 'invalid' ? parsed.hostId : null);
  const sourceOpts = opts.endpoint ? { endpoint: opts.endpoint } : {};
  let source = S3RangeSource.forListedObject(opts.client, opts.bucket, o.key, o.size, o.etag, sourceOpts);
  try {
    let summary;
    try {
      summary = await readArchiveSummary(source);
    } catch (err) {
      // Replaced since the LIST (or a server whose LIST ETag differs from its GET's): HEAD it once and read that.
      if (!(err instanceof ObjectChangedError)) throw err;
      source = await S3RangeSource.open(opts.client, opts.bucket, o.key, sourceOpts);
      o = { ...o, size: source.size, etag: source.etag?.replace(/^"+|"+$/g, '') };
      summary = await readArchiveSummary(source);
    }
    const { header, footer } = summary;
    const problems: string[] = [];
    if (header.uuid.toLowerCase() !== parsed.uuid) problems.push(`key names archive ${parsed.uuid} but its header says ${header.uuid}`);
    if (header.hostId !== parsed.hostId) problems.push(`key is under host "${parsed.hostId}" but its header says "${header.hostId}"`);
    if (problems.length > 0) return rejected(o, opts.bucket, problems.join('; '), parsed.hostId, parsed.uuid);
    return {
      uuid: parsed.uuid,
      hostId: parsed.hostId,
      devices: header.devices.map((d) => ({ name: d.name, size: d.size })),
      createdAt: new Date(header.createdAt).toISOString(),
      parentUuid: header.parentUuid,
      chainDepth: 0,
      bytesStored: o.size,
      zeroBytes: footer.zeroBytes,
      dataBytes: footer.dataBytes,
      compressionRatio: footer.storedBytes > 0 ? Math.round((footer.dataBytes / footer.storedBytes) * 1000) / 1000 : 0,
      status: 'INDEXED',
      bucket: opts.bucket,
      key: o.key,
      ...(o.etag ? { etag: o.etag } : {}),
      indexedAt: new Date().toISOString(),
    };
  } catch (err) {
    // Damage is a listing result; anything else (network, credentials) fails the listing.
    if (!(err instanceof FormatError)) throw err;
    return rejected(o, opts.bucket, `${(err as CowstreamError).code}: ${describeError(err)}`, parsed.hostId, parsed.uuid);
  } finally {
    await source.close();
  }
}

/** Chain depth from the parent links among the listed archives (a missing parent ends the walk). */
function fillChainDepths(archives: ArchiveRecord[]): void {
  const byId = new Map(archives.filter((a) => a.status !== 'REJECTED').map((a) => [a.uuid, a]));
  for (const a of byId.values()) {
    let depth = 0;
    const seen = new Set<string>([a.uuid]);
    for (let p = a.parentUuid; p !== null && !seen.has(p); p = byId.get(p)?.parentUuid ?? null) {
      seen.add(p);
      depth++;
      if (!byId.has(p)) break;
    }
    a.chainDepth = depth;
  }
}

/** Runs `fn` over `items` with at most `limit` in flight, keeping the order of results. */
async function mapLimited<T, R>(items: readonly T[], limit: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const results = new Array<R>(items.length);
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < items.length) {
      const i = next++;
      results[i] = await fn(items[i]!);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return results;
}

export async function listBucketArchives(opts: BucketListingOptions): Promise<BucketListing> {
  const objects = await listObjects(opts);
  let cached = 0;
  const listed = await mapLimited(objects, opts.concurrency ?? 16, async (o): Promise<ArchiveRecord | null> => {
    const hit = o.etag ? opts.cache?.get(o.key, o.etag) : undefined;
    if (hit) {
      cached++;
      return { ...hit, chainDepth: 0 };
    }
    let record: ArchiveRecord;
    try {
      record = await summarize(opts, o);
    } catch (err) {
      // Deleted between the LIST and its reads (another agent's retention, say): not there any more.
      if (err instanceof StoreNotFoundError) return null;
      throw err;
    }
    if (o.etag) opts.cache?.set(o.key, o.etag, record);
    return record;
  });
  const archives = listed.filter((a): a is ArchiveRecord => a !== null);
  fillChainDepths(archives);
  archives.sort((a, b) => (a.createdAt < b.createdAt ? 1 : a.createdAt > b.createdAt ? -1 : a.key < b.key ? -1 : 1));
  await opts.cache?.save(new Set(objects.map((o) => o.key)));
  return { archives, cached, read: archives.length - cached };
}
