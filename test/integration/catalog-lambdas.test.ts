/**
 * The Lambda handlers themselves (lambda/*.ts), configured only through the
 * environment like in AWS, pointed at dynalite and s3rver: indexer fed with
 * the S3 events s3rver emitted, API with a named-stage payload 2.0 event,
 * prune (dry run, then for real), verify, and the freshness metric.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HeadObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import type { S3Event } from 'aws-lambda';
import type { CloudWatchClient } from '@aws-sdk/client-cloudwatch';
import { ZstdPool } from '../../src/codec/zstd-pool.js';
import { CLUSTER_SIZE } from '../../src/format/constants.js';
import type { EmbeddedS3 } from '../../src/store/embedded-s3.js';
import type { CatalogRepository } from '../../src/catalog/repository.js';
import { apiEvent, startLambdaPeers, type LambdaPeers } from '../helpers/lambda-peers.js';
import { computeFreshness, publishFreshness, FRESHNESS_METRIC } from '../../src/catalog/freshness.js';
import { buildChain, type ChainStep } from '../helpers/s3-chain-fixture.js';

let peers: LambdaPeers;
let s3: EmbeddedS3;
let repo: CatalogRepository;
let s3Client: S3Client;
let pool: ZstdPool;
let chainA: ChainStep[];
let chainB: ChainStep[];
let events: S3Event[];

beforeAll(async () => {
  peers = await startLambdaPeers({ ARCHIVE_PREFIX: 'site1', CALLER_ROLES: JSON.stringify({ operators: ['AROAOPERATOR'], hosts: [] }) });
  ({ s3, repo, s3Client, events } = peers);
  pool = new ZstdPool({ workers: 1 });
  const devices = [{ id: 0, name: 'vda', size: 6 * CLUSTER_SIZE }];
  chainA = await buildChain({ client: s3Client, bucket: s3.bucket, prefix: 'site1', hostId: 'lh', devices, incrementals: 1, compressor: pool, seed: 1 });
  chainB = await buildChain({ client: s3Client, bucket: s3.bucket, prefix: 'site1', hostId: 'lh', devices, incrementals: 1, compressor: pool, seed: 2 });
});

afterAll(async () => {
  await pool?.close();
  await peers?.close();
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
    const operator = { userId: 'AROAOPERATOR:ops', userArn: 'arn:aws:sts::123456789012:assumed-role/Operator/ops' };
    const list = await handler(apiEvent('GET', '/archives?host=lh&limit=10', undefined, operator));
    expect(list.statusCode).toBe(200);
    expect(JSON.parse(list.body!).items).toHaveLength(4);
    const created = await handler(apiEvent('POST', '/restores', { archiveId: chainB[1]!.uuid, hostId: 'lh', target: { path: '/restore/x' } }, operator));
    expect(created.statusCode).toBe(202);
    const { restoreId } = JSON.parse(created.body!);
    const plan = await s3Client.send(new HeadObjectCommand({ Bucket: s3.bucket, Key: `restore-plans/${restoreId}.json` }));
    expect(plan.ContentLength).toBeGreaterThan(0);
    const bad = await handler(apiEvent('POST', '/restores', { archiveId: 'x' }, operator));
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
