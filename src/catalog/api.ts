/**
 * The catalogue HTTP API as one function from an API Gateway HTTP API
 * (payload format 2.0) event to a structured result. lambda/api.ts exports
 * it as the Lambda handler; the embedded catalogue converts node:http
 * requests into the same events, so both run exactly this code.
 */
import type { APIGatewayProxyEventV2, APIGatewayProxyStructuredResultV2 } from 'aws-lambda';
import { randomUUID } from 'node:crypto';
import { DeleteObjectCommand, PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { ConflictError, CowstreamError, ForbiddenError, FormatError, NotFoundError, RestoreError, UsageError, describeError } from '../errors.js';
import { nullLogger, type Logger } from './log.js';
import {
  claimBodySchema,
  completeBodySchema,
  createExportBodySchema,
  createRestoreBodySchema,
  exportReportBodySchema,
  diskNameSchema,
  hostIdSchema,
  parseOrUsage,
  progressBodySchema,
  RESTORE_STATUSES,
  uuidSchema,
  type ArchiveRecord,
  type ExportJob,
  type RestoreJob,
  type RestoreStatus,
} from './records.js';
import { EXPORT_JOBS, RESTORE_JOBS, type AnyJob, type CatalogRepository, type JobKind } from './repository.js';
import { LOCAL_CALLER, requireHost, requireOperator, requireReader, type Caller, type CallerResolver } from './access.js';

/** Builds the JSON restore plan stored at `restore-plans/<id>.json` (src/restore/plan.ts). */
export type RestorePlanBuilder = (req: {
  restoreId: string;
  archive: ArchiveRecord;
  chain: ArchiveRecord[];
  devices?: string[];
}) => Promise<unknown>;

export interface ApiDeps {
  repo: CatalogRepository;
  s3: S3Client;
  bucket: string;
  buildPlan: RestorePlanBuilder;
  logger?: Logger;
  /** Who is calling (access.ts). Default: the embedded catalogue's LOCAL_CALLER. */
  resolveCaller?: CallerResolver;
  /** Lease of a claimed restore job, renewed by each progress report (default 5 min). */
  restoreLeaseMs?: number;
}

export type ApiEvent = APIGatewayProxyEventV2;
export type ApiResult = APIGatewayProxyStructuredResultV2;
export type ApiHandler = (event: ApiEvent) => Promise<ApiResult>;

export const RESTORE_PLAN_PREFIX = 'restore-plans/';
export const restorePlanKey = (id: string): string => `${RESTORE_PLAN_PREFIX}${id}.json`;

/** The largest request body we parse: every valid body is far smaller. */
export const MAX_BODY_BYTES = 64 * 1024;

interface Request {
  caller: Caller;
  params: string[];
  query: Record<string, string | undefined>;
  body: () => unknown;
}

type Route = { method: string; pattern: RegExp; run: (deps: ApiDeps, req: Request) => Promise<ApiResult> };

const ID = '([^/]+)';

function json(statusCode: number, body: unknown): ApiResult {
  return { statusCode, headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) };
}

function errorResult(statusCode: number, code: string, message: string): ApiResult {
  return json(statusCode, { error: { code, message } });
}

/** Percent-decodes a path segment; a malformed escape is the caller's mistake (400), not ours. */
function decodeSegment(value: string, what: string): string {
  try {
    return decodeURIComponent(value);
  } catch {
    throw new UsageError(`${what}: malformed percent-escape in "${value.slice(0, 100)}"`);
  }
}

function param(value: string, schema: typeof uuidSchema, what: string): string {
  return parseOrUsage(schema, decodeSegment(value, what), what);
}

/** A job the caller may see, its lease evaluated first (an expired one is FAILED). */
async function visibleJob<J extends AnyJob>(repo: CatalogRepository, kind: JobKind<J>, caller: Caller, rawId: string, what: string): Promise<J> {
  const job = await repo.requireJob(kind, param(rawId, uuidSchema, `${kind.noun} id`));
  requireReader(caller, job.hostId, what);
  return repo.expireJobLease(kind, job);
}

/** A job of the caller's own host (job operations are the host agent's alone). */
async function ownJob<J extends AnyJob>(repo: CatalogRepository, kind: JobKind<J>, caller: Caller, rawId: string, what: string): Promise<J> {
  const job = await repo.requireJob(kind, param(rawId, uuidSchema, `${kind.noun} id`));
  requireHost(caller, job.hostId, what);
  return job;
}

/**
 * The archive (and its chain) a restore or export job for `hostId` is about:
 * the host must be known, every archive of the chain readable, the devices
 * the archive's.
 */
async function jobArchive(repo: CatalogRepository, req: { hostId: string; archiveId: string; devices?: string[] | undefined }, verb: string): Promise<{ archive: ArchiveRecord; chain: ArchiveRecord[] }> {
  const hosts = await repo.listHosts();
  if (!hosts.some((h) => h.hostId === req.hostId)) {
    const known = hosts.map((h) => h.hostId).sort();
    throw new NotFoundError(`hostId: host "${req.hostId}" is not known to the catalogue; known hosts: ${known.length > 0 ? known.join(', ') : '(none)'}`);
  }
  const archive = await repo.requireArchive(req.archiveId);
  if (archive.status !== 'INDEXED' && archive.status !== 'VERIFIED') {
    throw new ConflictError(`archive ${archive.uuid} is ${archive.status}${archive.reason ? ` (${archive.reason})` : ''} and cannot be ${verb}`);
  }
  if (req.devices) {
    const names = new Set(archive.devices.map((d) => d.name));
    const unknown = req.devices.filter((d) => !names.has(d));
    if (unknown.length > 0) throw new UsageError(`devices: archive ${archive.uuid} has no device ${unknown.join(', ')}`);
  }
  const chain = await repo.getChain(archive.uuid);
  const broken = chain.find((a) => a.status !== 'INDEXED' && a.status !== 'VERIFIED');
  if (broken) throw new ConflictError(`archive ${broken.uuid} in the chain is ${broken.status}; the archive cannot be ${verb}`);
  return { archive, chain };
}

function optionalInt(value: string | undefined, name: string): number | undefined {
  if (value === undefined || value === '') return undefined;
  if (!/^\d{1,6}$/.test(value) || Number(value) < 1) throw new UsageError(`${name} must be a positive integer`);
  return Number(value);
}

/**
 * The routes every kind of job has: read one, list a host's by status, and
 * the agent's claim / report / complete, the operator's cancel. `report`
 * validates and applies a report body of the kind (it renews the lease).
 */
function jobRoutes<J extends AnyJob>(kind: JobKind<J>, plural: string, report: (deps: ApiDeps, job: J, body: unknown) => Promise<J>): Route[] {
  const n = kind.noun;
  return [
    {
      method: 'GET',
      pattern: new RegExp(`^/${plural}/${ID}$`),
      run: async ({ repo }, { caller, params }) => json(200, await visibleJob(repo, kind, caller, params[0]!, `read ${n} jobs`)),
    },
    {
      method: 'GET',
      pattern: new RegExp(`^/hosts/${ID}/${plural}$`),
      run: async ({ repo }, { caller, params, query }) => {
        const host = parseOrUsage(hostIdSchema, decodeSegment(params[0]!, 'host id'), 'host id');
        requireReader(caller, host, `list the ${n} jobs`);
        const status = (query.status ?? 'PENDING').toUpperCase();
        if (!(RESTORE_STATUSES as readonly string[]).includes(status)) {
          throw new UsageError(`status must be one of ${RESTORE_STATUSES.join(', ')}`);
        }
        const page = await repo.listJobs(kind, host, status as RestoreStatus, optionalInt(query.limit, 'limit'), query.cursor);
        // Jobs whose lease ran out are FAILED now; they leave a CLAIMED/RUNNING listing.
        const items = await Promise.all(page.items.map((j) => repo.expireJobLease(kind, j)));
        return json(200, { ...page, items: items.filter((j) => j.status === status) });
      },
    },
    {
      method: 'POST',
      pattern: new RegExp(`^/${plural}/${ID}/claim$`),
      run: async ({ repo, restoreLeaseMs }, { caller, params, body }) => {
        const job = await ownJob(repo, kind, caller, params[0]!, `claim ${n} jobs`);
        const { agentId } = parseOrUsage(claimBodySchema, body(), 'claim');
        return json(200, await repo.claimJob(kind, job.id, agentId, restoreLeaseMs));
      },
    },
    {
      method: 'POST',
      pattern: new RegExp(`^/${plural}/${ID}/progress$`),
      run: async (deps, { caller, params, body }) => {
        const job = await ownJob(deps.repo, kind, caller, params[0]!, `report progress on ${n} jobs`);
        return json(200, await report(deps, job, body()));
      },
    },
    {
      method: 'POST',
      pattern: new RegExp(`^/${plural}/${ID}/complete$`),
      run: async ({ repo }, { caller, params, body }) => {
        const job = await ownJob(repo, kind, caller, params[0]!, `complete ${n} jobs`);
        const c = parseOrUsage(completeBodySchema, body(), 'completion');
        if (!c.ok && !c.error) throw new UsageError('error: required when ok is false');
        return json(200, await repo.completeJob(kind, job.id, c.ok, c.error, c.agentId));
      },
    },
    {
      method: 'POST',
      pattern: new RegExp(`^/${plural}/${ID}/cancel$`),
      run: async ({ repo }, { caller, params }) => {
        requireOperator(caller, `cancel ${plural}`);
        return json(200, await repo.cancelJob(kind, param(params[0]!, uuidSchema, `${n} id`)));
      },
    },
  ];
}

const routes: Route[] = [
  {
    method: 'GET',
    pattern: /^\/archives$/,
    run: async ({ repo }, { caller, query }) => {
      requireOperator(caller, 'list archives');
      const hostId = query.host ? parseOrUsage(hostIdSchema, query.host, 'host') : undefined;
      const disk = query.disk ? parseOrUsage(diskNameSchema, query.disk, 'disk') : undefined;
      if (disk !== undefined && hostId === undefined) throw new UsageError('disk filter needs host');
      const page = await repo.listArchives({
        hostId,
        disk,
        limit: optionalInt(query.limit, 'limit'),
        cursor: query.cursor,
        includeDeleted: query.includeDeleted === 'true',
      });
      return json(200, page);
    },
  },
  {
    method: 'GET',
    pattern: new RegExp(`^/archives/${ID}$`),
    run: async ({ repo }, { caller, params }) => {
      requireOperator(caller, 'read archive records');
      return json(200, await repo.requireArchive(param(params[0]!, uuidSchema, 'archive id')));
    },
  },
  {
    method: 'GET',
    pattern: new RegExp(`^/archives/${ID}/chain$`),
    run: async ({ repo }, { caller, params }) => {
      requireOperator(caller, 'read archive chains');
      return json(200, { items: await repo.getChain(param(params[0]!, uuidSchema, 'archive id')) });
    },
  },
  {
    method: 'DELETE',
    pattern: new RegExp(`^/archives/${ID}$`),
    run: async ({ repo, s3 }, { caller, params }) => {
      requireOperator(caller, 'delete archives');
      const id = param(params[0]!, uuidSchema, 'archive id');
      const archive = await repo.requireArchive(id);
      if (archive.status === 'DELETED') return json(200, archive);
      const children = await repo.listChildren(id);
      if (children.length > 0) {
        throw new ConflictError(`archive ${id} is the parent of ${children.map((c) => c.uuid).join(', ')}; delete those first`);
      }
      await s3.send(new DeleteObjectCommand({ Bucket: archive.bucket, Key: archive.key }));
      await repo.markDeleted(id, undefined, 'deleted through the catalogue API');
      return json(200, await repo.requireArchive(id));
    },
  },
  {
    method: 'POST',
    pattern: /^\/restores$/,
    run: async (deps, { caller, body }) => {
      requireOperator(caller, 'request restores');
      const req = parseOrUsage(createRestoreBodySchema, body(), 'restore request');
      const { archive, chain } = await jobArchive(deps.repo, req, 'restored');
      const id = randomUUID();
      let plan: unknown;
      try {
        plan = await deps.buildPlan({ restoreId: id, archive, chain, devices: req.devices });
      } catch (err) {
        // A chain that cannot be planned (missing parent, damaged index) is a state problem, not a server fault.
        if (err instanceof RestoreError || err instanceof FormatError || err instanceof NotFoundError) {
          throw new ConflictError(`cannot plan the restore of ${archive.uuid}: ${err.message}`, { cause: err });
        }
        throw err;
      }
      const planKey = restorePlanKey(id);
      await deps.s3.send(
        new PutObjectCommand({ Bucket: deps.bucket, Key: planKey, Body: JSON.stringify(plan), ContentType: 'application/json' }),
      );
      const now = new Date().toISOString();
      const job: RestoreJob = {
        id,
        archiveId: archive.uuid,
        hostId: req.hostId,
        ...(req.devices ? { devices: req.devices } : {}),
        target: req.target,
        status: 'PENDING',
        planKey,
        progress: { bytesDone: 0, bytesTotal: 0 },
        createdAt: now,
        updatedAt: now,
      };
      await deps.repo.createRestore(job);
      return json(202, { restoreId: id });
    },
  },
  {
    method: 'GET',
    pattern: /^\/hosts$/,
    run: async ({ repo }, { caller }) => {
      requireOperator(caller, 'list hosts');
      return json(200, { items: await repo.listHosts() });
    },
  },
  ...jobRoutes(RESTORE_JOBS, 'restores', async ({ repo, restoreLeaseMs }, job, raw) => {
    const p = parseOrUsage(progressBodySchema, raw, 'progress');
    if (p.bytesDone > p.bytesTotal) throw new UsageError('bytesDone: must not exceed bytesTotal');
    return repo.reportProgress(job.id, { bytesDone: p.bytesDone, bytesTotal: p.bytesTotal }, p.agentId, restoreLeaseMs);
  }),
  {
    method: 'POST',
    pattern: /^\/exports$/,
    run: async ({ repo }, { caller, body }) => {
      requireOperator(caller, 'request exports');
      const req = parseOrUsage(createExportBodySchema, body(), 'export request');
      const { archive } = await jobArchive(repo, req, 'served');
      const now = new Date().toISOString();
      const job: ExportJob = {
        id: randomUUID(),
        kind: 'export',
        archiveId: archive.uuid,
        hostId: req.hostId,
        ...(req.devices ? { devices: req.devices } : {}),
        locator: { bucket: archive.bucket, key: archive.key },
        ...(req.overlay !== undefined ? { overlay: req.overlay } : {}),
        ...(req.cache ? { cache: req.cache } : {}),
        status: 'PENDING',
        createdAt: now,
        updatedAt: now,
      };
      await repo.createJob(EXPORT_JOBS, job);
      return json(202, { exportId: job.id });
    },
  },
  {
    method: 'DELETE',
    pattern: new RegExp(`^/exports/${ID}$`),
    run: async ({ repo }, { caller, params }) => {
      requireOperator(caller, 'end exports');
      return json(200, await repo.cancelJob(EXPORT_JOBS, param(params[0]!, uuidSchema, 'export id')));
    },
  },
  ...jobRoutes(EXPORT_JOBS, 'exports', async ({ repo, restoreLeaseMs }, job, raw) => {
    const r = parseOrUsage(exportReportBodySchema, raw, 'export report');
    return repo.reportJob(EXPORT_JOBS, job.id, r.served ? { served: r.served } : {}, r.agentId, restoreLeaseMs);
  }),
];

/** Method and path pattern of every route (the deployed API Gateway routes must cover exactly these). */
export function apiRoutes(): Array<{ method: string; pattern: RegExp }> {
  return routes.map((r) => ({ method: r.method, pattern: r.pattern }));
}

/** The request path without the stage prefix API Gateway adds for named stages. */
function routePath(event: ApiEvent): string {
  let path = event.rawPath || '/';
  const stage = event.requestContext?.stage;
  if (stage && stage !== '$default' && (path === `/${stage}` || path.startsWith(`/${stage}/`))) path = path.slice(stage.length + 1) || '/';
  return path.length > 1 ? path.replace(/\/+$/, '') : path;
}

function parseBody(event: ApiEvent): unknown {
  if (event.body === undefined || event.body === null || event.body === '') throw new UsageError('a JSON body is required');
  const raw = event.isBase64Encoded ? Buffer.from(event.body, 'base64') : Buffer.from(event.body, 'utf8');
  if (raw.length > MAX_BODY_BYTES) throw new UsageError(`body larger than ${MAX_BODY_BYTES} bytes`);
  try {
    return JSON.parse(raw.toString('utf8'));
  } catch (err) {
    throw new UsageError(`body is not valid JSON: ${(err as Error).message}`);
  }
}

/** Maps the error hierarchy to HTTP: 400 usage, 403 forbidden, 404 not found, 409 conflict, 500 else. */
export function errorToResult(err: unknown, logger: Logger): ApiResult {
  if (err instanceof UsageError) return errorResult(400, err.code, err.message);
  if (err instanceof ForbiddenError) return errorResult(403, err.code, err.message);
  if (err instanceof NotFoundError) return errorResult(404, err.code, err.message);
  if (err instanceof ConflictError) return errorResult(409, err.code, err.message);
  logger.error('request failed', { error: describeError(err) });
  const code = err instanceof CowstreamError ? err.code : 'INTERNAL';
  return errorResult(500, code, err instanceof CowstreamError ? err.message : 'internal error');
}

/**
 * Successful reads are routine (an agent polls for restore jobs every few
 * seconds): debug. Writes and failures stay at info.
 */
function logRequest(logger: Logger, method: string, fields: { method: string; path: string; status: number | undefined }): void {
  if (method === 'GET' && (fields.status ?? 200) < 400) logger.debug('request', fields);
  else logger.info('request', fields);
}

export function createApiHandler(deps: ApiDeps): ApiHandler {
  const logger = deps.logger ?? nullLogger;
  return async (event: ApiEvent): Promise<ApiResult> => {
    const method = (event.requestContext?.http?.method ?? 'GET').toUpperCase();
    const path = routePath(event);
    let methodMismatch = false;
    try {
      for (const route of routes) {
        const m = route.pattern.exec(path);
        if (!m) continue;
        if (route.method !== method) {
          methodMismatch = true;
          continue;
        }
        const query: Record<string, string | undefined> = { ...(event.queryStringParameters ?? {}) };
        let parsed: { value: unknown } | undefined;
        const caller = (deps.resolveCaller ?? (() => LOCAL_CALLER))(event);
        const result = await route.run(deps, {
          caller,
          params: m.slice(1),
          query,
          body: () => (parsed ??= { value: parseBody(event) }).value,
        });
        logRequest(logger, method, { method, path, status: result.statusCode });
        return result;
      }
    } catch (err) {
      const result = errorToResult(err, logger);
      logger.info('request', { method, path, status: result.statusCode, error: describeError(err) });
      return result;
    }
    if (methodMismatch) return errorResult(405, 'METHOD_NOT_ALLOWED', `${method} is not allowed on ${path}`);
    return errorResult(404, 'NOT_FOUND', `no route ${method} ${path}`);
  };
}
