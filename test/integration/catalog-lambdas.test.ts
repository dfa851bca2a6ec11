/**
 * The Lambda handlers themselves (lambda/*.ts), configured only through the
 * environment like in AWS, pointed at dynalite and s3rver: indexer fed with
 * the S3 events s3rver emitted, API with a named-stage payload 2.0 event,
 * prune (dry run, then for real), verify, and the freshness metric.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { HeadObjectCommand, S3Client } from '@aws-sdk/client-s3';
import type { APIGatewayProxyEventV2, S3Event } from 'aws-lambda';
import type { CloudWatchClient } from '@aws-sdk/client-cloudwatch';
import { ZstdPool } from '../../src/codec/zstd-pool.js';
import { CLUSTER_SIZE } from '../../src/format/constants.js';
import { startEmbeddedS3, type EmbeddedS3 } from '../../src/store/embedded-s3.js';
import { startDynalite, type RunningDynalite } from '../../src/catalog/dynalite.js';
import { createDocumentClient, ensureCatalogTable } from '../../src/catalog/table.js';
import { CatalogRepository } from '../../src/catalog/repository.js';
import { computeFreshness, publishFreshness, FRESHNESS_METRIC } from '../../src/catalog/freshness.js';
import { buildChain, type ChainStep } from '../helpers/s3-chain-fixture.js';

const ENV_KEYS = ['TABLE_NAME', 'BUCKET', 'DYNAMODB_ENDPOINT', 'S3_ENDPOINT', 'AWS_REGION', 'AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY', 'RETENTION', 'DRY_RUN', 'LOG_LEVEL'];
const savedEnv = Object.fromEntries(ENV_KEYS.map((k) => [k, process.env[k]]));

let dir: string;
let s3: EmbeddedS3;
let dyn: RunningDynalite;
let repo: CatalogRepository;
let s3Client: S3Client;
let pool: ZstdPool;
let chainA: ChainStep[];
let chainB: ChainStep[];
const events: S3Event[] = [];

function apiEvent(method: string, path: string, body?: unknown): APIGatewayProxyEventV2 {
  return {
    version: '2.0',
    routeKey: '$default',
    rawPath: `/prod${path.split('?')[0]}`,
    rawQueryString: path.split('?')[1] ?? '',
    headers: {},
    queryStringParameters: Object.fromEntries(new URLSearchParams(path.split('?')[1] ?? '')),
    requestContext: { http: { method, path, protocol: 'HTTP/1.1', sourceIp: '1.2.3.4', userAgent: 't' }, stage: 'prod' } as APIGatewayProxyEventV2['requestContext'],
    ...(body !== undefined ? { body: Buffer.from(JSON.stringify(body)).toString('base64'), isBase64Encoded: true } : { isBase64Encoded: false }),
  };
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'cowstream-lambdas-'));
  s3 = await startEmbeddedS3({ dir: join(dir, 's3') });
  s3.onEvent((e) => events.push(e as unknown as S3Event));
  dyn = await startDynalite();
  Object.assign(process.env, {
    TABLE_NAME: 'catalog',
    BUCKET: s3.bucket,
    DYNAMODB_ENDPOINT: dyn.endpoint,
    S3_ENDPOINT: s3.endpoint,
    AWS_REGION: 'us-east-1',
    AWS_ACCESS_KEY_ID: s3.credentials.accessKeyId,
    AWS_SECRET_ACCESS_KEY: s3.credentials.secretAccessKey,
    LOG_LEVEL: 'ERROR',
  });
  const { client, doc } = createDocumentClient({ endpoint: dyn.endpoint, credentials: s3.credentials });
  await ensureCatalogTable(client, 'catalog');
  repo = new CatalogRepository(doc, 'catalog');
  s3Client = new S3Client({ endpoint: s3.endpoint, region: 'us-east-1', forcePathStyle: true, credentials: s3.credentials });
  pool = new ZstdPool({ workers: 1 });
  const devices = [{ id: 0, name: 'vda', size: 6 * CLUSTER_SIZE }];
  chainA = await buildChain({ client: s3Client, bucket: s3.bucket, prefix: 'site1', hostId: 'lh', devices, incrementals: 1, compressor: pool, seed: 1 });
  chainB = await buildChain({ client: s3Client, bucket: s3.bucket, prefix: 'site1', hostId: 'lh', devices, incrementals: 1, compressor: pool, seed: 2 });
});

afterAll(async () => {
  s3Client?.destroy();
  await pool?.close();
  await dyn?.close();
  await s3?.close();
  for (const k of ENV_KEYS) {
    if (savedEnv[k] === undefined) delete process.env[k];
    else process.env[k] = savedEnv[k];
  }
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('lambda handlers', () => {
  it('indexer.handler indexes the S3 events s3rver emitted (batched), idempotently', async () => {
    const { handler } = await import('../../lambda/indexer.js');
    const batch: S3Event = { Records: events.flatMap((e) => e.Records) };
    expect(batch.Records.length).toBeGreaterThanOrEqual(4);
    const r1 = await handler(batch);
    expect(r1.results.filter((r) => r.action === 'created')).toHaveLength(4);
    const r2 = await handler(batch); // re-delivery
    expect(r2.results.every((r) => r.action === 'unchanged')).toBe(true);
  });

  it('api.handler serves a named-stage payload 2.0 event and builds restore plans', async () => {
    const { handler } = await import('../../lambda/api.js');
    const list = await handler(apiEvent('GET', '/archives?host=lh&limit=10'));
    expect(list.statusCode).toBe(200);
    expect(JSON.parse(list.body!).items).toHaveLength(4);
    const created = await handler(apiEvent('POST', '/restores', { archiveId: chainB[1]!.uuid, hostId: 'lh', target: { path: '/restore/x' } }));
    expect(created.statusCode).toBe(202);
    const { restoreId } = JSON.parse(created.body!);
    const plan = await s3Client.send(new HeadObjectCommand({ Bucket: s3.bucket, Key: `restore-plans/${restoreId}.json` }));
    expect(plan.ContentLength).toBeGreaterThan(0);
    const bad = await handler(apiEvent('POST', '/restores', { archiveId: 'x' }));
    expect(bad.statusCode).toBe(400);
    expect(JSON.parse(bad.body!).error.code).toBe('USAGE');
  });

  it('prune.handler: dry run reports, the real run deletes the old chain child-first and keeps the kept chain whole', async () => {
    const { handler } = await import('../../lambda/prune.js');
    process.env.RETENTION = JSON.stringify({ keepLast: 1 });
    process.env.DRY_RUN = 'true';
    const dry = await handler({});
    expect(dry.deleted).toEqual([]);
    expect(dry.wouldDelete.map((d) => d.uuid)).toEqual([chainA[1]!.uuid, chainA[0]!.uuid]);
    expect((await repo.getArchive(chainA[0]!.uuid))!.status).toBe('INDEXED');
    const real = await handler({ dryRun: false });
    expect(real.deleted.map((d) => d.uuid)).toEqual([chainA[1]!.uuid, chainA[0]!.uuid]);
    for (const s of chainA) {
      expect((await repo.getArchive(s.uuid))!.status).toBe('DELETED');
      await expect(s3Client.send(new HeadObjectCommand({ Bucket: s3.bucket, Key: s.key }))).rejects.toThrow();
    }
    for (const s of chainB) expect((await repo.getArchive(s.uuid))!.status).toBe('INDEXED');
    process.env.RETENTION = '{"keepLast": -3}';
    await expect(handler({})).rejects.toThrow(/retention/);
  });

  it('verify.handler verifies the remaining archives', async () => {
    const { handler } = await import('../../lambda/verify.js');
    const report = await handler({});
    expect(report.checked.map((c) => c.uuid).sort()).toEqual(chainB.map((s) => s.uuid).sort());
    expect(report.checked.every((c) => c.ok)).toBe(true);
    for (const s of chainB) expect((await repo.getArchive(s.uuid))!.status).toBe('VERIFIED');
  });

  it('freshness: age of the newest usable archive per host, published as ArchivesLastCreatedAgeHours', async () => {
    const now = Date.now() + 5 * 3_600_000;
    const items = await computeFreshness(repo, ['never-backed-up'], now);
    const lh = items.find((i) => i.hostId === 'lh')!;
    expect(lh.ageHours).toBeGreaterThanOrEqual(4.9);
    expect(lh.ageHours).toBeLessThan(5.5);
    expect(items.find((i) => i.hostId === 'never-backed-up')!.ageHours).toBeNull();
    // CloudWatch is real AWS: the only thing stubbed here is its client.
    const sent: any[] = [];
    const cw = { send: async (cmd: { input: unknown }) => sent.push(cmd.input) } as unknown as CloudWatchClient;
    expect(await publishFreshness(cw, 'Cowstream', items)).toBe(1);
    expect(sent[0].Namespace).toBe('Cowstream');
    expect(sent[0].MetricData[0]).toMatchObject({ MetricName: FRESHNESS_METRIC, Dimensions: [{ Name: 'HostId', Value: 'lh' }], Value: lh.ageHours });
  });
});
