/**
 * DynamoDB single-table repository of the catalogue (design: docs/ARCHITECTURE.md).
 *
 * Items:
 *   archive   pk=ARCHIVE#<uuid> sk=A        gsi1 HOST#<host>/<created>#<uuid>, gsi2 ARCHIVES/<created>#<uuid>,
 *                                            gsi3 PARENT#<parent>/<created>#<uuid>, gsi4 VERIFY/<lastVerified|0>#<uuid>
 *   disk idx  pk=ARCHIVE#<uuid> sk=DISK#<d>  gsi2 HOSTDISK#<host>#<disk>/<created>#<uuid>
 *   restore   pk=RESTORE#<id>   sk=R        gsi1 HOSTRESTORES#<host>#<STATUS>/<created>#<id>
 *   export    pk=EXPORT#<id>    sk=E        gsi1 HOSTEXPORTS#<host>#<STATUS>/<created>#<id>
 *   host      pk=HOST#<host>    sk=H        gsi1 HOSTS/<host>
 *
 * Every state change is a conditional write so concurrent handlers (Lambda
 * retries, two agents) cannot both win.
 */
import {
  BatchGetCommand,
  DynamoDBDocumentClient,
  GetCommand,
  PutCommand,
  QueryCommand,
  UpdateCommand,
  type QueryCommandInput,
} from '@aws-sdk/lib-dynamodb';
import { CatalogError, ConflictError, NotFoundError } from '../errors.js';
import { decodeCursor, encodeCursor } from './cursor.js';
import {
  ACTIVE_RESTORE_STATUSES,
  archiveRecordSchema,
  hostIdSchema,
  hostRecordSchema,
  restoreJobSchema,
  exportJobSchema,
  type ArchiveRecord,
  type ExportJob,
  type ArchiveStatus,
  type HostRecord,
  type RestoreJob,
  type JobProgress,
  type RestoreStatus,
} from './records.js';
import { GSI } from './table.js';
import type { z } from 'zod';

export const DEFAULT_PAGE_LIMIT = 50;
/** How long a claimed restore job stays its agent's without a report (the agent reports every 2 s). */
export const DEFAULT_RESTORE_LEASE_MS = 5 * 60_000;
export const MAX_PAGE_LIMIT = 500;

export interface Page<T> {
  items: T[];
  cursor?: string;
}

export interface ListArchivesQuery {
  hostId?: string;
  disk?: string;
  limit?: number;
  cursor?: string;
  includeDeleted?: boolean;
}

/** 'conflict': the uuid is already indexed from another key (putArchive never replaces such a record). */
export type IndexOutcome = 'created' | 'unchanged' | 'replaced' | 'stale' | 'conflict';
export type DeleteOutcome = 'deleted' | 'unchanged' | 'unknown' | 'stale';

const ARCHIVE_SK = 'A';
const HOST_SK = 'H';
const ZERO_TIME = '0000-00-00T00:00:00.000Z';
/** Archives in these states are re-verified; CORRUPT/REJECTED/DELETED leave the queue. */
const VERIFIABLE: readonly ArchiveStatus[] = ['INDEXED', 'VERIFIED'];

const archivePk = (uuid: string): string => `ARCHIVE#${uuid}`;
/** A kind of job a host's agent claims: its keys and record schema. */
export interface JobKind<J extends AnyJob> {
  readonly noun: 'restore' | 'export';
  readonly sk: string;
  pk(id: string): string;
  hostPk(host: string, status: RestoreStatus): string;
  readonly schema: z.ZodType<J>;
  /** Appended to the "agent lost" error of an expired lease. */
  lostNote(job: J): string;
}
export type AnyJob = RestoreJob | ExportJob;

export const RESTORE_JOBS: JobKind<RestoreJob> = {
  noun: 'restore',
  sk: 'R',
  pk: (id) => `RESTORE#${id}`,
  hostPk: (host, status) => `HOSTRESTORES#${host}#${status}`,
  schema: restoreJobSchema,
  lostNote: (job) => `; a partial target may be left at ${job.target.path}`,
};

export const EXPORT_JOBS: JobKind<ExportJob> = {
  noun: 'export',
  sk: 'E',
  pk: (id) => `EXPORT#${id}`,
  hostPk: (host, status) => `HOSTEXPORTS#${host}#${status}`,
  schema: exportJobSchema,
  lostNote: () => '; the agent may still be serving it until it next reaches the catalogue',
};

/**
 * S3 event sequencers are hex strings of varying length; AWS documents that
 * they compare lexicographically after left-padding the shorter with zeros.
 */
export function compareSequencer(a: string, b: string): number {
  const n = Math.max(a.length, b.length);
  const pa = a.toUpperCase().padStart(n, '0');
  const pb = b.toUpperCase().padStart(n, '0');
  return pa < pb ? -1 : pa > pb ? 1 : 0;
}

function isConditionFailure(err: unknown): boolean {
  const name = (err as Error)?.name;
  return name === 'ConditionalCheckFailedException' || name === 'TransactionCanceledException';
}

function clampLimit(limit: number | undefined): number {
  if (limit === undefined) return DEFAULT_PAGE_LIMIT;
  return Math.max(1, Math.min(MAX_PAGE_LIMIT, Math.floor(limit)));
}

function stripKeys(item: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(item)) {
    if (k === 'pk' || k === 'sk' || /^gsi\d(pk|sk)$/.test(k) || k === 'entity') continue;
    out[k] = v;
  }
  return out;
}

export class CatalogRepository {
  constructor(
    readonly doc: DynamoDBDocumentClient,
    readonly tableName: string,
  ) {}

  // ---- archives ---------------------------------------------------------

  private archiveItem(rec: ArchiveRecord): Record<string, unknown> {
    const sortable = `${rec.createdAt}#${rec.uuid}`;
    const item: Record<string, unknown> = {
      ...rec,
      pk: archivePk(rec.uuid),
      sk: ARCHIVE_SK,
      entity: 'archive',
      gsi1pk: `HOST#${rec.hostId}`,
      gsi1sk: sortable,
      gsi2pk: 'ARCHIVES',
      gsi2sk: sortable,
    };
    if (rec.parentUuid) {
      item.gsi3pk = `PARENT#${rec.parentUuid}`;
      item.gsi3sk = sortable;
    }
    if (VERIFIABLE.includes(rec.status)) {
      item.gsi4pk = 'VERIFY';
      item.gsi4sk = `${rec.lastVerifiedAt ?? ZERO_TIME}#${rec.uuid}`;
    }
    return item;
  }

  private parseArchive(item: Record<string, unknown>): ArchiveRecord {
    const r = archiveRecordSchema.safeParse(stripKeys(item));
    if (!r.success) throw new CatalogError(`corrupt archive item ${String(item.pk)}: ${r.error.issues[0]?.message}`);
    return r.data;
  }

  async getArchive(uuid: string): Promise<ArchiveRecord | null> {
    const r = await this.doc.send(new GetCommand({ TableName: this.tableName, Key: { pk: archivePk(uuid), sk: ARCHIVE_SK }, ConsistentRead: true }));
    return r.Item ? this.parseArchive(r.Item) : null;
  }

  async requireArchive(uuid: string): Promise<ArchiveRecord> {
    const a = await this.getArchive(uuid);
    if (!a) throw new NotFoundError(`archive ${uuid} not found`);
    return a;
  }

  /**
   * Writes an archive record idempotently. A re-delivered event for the same
   * object (same etag) is a no-op and keeps VERIFIED/CORRUPT state; an event
   * older than the last one applied (S3 sequencer) is ignored; a newer upload
   * to the same key replaces the record. A record is never replaced by an
   * object at another key ('conflict'): S3 orders the events of one key
   * only, so sequencers of different keys say nothing, and another key may
   * belong to another host.
   */
  async putArchive(rec: ArchiveRecord): Promise<IndexOutcome> {
    const existing = await this.getArchive(rec.uuid);
    if (existing && existing.key !== rec.key) return 'conflict';
    await this.registerHost(rec.hostId);
    try {
      await this.doc.send(new PutCommand({ TableName: this.tableName, Item: this.archiveItem(rec), ConditionExpression: 'attribute_not_exists(pk)' }));
      await this.putDiskItems(rec);
      await this.touchHost(rec.hostId, rec.status === 'REJECTED' ? undefined : rec.createdAt);
      return 'created';
    } catch (err) {
      if (!isConditionFailure(err)) throw err;
    }
    const current = await this.requireArchive(rec.uuid);
    if (current.key !== rec.key) return 'conflict';
    return this.replaceArchive(current, rec);
  }

  /** The same key again: a no-op, stale, or (newer sequencer) a replacement. */
  private async replaceArchive(existing: ArchiveRecord, rec: ArchiveRecord): Promise<IndexOutcome> {
    if (existing.etag !== undefined && existing.etag === rec.etag && existing.status !== 'DELETED') {
      await this.putDiskItems(rec); // a retry after a crash between the archive put and these
      return 'unchanged';
    }
    if (rec.sequencer === undefined || existing.sequencer === undefined || compareSequencer(rec.sequencer, existing.sequencer) <= 0) {
      return existing.etag === rec.etag ? 'unchanged' : 'stale';
    }
    try {
      await this.doc.send(
        new PutCommand({
          TableName: this.tableName,
          Item: this.archiveItem(rec),
          ConditionExpression: 'sequencer = :old AND #k = :key',
          ExpressionAttributeNames: { '#k': 'key' },
          ExpressionAttributeValues: { ':old': existing.sequencer, ':key': rec.key },
        }),
      );
    } catch (err) {
      if (isConditionFailure(err)) return 'stale'; // a newer event won meanwhile
      throw err;
    }
    await this.putDiskItems(rec);
    await this.touchHost(rec.hostId, rec.status === 'REJECTED' ? undefined : rec.createdAt);
    return 'replaced';
  }

  /**
   * Disk index items, written only once the archive item is this key's
   * (idempotent puts): an object that lost to another key must not list
   * the winner under its own host's disks.
   */
  private async putDiskItems(rec: ArchiveRecord): Promise<void> {
    for (const d of rec.devices) {
      await this.doc.send(
        new PutCommand({
          TableName: this.tableName,
          Item: {
            pk: archivePk(rec.uuid),
            sk: `DISK#${d.name}`,
            entity: 'disk',
            uuid: rec.uuid,
            gsi2pk: `HOSTDISK#${rec.hostId}#${d.name}`,
            gsi2sk: `${rec.createdAt}#${rec.uuid}`,
          },
        }),
      );
    }
  }

  /**
   * ObjectRemoved: marks the archive DELETED unless a newer event was applied.
   * With `key`, only a record indexed from that key is touched (the removal
   * of some other object never deletes a record; its sequencer is not
   * comparable either).
   */
  async markDeleted(uuid: string, sequencer?: string, reason?: string, key?: string): Promise<DeleteOutcome> {
    const existing = await this.getArchive(uuid);
    if (!existing || (key !== undefined && existing.key !== key)) return 'unknown';
    if (existing.status === 'DELETED') return 'unchanged';
    if (sequencer !== undefined && existing.sequencer !== undefined && compareSequencer(sequencer, existing.sequencer) < 0) return 'stale';
    const now = new Date().toISOString();
    try {
      await this.doc.send(
        new UpdateCommand({
          TableName: this.tableName,
          Key: { pk: archivePk(uuid), sk: ARCHIVE_SK },
          UpdateExpression: 'SET #s = :del, deletedAt = :now' + (sequencer ? ', sequencer = :seq' : '') + (reason ? ', reason = :r' : '') + ' REMOVE gsi4pk, gsi4sk',
          ConditionExpression: '#s <> :del' + (existing.sequencer !== undefined ? ' AND sequencer = :old' : ' AND attribute_not_exists(sequencer)'),
          ExpressionAttributeNames: { '#s': 'status' },
          ExpressionAttributeValues: {
            ':del': 'DELETED',
            ':now': now,
            ...(sequencer ? { ':seq': sequencer } : {}),
            ...(reason ? { ':r': reason } : {}),
            ...(existing.sequencer !== undefined ? { ':old': existing.sequencer } : {}),
          },
        }),
      );
      return 'deleted';
    } catch (err) {
      if (isConditionFailure(err)) return 'stale';
      throw err;
    }
  }

  /** Verify outcome: VERIFIED (re-queued at the back) or CORRUPT (leaves the queue). */
  async recordVerification(uuid: string, ok: boolean, reason?: string, at = new Date().toISOString()): Promise<boolean> {
    try {
      await this.doc.send(
        new UpdateCommand({
          TableName: this.tableName,
          Key: { pk: archivePk(uuid), sk: ARCHIVE_SK },
          UpdateExpression: ok
            ? 'SET #s = :st, lastVerifiedAt = :at, gsi4pk = :q, gsi4sk = :qs REMOVE reason'
            : 'SET #s = :st, lastVerifiedAt = :at, reason = :r REMOVE gsi4pk, gsi4sk',
          // Only archives still in the queue: a concurrent delete wins.
          ConditionExpression: '#s IN (:i, :v)',
          ExpressionAttributeNames: { '#s': 'status' },
          ExpressionAttributeValues: {
            ':st': ok ? 'VERIFIED' : 'CORRUPT',
            ':at': at,
            ':i': 'INDEXED',
            ':v': 'VERIFIED',
            ...(ok ? { ':q': 'VERIFY', ':qs': `${at}#${uuid}` } : { ':r': reason ?? 'verification failed' }),
          },
        }),
      );
      return true;
    } catch (err) {
      if (isConditionFailure(err)) return false;
      throw err;
    }
  }

  /** Archives newest first: all, of a host, or of a host's disk. */
  async listArchives(q: ListArchivesQuery = {}): Promise<Page<ArchiveRecord>> {
    const limit = clampLimit(q.limit);
    if (q.disk !== undefined && q.hostId === undefined) throw new CatalogError('a disk filter needs a host');
    let input: QueryCommandInput;
    if (q.disk !== undefined) {
      const pk = `HOSTDISK#${q.hostId}#${q.disk}`;
      input = this.indexQuery(GSI.byDisk, 'gsi2', pk, limit, q.cursor);
    } else if (q.hostId !== undefined) {
      input = this.indexQuery(GSI.byHost, 'gsi1', `HOST#${q.hostId}`, limit, q.cursor);
    } else {
      input = this.indexQuery(GSI.byDisk, 'gsi2', 'ARCHIVES', limit, q.cursor);
    }
    const r = await this.doc.send(new QueryCommand(input));
    const raw = r.Items ?? [];
    let items: ArchiveRecord[];
    if (q.disk !== undefined) {
      const uuids = raw.map((i) => String(i.uuid));
      const byId = await this.batchGetArchives(uuids);
      items = uuids.map((u) => byId.get(u)).filter((a): a is ArchiveRecord => a !== undefined);
    } else {
      items = raw.map((i) => this.parseArchive(i));
    }
    if (!q.includeDeleted) items = items.filter((a) => a.status !== 'DELETED');
    return { items, cursor: encodeCursor(r.LastEvaluatedKey) };
  }

  /** Every archive of a host (all pages, including DELETED); for prune. */
  async allArchivesOfHost(hostId: string): Promise<ArchiveRecord[]> {
    const out: ArchiveRecord[] = [];
    let cursor: string | undefined;
    do {
      const page = await this.listArchives({ hostId, limit: MAX_PAGE_LIMIT, cursor, includeDeleted: true });
      out.push(...page.items);
      cursor = page.cursor;
    } while (cursor);
    return out;
  }

  private indexQuery(indexName: string, prefix: string, pkValue: string, limit: number, cursor: string | undefined): QueryCommandInput {
    const pkAttr = `${prefix}pk`;
    const skAttr = `${prefix}sk`;
    return {
      TableName: this.tableName,
      IndexName: indexName,
      KeyConditionExpression: '#p = :p',
      ExpressionAttributeNames: { '#p': pkAttr },
      ExpressionAttributeValues: { ':p': pkValue },
      ScanIndexForward: false,
      Limit: limit,
      ExclusiveStartKey: decodeCursor(cursor, ['pk', 'sk', pkAttr, skAttr], { [pkAttr]: pkValue }),
    };
  }

  private async batchGetArchives(uuids: string[]): Promise<Map<string, ArchiveRecord>> {
    const out = new Map<string, ArchiveRecord>();
    // BatchGetItem takes at most 100 keys per call.
    for (let i = 0; i < uuids.length; i += 100) {
      let keys: Record<string, unknown>[] | undefined = [...new Set(uuids.slice(i, i + 100))].map((u) => ({ pk: archivePk(u), sk: ARCHIVE_SK }));
      for (let attempt = 0; keys && keys.length > 0 && attempt < 8; attempt++) {
        const r = await this.doc.send(new BatchGetCommand({ RequestItems: { [this.tableName]: { Keys: keys } } }));
        for (const item of r.Responses?.[this.tableName] ?? []) {
          const a = this.parseArchive(item);
          out.set(a.uuid, a);
        }
        keys = r.UnprocessedKeys?.[this.tableName]?.Keys as Record<string, unknown>[] | undefined;
        if (keys && keys.length > 0) await new Promise((res) => setTimeout(res, 20 * 2 ** attempt));
      }
      if (keys && keys.length > 0) throw new CatalogError('BatchGetItem kept returning unprocessed keys');
    }
    return out;
  }

  /** Non-deleted archives whose parent is `uuid`. */
  async listChildren(uuid: string, includeDeleted = false): Promise<ArchiveRecord[]> {
    const out: ArchiveRecord[] = [];
    let start: Record<string, unknown> | undefined;
    do {
      const r = await this.doc.send(
        new QueryCommand({
          TableName: this.tableName,
          IndexName: GSI.byParent,
          KeyConditionExpression: 'gsi3pk = :p',
          ExpressionAttributeValues: { ':p': `PARENT#${uuid}` },
          ExclusiveStartKey: start,
        }),
      );
      for (const i of r.Items ?? []) {
        const a = this.parseArchive(i);
        if (includeDeleted || a.status !== 'DELETED') out.push(a);
      }
      start = r.LastEvaluatedKey;
    } while (start);
    return out;
  }

  /**
   * The chain from `uuid` back to its full backup: [archive, parent, ...].
   * Bounded by `maxDepth` so a cyclic or hand-edited table cannot loop.
   */
  async getChain(uuid: string, maxDepth = 10_000): Promise<ArchiveRecord[]> {
    const chain: ArchiveRecord[] = [];
    const seen = new Set<string>();
    let cur: string | null = uuid;
    while (cur !== null) {
      if (seen.has(cur) || chain.length >= maxDepth) throw new CatalogError(`archive chain of ${uuid} loops or exceeds ${maxDepth}`);
      seen.add(cur);
      const a = await this.getArchive(cur);
      if (!a) {
        if (chain.length === 0) throw new NotFoundError(`archive ${uuid} not found`);
        throw new NotFoundError(`archive ${cur} (ancestor of ${uuid}) is not in the catalogue`);
      }
      chain.push(a);
      cur = a.parentUuid;
    }
    return chain;
  }

  /** Least-recently-verified first (never-verified first of all). */
  async verifyQueue(limit: number, cursor?: string): Promise<Page<ArchiveRecord>> {
    const input = this.indexQuery(GSI.verifyQueue, 'gsi4', 'VERIFY', clampLimit(limit), cursor);
    input.ScanIndexForward = true;
    const r = await this.doc.send(new QueryCommand(input));
    return { items: (r.Items ?? []).map((i) => this.parseArchive(i)), cursor: encodeCursor(r.LastEvaluatedKey) };
  }

  // ---- hosts ------------------------------------------------------------

  /**
   * Registers a host before any record of it is written, so a host is always
   * known (POST /restores checks) once one of its archives can be read.
   */
  private async registerHost(hostId: string): Promise<void> {
    // A rejected object outside any valid host segment names no host.
    if (!hostIdSchema.safeParse(hostId).success) return;
    const now = new Date().toISOString();
    await this.doc.send(
      new UpdateCommand({
        TableName: this.tableName,
        Key: { pk: `HOST#${hostId}`, sk: HOST_SK },
        UpdateExpression: 'SET hostId = :h, firstSeenAt = if_not_exists(firstSeenAt, :now), gsi1pk = :hosts, gsi1sk = :h, entity = :e',
        ExpressionAttributeValues: { ':h': hostId, ':now': now, ':hosts': 'HOSTS', ':e': 'host' },
      }),
    );
  }

  private async touchHost(hostId: string, archiveCreatedAt: string | undefined): Promise<void> {
    if (archiveCreatedAt === undefined || !hostIdSchema.safeParse(hostId).success) return;
    try {
      // Only ever moves forward: out-of-order indexing must not make a host look stale.
      await this.doc.send(
        new UpdateCommand({
          TableName: this.tableName,
          Key: { pk: `HOST#${hostId}`, sk: HOST_SK },
          UpdateExpression: 'SET lastArchiveAt = :t',
          ConditionExpression: 'attribute_not_exists(lastArchiveAt) OR lastArchiveAt < :t',
          ExpressionAttributeValues: { ':t': archiveCreatedAt },
        }),
      );
    } catch (err) {
      if (!isConditionFailure(err)) throw err;
    }
  }

  async listHosts(): Promise<HostRecord[]> {
    const out: HostRecord[] = [];
    let start: Record<string, unknown> | undefined;
    do {
      const r = await this.doc.send(
        new QueryCommand({
          TableName: this.tableName,
          IndexName: GSI.byHost,
          KeyConditionExpression: 'gsi1pk = :p',
          ExpressionAttributeValues: { ':p': 'HOSTS' },
          ExclusiveStartKey: start,
        }),
      );
      for (const i of r.Items ?? []) {
        const h = hostRecordSchema.safeParse(stripKeys(i));
        if (h.success) out.push(h.data);
      }
      start = r.LastEvaluatedKey;
    } while (start);
    return out;
  }

  // ---- jobs (restore and export) ----------------------------------------

  private parseJob<J extends AnyJob>(kind: JobKind<J>, item: Record<string, unknown>): J {
    const r = kind.schema.safeParse(stripKeys(item));
    if (!r.success) throw new CatalogError(`corrupt ${kind.noun} item ${String(item.pk)}: ${r.error.issues[0]?.message}`);
    return r.data;
  }

  async createJob<J extends AnyJob>(kind: JobKind<J>, job: J): Promise<void> {
    try {
      await this.doc.send(
        new PutCommand({
          TableName: this.tableName,
          Item: {
            ...job,
            pk: kind.pk(job.id),
            sk: kind.sk,
            entity: kind.noun,
            gsi1pk: kind.hostPk(job.hostId, job.status),
            gsi1sk: `${job.createdAt}#${job.id}`,
          },
          ConditionExpression: 'attribute_not_exists(pk)',
        }),
      );
    } catch (err) {
      if (isConditionFailure(err)) throw new ConflictError(`${kind.noun} job ${job.id} already exists`);
      throw err;
    }
  }

  async getJob<J extends AnyJob>(kind: JobKind<J>, id: string): Promise<J | null> {
    const r = await this.doc.send(new GetCommand({ TableName: this.tableName, Key: { pk: kind.pk(id), sk: kind.sk }, ConsistentRead: true }));
    return r.Item ? this.parseJob(kind, r.Item) : null;
  }

  async requireJob<J extends AnyJob>(kind: JobKind<J>, id: string): Promise<J> {
    const j = await this.getJob(kind, id);
    if (!j) throw new NotFoundError(`${kind.noun} job ${id} not found`);
    return j;
  }

  async listJobs<J extends AnyJob>(kind: JobKind<J>, hostId: string, status: RestoreStatus, limit?: number, cursor?: string): Promise<Page<J>> {
    const input = this.indexQuery(GSI.byHost, 'gsi1', kind.hostPk(hostId, status), clampLimit(limit), cursor);
    input.ScanIndexForward = true; // oldest first: jobs are served in request order
    const r = await this.doc.send(new QueryCommand(input));
    return { items: (r.Items ?? []).map((i) => this.parseJob(kind, i)), cursor: encodeCursor(r.LastEvaluatedKey) };
  }

  /**
   * Moves a job between states with one conditional update. When the
   * condition fails the job is re-read to tell "no such job" (404) from
   * "someone else changed it first" (409).
   */
  private async transition<J extends AnyJob>(
    kind: JobKind<J>,
    id: string,
    from: readonly RestoreStatus[],
    to: RestoreStatus,
    set: Record<string, unknown>,
    extraCondition?: { expr: string; values: Record<string, unknown> },
  ): Promise<J> {
    const job = await this.requireJob(kind, id);
    const now = new Date().toISOString();
    const fields: Record<string, unknown> = { ...set, status: to, updatedAt: now, gsi1pk: kind.hostPk(job.hostId, to) };
    const names: Record<string, string> = {};
    const values: Record<string, unknown> = {};
    const sets: string[] = [];
    Object.entries(fields).forEach(([k, v], i) => {
      names[`#f${i}`] = k;
      values[`:f${i}`] = v;
      sets.push(`#f${i} = :f${i}`);
    });
    const fromKeys = from.map((s, i) => {
      values[`:from${i}`] = s;
      return `:from${i}`;
    });
    names['#st'] = 'status';
    let condition = `attribute_exists(pk) AND #st IN (${fromKeys.join(', ')})`;
    if (extraCondition) {
      condition += ` AND ${extraCondition.expr}`;
      Object.assign(values, extraCondition.values);
    }
    try {
      const r = await this.doc.send(
        new UpdateCommand({
          TableName: this.tableName,
          Key: { pk: kind.pk(id), sk: kind.sk },
          UpdateExpression: `SET ${sets.join(', ')}`,
          ConditionExpression: condition,
          ExpressionAttributeNames: names,
          ExpressionAttributeValues: values,
          ReturnValues: 'ALL_NEW',
        }),
      );
      return this.parseJob(kind, r.Attributes ?? {});
    } catch (err) {
      if (!isConditionFailure(err)) throw err;
      const now2 = await this.requireJob(kind, id);
      throw new ConflictError(
        from.includes(now2.status)
          ? `${kind.noun} job ${id} is claimed by another agent`
          : `${kind.noun} job ${id} is ${now2.status}${now2.claimedBy ? ` (claimed by ${now2.claimedBy})` : ''}, expected ${from.join(' or ')}`,
      );
    }
  }

  /**
   * Exactly one concurrent claimer wins; the others get ConflictError. The
   * winner holds a lease of `leaseMs` that each report renews.
   */
  async claimJob<J extends AnyJob>(kind: JobKind<J>, id: string, agentId: string, leaseMs: number = DEFAULT_RESTORE_LEASE_MS): Promise<J> {
    const now = Date.now();
    return this.transition(kind, id, ['PENDING'], 'CLAIMED', {
      claimedBy: agentId,
      claimedAt: new Date(now).toISOString(),
      leaseExpiresAt: new Date(now + leaseMs).toISOString(),
    });
  }

  /** Only the claiming agent may report; each report renews its lease (and sets `fields`). */
  async reportJob<J extends AnyJob>(kind: JobKind<J>, id: string, fields: Record<string, unknown>, agentId: string, leaseMs: number = DEFAULT_RESTORE_LEASE_MS): Promise<J> {
    return this.transition(
      kind,
      id,
      ['CLAIMED', 'RUNNING'],
      'RUNNING',
      { ...fields, leaseExpiresAt: new Date(Date.now() + leaseMs).toISOString() },
      { expr: 'claimedBy = :agent', values: { ':agent': agentId } },
    );
  }

  /** Only the claiming agent may complete. */
  async completeJob<J extends AnyJob>(kind: JobKind<J>, id: string, ok: boolean, error: string | undefined, agentId: string): Promise<J> {
    return this.transition(
      kind,
      id,
      ['CLAIMED', 'RUNNING'],
      ok ? 'SUCCEEDED' : 'FAILED',
      { finishedAt: new Date().toISOString(), ...(error !== undefined ? { error } : {}) },
      { expr: 'claimedBy = :agent', values: { ':agent': agentId } },
    );
  }

  /**
   * A claimed job whose lease ran out becomes FAILED: its agent is gone
   * (crashed, cut off, or never reporting), and nobody must wait for it
   * forever. Evaluated whenever the job is read (GET, listings); a report
   * that reaches the job first renews the lease instead — the conditional
   * write decides which. Returns the job as it is now.
   */
  async expireJobLease<J extends AnyJob>(kind: JobKind<J>, job: J, now: number = Date.now()): Promise<J> {
    if (!(ACTIVE_RESTORE_STATUSES.includes(job.status) && job.status !== 'PENDING')) return job;
    if (job.leaseExpiresAt === undefined || Date.parse(job.leaseExpiresAt) >= now) return job;
    const nowIso = new Date(now).toISOString();
    const error = `agent lost: no report from ${job.claimedBy ?? 'the claiming agent'} since its lease expired at ${job.leaseExpiresAt}${kind.lostNote(job)}`;
    try {
      return await this.transition(kind, job.id, ['CLAIMED', 'RUNNING'], 'FAILED', { finishedAt: nowIso, error }, {
        expr: 'leaseExpiresAt < :now',
        values: { ':now': nowIso },
      });
    } catch (err) {
      if (err instanceof ConflictError) return this.requireJob(kind, job.id); // renewed or finished meanwhile
      throw err;
    }
  }

  async cancelJob<J extends AnyJob>(kind: JobKind<J>, id: string): Promise<J> {
    return this.transition(kind, id, ACTIVE_RESTORE_STATUSES, 'CANCELLED', { finishedAt: new Date().toISOString() });
  }

  // ---- restore jobs (the names the restore code and its tests use) --------

  createRestore(job: RestoreJob): Promise<void> {
    return this.createJob(RESTORE_JOBS, job);
  }
  requireRestore(id: string): Promise<RestoreJob> {
    return this.requireJob(RESTORE_JOBS, id);
  }
  listRestores(hostId: string, status: RestoreStatus, limit?: number, cursor?: string): Promise<Page<RestoreJob>> {
    return this.listJobs(RESTORE_JOBS, hostId, status, limit, cursor);
  }
  claimRestore(id: string, agentId: string, leaseMs?: number): Promise<RestoreJob> {
    return this.claimJob(RESTORE_JOBS, id, agentId, leaseMs);
  }
  reportProgress(id: string, progress: JobProgress, agentId: string, leaseMs?: number): Promise<RestoreJob> {
    return this.reportJob(RESTORE_JOBS, id, { progress }, agentId, leaseMs);
  }
  completeRestore(id: string, ok: boolean, error: string | undefined, agentId: string): Promise<RestoreJob> {
    return this.completeJob(RESTORE_JOBS, id, ok, error, agentId);
  }
  cancelRestore(id: string): Promise<RestoreJob> {
    return this.cancelJob(RESTORE_JOBS, id);
  }
}
