/**
 * Restore of a full + 5-incremental chain written with ArchiveWriter through
 * the S3 sink into s3rver: every step restores to exactly the disk at that
 * backup, zero runs are holes, faults on the way back are retried, damage is
 * named by cluster, and bad refs/buckets/credentials give clear errors.
 */
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GetObjectCommand, PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ZstdPool } from '../../src/codec/zstd-pool.js';
import { ChecksumError, ConflictError, NotFoundError } from '../../src/errors.js';
import { CLUSTER_SIZE } from '../../src/format/constants.js';
import { planRestore } from '../../src/restore/plan.js';
import { resolveChain } from '../../src/restore/chain.js';
import { restoreArchive } from '../../src/restore/engine.js';
import { buildRestorePlan, parentLocator, resolveRef, sourceOpener, type ArchiveContext } from '../../src/restore/locate.js';
import { createS3Client } from '../../src/store/s3-client.js';
import { StoreAccessError } from '../../src/store/errors.js';
import { buildChain, type ChainStep } from '../helpers/s3-chain-fixture.js';
import { S3FaultProxy } from '../helpers/s3-fault-proxy.js';
import { startS3rver, type TestS3Server } from '../helpers/s3-servers.js';

const devices = [
  { id: 0, name: 'vda', size: 6 * 1024 * 1024 + 12345 },
  { id: 3, name: 'vdb', size: 2 * 1024 * 1024 },
];

describe('restore of an incremental chain from S3', () => {
  let server: TestS3Server;
  let client: S3Client;
  let pool: ZstdPool;
  let steps: ChainStep[];
  let ctx: ArchiveContext;
  let work: string;

  beforeAll(async () => {
    work = mkdtempSync(join(tmpdir(), 'cowstream-restore-'));
    server = await startS3rver('backups');
    client = server.client();
    pool = new ZstdPool({ workers: 2 });
    steps = await buildChain({ client, bucket: 'backups', prefix: 'site1', hostId: 'host-a', devices, incrementals: 5, compressor: pool });
    ctx = { store: server.storeConfig('site1'), client };
  }, 60_000);

  afterAll(async () => {
    await pool?.close();
    await server?.close();
    rmSync(work, { recursive: true, force: true });
  });

  const restoreTo = async (ref: string, dir: string, extra: Partial<Parameters<typeof restoreArchive>[0]> = {}, c: ArchiveContext = ctx) => {
    const plan = await buildRestorePlan(ref, c);
    return restoreArchive({ plan, openSource: sourceOpener(c), target: dir, compressor: pool, parallel: 4, ...extra });
  };

  const expectDisks = (dir: string, step: ChainStep): void => {
    for (const d of devices) {
      const got = readFileSync(join(dir, `${d.name}.raw`));
      expect(got.length).toBe(d.size);
      expect(got.equals(step.disks.get(d.name)!)).toBe(true);
    }
  };

  it('restores the newest incremental (by UUID) to the disk at the last backup', async () => {
    const last = steps[steps.length - 1]!;
    expect(steps).toHaveLength(6);
    // the incrementals really are small: only changed clusters
    expect(steps.slice(1).every((s) => s.changedClusters < 40)).toBe(true);
    const dir = join(work, 'last');
    const res = await restoreTo(last.uuid, dir);
    expect(res.chainLength).toBe(6);
    expectDisks(dir, last);
    // the final state differs from the full backup: the chain mattered
    expect(last.disks.get('vda')!.equals(steps[0]!.disks.get('vda')!)).toBe(false);
    // zero runs are holes: the sparse file allocates less than its size
    const st = statSync(join(dir, 'vda.raw'));
    expect(st.blocks * 512).toBeLessThan(st.size);
  });

  it('restores every intermediate step, by S3 URI and by key', async () => {
    for (const [i, step] of steps.entries()) {
      const dir = join(work, `step${i}`);
      const ref = i % 2 === 0 ? `s3://backups/${step.key}` : step.key;
      await restoreTo(ref, dir, { parallel: 1 + (i % 3) });
      expectDisks(dir, step);
    }
  });

  it('restores one device to a file; refuses to overwrite without --force', async () => {
    const last = steps[steps.length - 1]!;
    const file = join(work, 'single.img');
    writeFileSync(file, Buffer.alloc(100, 7));
    await expect(restoreTo(last.uuid, file, { devices: ['vdb'] })).rejects.toThrow(ConflictError);
    await restoreTo(last.uuid, file, { devices: ['vdb'], force: true, verify: true });
    expect(readFileSync(file).equals(last.disks.get('vdb')!)).toBe(true);
  });

  it('retries S3 faults during restore and stays byte-identical', async () => {
    const proxy = await S3FaultProxy.start(server.endpoint);
    const pc = createS3Client({ ...server.storeConfig('site1'), endpoint: proxy.endpoint }, { maxAttempts: 4 });
    try {
      proxy.addRule({ op: 'GetObject', nth: [2, 9], action: { status: 503 } });
      proxy.addRule({ op: 'GetObject', nth: [5], action: { status: 500 } });
      proxy.addRule({ op: 'GetObject', nth: [7], action: { reset: true } });
      proxy.addRule({ op: 'GetObject', nth: [11, 14], action: { cutBodyAfter: 1000 } });
      proxy.addRule({ op: 'HeadObject', nth: [3], action: { status: 503 } });
      const dir = join(work, 'faulty');
      const last = steps[steps.length - 1]!;
      await restoreTo(last.uuid, dir, { parallel: 3 }, { store: server.storeConfig('site1', proxy.endpoint), client: pc });
      expectDisks(dir, last);
      const kinds = new Set(proxy.injected.map((f) => f.action.split(' ')[0]));
      expect(kinds).toEqual(new Set(['status', 'reset', 'cut']));
    } finally {
      pc.destroy();
      await proxy.close();
    }
  });

  it('names the damaged clusters of a corrupted extent; --verify collects all of them', async () => {
    const full = steps[0]!;
    const obj = await client.send(new GetObjectCommand({ Bucket: 'backups', Key: full.key }));
    const bytes = Buffer.from(await obj.Body!.transformToByteArray());
    const chain = await resolveChain({ kind: 's3', bucket: 'backups', key: full.key }, { openSource: sourceOpener(ctx), locateParent: parentLocator(ctx) });
    const plan = planRestore(chain);
    // corrupt the payload of two extents (middle byte)
    const victims = plan.ranges.flatMap((r) => r.extents).slice(0, 2);
    expect(victims).toHaveLength(2);
    for (const ex of victims) bytes[ex.offset + Math.floor(ex.length * 0.75)]! ^= 0xff;
    const badKey = `site1/archives/host-corrupt/${full.uuid}.cwa`;
    await client.send(new PutObjectCommand({ Bucket: 'backups', Key: badKey, Body: bytes }));

    const dir1 = join(work, 'bad1');
    const err1 = (await restoreTo(`s3://backups/${badKey}`, dir1).catch((e: unknown) => e)) as Error;
    expect(err1).toBeInstanceOf(ChecksumError);
    expect(err1.message).toMatch(/affected clusters: (vda|vdb):\d+-\d+/);
    // the half-written files of a failed restore are removed
    expect(() => statSync(join(dir1, 'vda.raw'))).toThrow();

    const err2 = (await restoreTo(`s3://backups/${badKey}`, join(work, 'bad2'), { verify: true }).catch((e: unknown) => e)) as Error;
    expect(err2).toBeInstanceOf(ChecksumError);
    expect(err2.message).toMatch(/2 damaged extent/);
    for (const ex of victims) {
      const [pi, , s, c] = ex.runs[0]!;
      expect(err2.message).toContain(`${plan.devices[pi]!.name}:${s}-${s + c - 1}`);
    }
  });

  it('gives clear errors for an unknown ref, a missing bucket and bad credentials', async () => {
    await expect(resolveRef('0190aaaa-bbbb-7ccc-8ddd-eeeeeeeeeeee', ctx)).rejects.toThrow(NotFoundError);
    await expect(resolveRef('0190aaaa-bbbb-7ccc-8ddd-eeeeeeeeeeee', ctx)).rejects.toThrow(/not found under s3:\/\/backups\/site1\/archives\//);
    await expect(resolveRef('/nonexistent/x.cwa', ctx)).rejects.toThrow(/does not exist/);
    const noBucket: ArchiveContext = { store: { ...server.storeConfig('site1'), bucket: 'missing-bucket' }, client };
    await expect(resolveRef(steps[0]!.uuid, noBucket)).rejects.toThrow(/bucket "missing-bucket" does not exist/);
    const badCreds = createS3Client({ ...server.storeConfig('site1'), credentials: { accessKeyId: 'WRONG', secretAccessKey: 'nope' } });
    try {
      const err = (await resolveRef(steps[0]!.uuid, { store: server.storeConfig('site1'), client: badCreds }).catch((e: unknown) => e)) as Error;
      expect(err).toBeInstanceOf(StoreAccessError);
      expect(err.message).toMatch(/denied.*credentials/);
    } finally {
      badCreds.destroy();
    }
    expect(CLUSTER_SIZE).toBe(65536);
  });
});
