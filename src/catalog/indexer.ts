/**
 * The indexer: turns S3 ObjectCreated / ObjectRemoved notifications on
 * archive keys into catalogue records. It reads only the footer, header and
 * trailer (openArchive's ranged GETs) — never the extents — so indexing cost
 * is independent of archive size.
 *
 * Trust: any host role may write anything under its own `archives/<host>/`,
 * so a key proves nothing beyond that. An object is an archive only at
 * exactly `<prefix>/archives/<hostId>/<uuid>.cwa` (store/config.ts
 * classifyArchiveKey) with a header naming the same host and uuid, and a
 * record is never replaced by an object at another key. Everything else
 * under archives/ is recorded REJECTED, with the reason, under an id derived
 * from its own key — it never touches another record.
 *
 * Idempotence: S3 delivers events at least once and out of order. Records
 * are keyed by the archive uuid; re-delivery of the same object (same ETag)
 * is a no-op, and the S3 `sequencer` orders a create and a remove of the
 * same key — S3 orders nothing else, so sequencers of different keys are
 * never compared (repository.putArchive/markDeleted).
 */
import type { S3Client } from '@aws-sdk/client-s3';
import { v5 as uuidv5 } from 'uuid';
import { CatalogError, CowstreamError, FormatError, describeError } from '../errors.js';
import { openArchive } from '../format/reader.js';
import { archivesPrefix, classifyArchiveKey, normalizePrefix } from '../store/config.js';
import { StoreNotFoundError } from '../store/errors.js';
import { S3RangeSource } from '../store/s3-source.js';
import { nullLogger, type Logger } from './log.js';
import type { ArchiveRecord } from './records.js';
import type { CatalogRepository } from './repository.js';

/** The subset of the Lambda S3 notification record the indexer uses. */
export interface S3NotificationRecord {
  eventName: string;
  eventTime?: string;
  s3: {
    bucket: { name: string };
    object: { key: string; size?: number; eTag?: string; sequencer?: string };
  };
}

export interface S3NotificationEvent {
  Records?: S3NotificationRecord[];
}

export interface IndexerDeps {
  repo: CatalogRepository;
  s3: S3Client;
  logger?: Logger;
  /** For error messages only. */
  endpoint?: string;
  /** The store prefix archives live under (`<prefix>/archives/<host>/<uuid>.cwa`); default none. */
  prefix?: string;
}

export type IndexAction = 'created' | 'unchanged' | 'replaced' | 'stale' | 'rejected' | 'deleted' | 'gone' | 'ignored' | 'unknown';

export interface IndexResult {
  key: string;
  eventName: string;
  action: IndexAction;
  uuid?: string;
  reason?: string;
}

/** A fixed namespace for uuids derived from keys whose name is not a uuid (RFC 4122 v5). */
const KEY_NAMESPACE = '6f3b1d2e-8c4a-5e7f-9a1b-2c3d4e5f6a7b';

/** Lambda's S3 keys are form-encoded: '+' is a space, then percent-decoding. */
export function decodeS3EventKey(key: string): string {
  try {
    return decodeURIComponent(key.replace(/\+/g, ' '));
  } catch (err) {
    throw new CatalogError(`undecodable S3 event key "${key}"`, { cause: err });
  }
}

/**
 * The catalogue id of an object that is not (or not yet proven to be) the
 * archive its key names: derived from bucket and key (RFC 4122 v5), so a
 * rejected object gets its own record and never touches another one.
 */
export function objectIdForKey(bucket: string, key: string): string {
  return uuidv5(`s3://${bucket}/${key}`, KEY_NAMESPACE);
}

function stripQuotes(etag: string | undefined): string | undefined {
  return etag === undefined ? undefined : etag.replace(/^"+|"+$/g, '');
}

/** hostId of a rejected object under no valid host segment (cannot collide: host ids start with [A-Za-z0-9]). */
export const NO_HOST = '(none)';

export class Indexer {
  private readonly logger: Logger;
  private readonly prefix: string;
  constructor(private readonly deps: IndexerDeps) {
    this.logger = deps.logger ?? nullLogger;
    this.prefix = normalizePrefix(deps.prefix);
  }

  /**
   * Handles a batch. Every record is attempted; if any failed for a reason
   * worth retrying (S3/DynamoDB errors) the whole call throws afterwards so
   * Lambda retries (and finally sends it to the DLQ) — the records that
   * succeeded are no-ops the second time.
   */
  async handleEvent(event: S3NotificationEvent): Promise<IndexResult[]> {
    const results: IndexResult[] = [];
    const failures: string[] = [];
    let firstCause: unknown;
    for (const record of event.Records ?? []) {
      try {
        const r = await this.handleRecord(record);
        results.push(r);
        this.logger.info('indexed', { ...r });
      } catch (err) {
        failures.push(`${record.s3?.object?.key}: ${describeError(err)}`);
        firstCause ??= err;
        this.logger.error('index failed', { key: record.s3?.object?.key, eventName: record.eventName, error: describeError(err) });
      }
    }
    if (failures.length > 0) {
      throw new CatalogError(`indexing failed for ${failures.length} record(s): ${failures.join('; ')}`, { cause: firstCause });
    }
    return results;
  }

  async handleRecord(record: S3NotificationRecord): Promise<IndexResult> {
    const eventName = record.eventName ?? '';
    const bucket = record.s3.bucket.name;
    const key = decodeS3EventKey(record.s3.object.key);
    const where = classifyArchiveKey(key, this.prefix);
    if (where.kind === 'outside') return { key, eventName, action: 'ignored', reason: `not under ${archivesPrefix(this.prefix)}` };
    const sequencer = record.s3.object.sequencer;
    const derived = objectIdForKey(bucket, key);
    if (eventName.startsWith('ObjectRemoved')) {
      // Only records indexed from this very key; sequencers compare within one key only.
      const ids = where.kind === 'archive' ? [where.uuid, derived] : [derived];
      let result: IndexResult = { key, eventName, action: 'unknown' };
      for (const uuid of ids) {
        const outcome = await this.deps.repo.markDeleted(uuid, sequencer, 'object removed from the bucket', key);
        if (outcome !== 'unknown') result = { key, eventName, uuid, action: outcome };
      }
      return result;
    }
    if (!eventName.startsWith('ObjectCreated')) return { key, eventName, action: 'ignored', reason: 'unhandled event type' };
    if (where.kind === 'invalid') {
      return this.reject(bucket, key, derived, where.hostId ?? NO_HOST, where.reason, sequencer, record.eventTime);
    }
    return this.indexObject(bucket, key, where.uuid, where.hostId, sequencer, record.eventTime);
  }

  /** Records an object that is not an archive as REJECTED under its own derived id. */
  private async reject(bucket: string, key: string, id: string, hostId: string, reason: string, sequencer?: string, eventTime?: string): Promise<IndexResult> {
    const source = await this.open(bucket, key);
    if ('action' in source) return { ...source, uuid: id };
    const indexedAt = new Date().toISOString();
    await source.close();
    const record: ArchiveRecord = {
      ...emptyRecord(eventTime, indexedAt),
      uuid: id,
      hostId,
      bucket,
      key,
      ...(source.etag !== undefined ? { etag: stripQuotes(source.etag) } : {}),
      ...(sequencer !== undefined ? { sequencer } : {}),
      indexedAt,
      bytesStored: source.size,
      status: 'REJECTED',
      reason,
    };
    return this.putRejected(record);
  }

  /**
   * Reads header, footer and trailer of the object at an archive key and
   * writes its record. The record takes the key's uuid only when the header
   * agrees with the key (host id and uuid) and no other key holds that uuid;
   * otherwise the object is REJECTED under its own derived id.
   */
  async indexObject(bucket: string, key: string, uuid: string, keyHost: string, sequencer?: string, eventTime?: string): Promise<IndexResult> {
    const eventName = 'ObjectCreated';
    const source = await this.open(bucket, key);
    if ('action' in source) return { ...source, uuid };
    const indexedAt = new Date().toISOString();
    const base = {
      ...emptyRecord(eventTime, indexedAt),
      uuid,
      hostId: keyHost,
      bucket,
      key,
      ...(source.etag !== undefined ? { etag: stripQuotes(source.etag) } : {}),
      ...(sequencer !== undefined ? { sequencer } : {}),
      bytesStored: source.size,
    };
    let record: ArchiveRecord;
    try {
      const reader = await openArchive(source);
      const { header, footer } = reader;
      const problems: string[] = [];
      if (header.uuid.toLowerCase() !== uuid) problems.push(`object key names archive ${uuid} but its header says ${header.uuid}`);
      if (header.hostId !== keyHost) problems.push(`object key is under host "${keyHost}" but the header says "${header.hostId}"`);
      const parent = header.parentUuid ? await this.deps.repo.getArchive(header.parentUuid) : null;
      record = {
        ...base,
        devices: header.devices.map((d) => ({ name: d.name, size: d.size })),
        createdAt: new Date(header.createdAt).toISOString(),
        parentUuid: header.parentUuid,
        // An incremental whose parent is not indexed yet (out-of-order events) gets a lower bound.
        chainDepth: header.parentUuid === null ? 0 : parent ? parent.chainDepth + 1 : 1,
        zeroBytes: footer.zeroBytes,
        dataBytes: footer.dataBytes,
        compressionRatio: footer.storedBytes > 0 ? Math.round((footer.dataBytes / footer.storedBytes) * 1000) / 1000 : 0,
        status: problems.length === 0 ? 'INDEXED' : 'REJECTED',
        ...(problems.length > 0 ? { reason: problems.join('; ') } : {}),
      };
    } catch (err) {
      // Only format damage makes an archive REJECTED; I/O errors are retried.
      if (!(err instanceof FormatError) && !(err instanceof CowstreamError && err.code === 'KEY')) throw err;
      record = { ...base, status: 'REJECTED', reason: `${err.code}: ${err.message}` };
    } finally {
      await source.close();
    }
    const derived = objectIdForKey(bucket, key);
    if (record.status === 'REJECTED') {
      // A rejected object replaces only a record of its own key (a newer upload there);
      // it never claims a uuid that its content does not prove.
      const existing = await this.deps.repo.getArchive(uuid);
      if (!existing || existing.key !== key) return this.putRejected({ ...record, uuid: derived, parentUuid: null, chainDepth: 0 });
      return this.putRejected(record);
    }
    const outcome = await this.deps.repo.putArchive(record);
    if (outcome === 'conflict') {
      const holder = await this.deps.repo.getArchive(uuid);
      const reason = `uuid ${uuid} already indexed at ${holder?.key ?? 'another key'}`;
      return this.putRejected({ ...record, uuid: derived, status: 'REJECTED', reason });
    }
    if (outcome === 'created' || outcome === 'replaced') {
      // A damaged earlier upload to this key was recorded under the derived id; this one supersedes it.
      await this.deps.repo.markDeleted(derived, sequencer, `superseded by archive ${uuid} at the same key`, key);
    }
    return { key, eventName, uuid, action: outcome };
  }

  /** The object, or 'gone' when it was removed before we got to it (the ObjectRemoved event, or none, decides). */
  private async open(bucket: string, key: string): Promise<S3RangeSource | IndexResult> {
    try {
      return await S3RangeSource.open(this.deps.s3, bucket, key, this.deps.endpoint ? { endpoint: this.deps.endpoint } : {});
    } catch (err) {
      if (err instanceof StoreNotFoundError) return { key, eventName: 'ObjectCreated', action: 'gone', reason: describeError(err) };
      throw err;
    }
  }

  private async putRejected(record: ArchiveRecord): Promise<IndexResult> {
    const outcome = await this.deps.repo.putArchive(record);
    const action: IndexAction = outcome === 'created' || outcome === 'replaced' ? 'rejected' : outcome === 'conflict' ? 'stale' : outcome;
    return { key: record.key, eventName: 'ObjectCreated', uuid: record.uuid, action, ...(record.reason ? { reason: record.reason } : {}) };
  }
}

/** The fields of a record of an object whose content says nothing usable. */
function emptyRecord(eventTime: string | undefined, indexedAt: string): Pick<
  ArchiveRecord,
  'devices' | 'createdAt' | 'parentUuid' | 'chainDepth' | 'zeroBytes' | 'dataBytes' | 'compressionRatio' | 'indexedAt' | 'bytesStored'
> {
  return {
    devices: [],
    createdAt: eventTime && !Number.isNaN(Date.parse(eventTime)) ? new Date(eventTime).toISOString() : indexedAt,
    parentUuid: null,
    chainDepth: 0,
    zeroBytes: 0,
    dataBytes: 0,
    compressionRatio: 0,
    indexedAt,
    bytesStored: 0,
  };
}
