/**
 * The indexer: turns S3 ObjectCreated / ObjectRemoved notifications on
 * archive keys into catalogue records. It reads only the footer, header and
 * trailer (openArchive's ranged GETs) — never the extents — so indexing cost
 * is independent of archive size.
 *
 * Idempotence: S3 delivers events at least once and out of order. Records
 * are keyed by the archive uuid from the object key; re-delivery of the
 * same object (same ETag) is a no-op, and the S3 `sequencer` orders a
 * create and a remove of the same key (repository.putArchive/markDeleted).
 */
import type { S3Client } from '@aws-sdk/client-s3';
import { v5 as uuidv5 } from 'uuid';
import { CatalogError, CowstreamError, FormatError, describeError } from '../errors.js';
import { openArchive } from '../format/reader.js';
import { parseArchiveKey } from '../store/config.js';
import { StoreNotFoundError } from '../store/errors.js';
import { S3RangeSource } from '../store/s3-source.js';
import { nullLogger, type Logger } from './log.js';
import { uuidSchema, type ArchiveRecord } from './records.js';
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

/** The catalogue id of an object: the uuid in its name, or one derived from the key. */
export function archiveIdForKey(bucket: string, key: string): string {
  const parsed = parseArchiveKey(key);
  if (parsed && uuidSchema.safeParse(parsed.uuid).success) return parsed.uuid.toLowerCase();
  return uuidv5(`s3://${bucket}/${key}`, KEY_NAMESPACE);
}

function stripQuotes(etag: string | undefined): string | undefined {
  return etag === undefined ? undefined : etag.replace(/^"+|"+$/g, '');
}

export class Indexer {
  private readonly logger: Logger;
  constructor(private readonly deps: IndexerDeps) {
    this.logger = deps.logger ?? nullLogger;
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
    const parsed = parseArchiveKey(key);
    if (!parsed) return { key, eventName, action: 'ignored', reason: 'not an archive key' };
    const uuid = archiveIdForKey(bucket, key);
    const sequencer = record.s3.object.sequencer;
    if (eventName.startsWith('ObjectRemoved')) {
      const existing = await this.deps.repo.getArchive(uuid);
      if (existing && existing.key !== key) return { key, eventName, uuid, action: 'ignored', reason: `archive ${uuid} is indexed from ${existing.key}` };
      const outcome = await this.deps.repo.markDeleted(uuid, sequencer, 'object removed from the bucket');
      return { key, eventName, uuid, action: outcome === 'deleted' ? 'deleted' : outcome };
    }
    if (!eventName.startsWith('ObjectCreated')) return { key, eventName, uuid, action: 'ignored', reason: 'unhandled event type' };
    return this.indexObject(bucket, key, uuid, parsed.hostId, sequencer, record.eventTime);
  }

  /** Reads header, footer and trailer of one object and writes its record. */
  async indexObject(bucket: string, key: string, uuid: string, keyHost: string, sequencer?: string, eventTime?: string): Promise<IndexResult> {
    const eventName = 'ObjectCreated';
    let source: S3RangeSource;
    try {
      source = await S3RangeSource.open(this.deps.s3, bucket, key, this.deps.endpoint ? { endpoint: this.deps.endpoint } : {});
    } catch (err) {
      // Removed before we got to it: the ObjectRemoved event (or none) decides.
      if (err instanceof StoreNotFoundError) return { key, eventName, uuid, action: 'gone', reason: describeError(err) };
      throw err;
    }
    const base = {
      bucket,
      key,
      etag: stripQuotes(source.etag),
      ...(sequencer !== undefined ? { sequencer } : {}),
      indexedAt: new Date().toISOString(),
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
        uuid,
        hostId: keyHost,
        devices: header.devices.map((d) => ({ name: d.name, size: d.size })),
        createdAt: new Date(header.createdAt).toISOString(),
        parentUuid: header.parentUuid,
        // An incremental whose parent is not indexed yet (out-of-order events) gets a lower bound.
        chainDepth: header.parentUuid === null ? 0 : parent ? parent.chainDepth + 1 : 1,
        bytesStored: source.size,
        zeroBytes: footer.zeroBytes,
        dataBytes: footer.dataBytes,
        compressionRatio: footer.storedBytes > 0 ? Math.round((footer.dataBytes / footer.storedBytes) * 1000) / 1000 : 0,
        status: problems.length === 0 ? 'INDEXED' : 'REJECTED',
        ...(problems.length > 0 ? { reason: problems.join('; ') } : {}),
      };
    } catch (err) {
      // Only format damage makes an archive REJECTED; I/O errors are retried.
      if (!(err instanceof FormatError) && !(err instanceof CowstreamError && err.code === 'KEY')) throw err;
      record = {
        ...base,
        uuid,
        hostId: keyHost,
        devices: [],
        createdAt: eventTime && !Number.isNaN(Date.parse(eventTime)) ? new Date(eventTime).toISOString() : base.indexedAt,
        parentUuid: null,
        chainDepth: 0,
        bytesStored: source.size,
        zeroBytes: 0,
        dataBytes: 0,
        compressionRatio: 0,
        status: 'REJECTED',
        reason: `${err.code}: ${err.message}`,
      };
    } finally {
      await source.close();
    }
    const outcome = await this.deps.repo.putArchive(record);
    if (record.status === 'REJECTED' && (outcome === 'created' || outcome === 'replaced')) {
      return { key, eventName, uuid, action: 'rejected', reason: record.reason };
    }
    return { key, eventName, uuid, action: outcome, ...(record.reason ? { reason: record.reason } : {}) };
  }
}
