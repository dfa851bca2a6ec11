/**
 * `snapshots` and `forget` straight from a bucket, on both real S3 peers:
 * what a listing reads (counted at a proxy), the cache, damaged and foreign
 * objects, every keep rule over chains, dry runs, and refused deletes.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { CopyObjectCommand, GetObjectCommand, ListObjectsV2Command, PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { v7 as uuidv7 } from 'uuid';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { listBucketArchives } from '../../src/catalog/bucket-listing.js';
import { forget } from '../../src/catalog/forget.js';
import { ListingCache } from '../../src/catalog/listing-cache.js';
import { CLUSTER_SIZE } from '../../src/format/constants.js';
import { ArchiveWriter } from '../../src/format/writer.js';
import { archiveKey } from '../../src/store/config.js';
import { S3ArchiveSink } from '../../src/store/s3-sink.js';
import { TestZstdCompressor } from '../helpers/format-compressor.js';
import { S3FaultProxy } from '../helpers/s3-fault-proxy.js';
import { startFauxqs, startS3rver, type TestS3Server } from '../helpers/s3-servers.js';

const run = promisify(execFile);
const CLI = resolve(import.meta.dirname, '../../bin/cowstream.js');

interface Made {
  uuid: string;
  key: string;
}

async function makeArchive(client: S3Client, bucket: string, prefix: string, o: { host: string; at: string; parent?: Made; disk?: string }): Promise<Made> {
  const uuid = uuidv7();
  const key = archiveKey(prefix, o.host, uuid);
  const output = new S3ArchiveSink({ client, bucket, key });
  const w = await ArchiveWriter.create({
    hostId: o.host,
    devices: [{ id: 0, name: o.disk ?? 'vda', size: 4 * CLUSTER_SIZE }],
    parentUuid: o.parent?.uuid ?? null,
    uuid,
    createdAt: Date.parse(o.at),
    compressor: new TestZstdCompressor(),
    output,
  });
  for (let c = 0; c < 4; c++) await w.writeCluster(0, c, c === 1 ? Buffer.alloc(CLUSTER_SIZE, uuid.charCodeAt(30)) : Buffer.alloc(CLUSTER_SIZE));
  await w.finish();
  return { uuid, key };
}

async function keys(client: S3Client, bucket: string): Promise<string[]> {
  const res = await client.send(new ListObjectsV2Command({ Bucket: bucket }));
  return (res.Contents ?? []).map((c) => c.Key!).sort();
}

function suite(name: string, start: () => Promise<TestS3Server>): void {
  describe(`bucket listing and forget (${name})`, () => {
    let server: TestS3Server;
    let client: S3Client;
    let cacheDir: string;
    beforeAll(async () => {
      server = await start();
      client = server.client();
      cacheDir = await mkdtemp(join(tmpdir(), 'cowstream-cache-'));
    });
    afterAll(async () => {
      await server?.close();
      await rm(cacheDir, { recursive: true, force: true });
    });

    it('reads only footers and headers, caches by key + ETag, and lists damaged and foreign objects', async () => {
      const prefix = 'list';
      const full = await makeArchive(client, server.bucket, prefix, { host: 'h1', at: '2026-03-01T10:00:00Z' });
      const inc1 = await makeArchive(client, server.bucket, prefix, { host: 'h1', at: '2026-03-02T10:00:00Z', parent: full });
      const inc2 = await makeArchive(client, server.bucket, prefix, { host: 'h1', at: '2026-03-03T10:00:00Z', parent: inc1 });
      const other = await makeArchive(client, server.bucket, prefix, { host: 'h2', at: '2026-03-01T11:00:00Z', disk: 'vdb' });
      // Damage: a truncated copy, a copy under another host's prefix, a nested key.
      const whole = Buffer.from(await (await client.send(new GetObjectCommand({ Bucket: server.bucket, Key: inc2.key }))).Body!.transformToByteArray());
      const cutUuid = uuidv7();
      await client.send(new PutObjectCommand({ Bucket: server.bucket, Key: archiveKey(prefix, 'h1', cutUuid), Body: whole.subarray(0, whole.length - 100) }));
      await client.send(new CopyObjectCommand({ Bucket: server.bucket, CopySource: `${server.bucket}/${full.key}`, Key: `${prefix}/archives/evil/${full.uuid}.cwa` }));
      await client.send(new PutObjectCommand({ Bucket: server.bucket, Key: `${prefix}/archives/h1/x/${uuidv7()}.cwa`, Body: whole }));

      const proxy = await S3FaultProxy.start(server.endpoint);
      const pc = server.client({ endpoint: proxy.endpoint });
      try {
        const cache = await ListingCache.open(cacheDir, 'test', server.bucket, prefix);
        const first = await listBucketArchives({ client: pc, bucket: server.bucket, prefix, cache });
        expect(first.read).toBe(7);
        expect(proxy.count('ListObjects')).toBe(1);
        // Footer + header per readable archive-like object, footer alone for the cut one, none for the nested key.
        // (fauxqs lists some ETags unlike it serves them: the first GET of such an object fails its If-Match, then a HEAD and the read again.)
        const heads = proxy.count('HeadObject');
        expect(proxy.count('GetObject')).toBe(5 * 2 + 1 + heads);
        if (server.kind === 's3rver') expect(heads).toBe(0);
        const gets = proxy.count('GetObject');

        const byKey = new Map(first.archives.map((a) => [a.key, a]));
        expect(byKey.get(inc2.key)).toMatchObject({ status: 'INDEXED', hostId: 'h1', parentUuid: inc1.uuid, chainDepth: 2 });
        expect(byKey.get(full.key)).toMatchObject({ status: 'INDEXED', chainDepth: 0, devices: [{ name: 'vda', size: 4 * CLUSTER_SIZE }] });
        expect(byKey.get(other.key)).toMatchObject({ status: 'INDEXED', hostId: 'h2' });
        expect(byKey.get(archiveKey(prefix, 'h1', cutUuid))).toMatchObject({ status: 'REJECTED', reason: expect.stringMatching(/incomplete or truncated/) });
        expect(byKey.get(`${prefix}/archives/evil/${full.uuid}.cwa`)).toMatchObject({ status: 'REJECTED', reason: expect.stringMatching(/header says "h1"/) });
        expect([...byKey.values()].find((a) => a.key.includes('/x/'))).toMatchObject({ status: 'REJECTED', reason: expect.stringMatching(/is nested below host h1/) });

        // Second listing: one LIST, nothing read again.
        const again = await listBucketArchives({ client: pc, bucket: server.bucket, prefix, cache: await ListingCache.open(cacheDir, 'test', server.bucket, prefix) });
        expect(again.read).toBe(0);
        expect(again.cached).toBe(7);
        expect(proxy.count('ListObjects')).toBe(2);
        expect([proxy.count('GetObject'), proxy.count('HeadObject')]).toEqual([gets, heads]);
        expect(again.archives.map((a) => [a.key, a.status, a.chainDepth])).toEqual(first.archives.map((a) => [a.key, a.status, a.chainDepth]));

        // One new archive: one LIST plus its footer and header.
        const inc3 = await makeArchive(client, server.bucket, prefix, { host: 'h1', at: '2026-03-04T10:00:00Z', parent: inc2 });
        const third = await listBucketArchives({ client: pc, bucket: server.bucket, prefix, cache: await ListingCache.open(cacheDir, 'test', server.bucket, prefix) });
        expect([third.read, third.cached]).toEqual([1, 7]);
        expect(proxy.count('GetObject')).toBe(gets + 2 + (proxy.count('HeadObject') - heads));
        expect(third.archives.find((a) => a.key === inc3.key)).toMatchObject({ parentUuid: inc2.uuid, chainDepth: 3 });
      } finally {
        pc.destroy();
        await proxy.close();
      }
    });

    it('skips an object deleted between the LIST and its reads', async () => {
      await makeArchive(client, server.bucket, 'gone', { host: 'h1', at: '2026-03-01T10:00:00Z' });
      const kept = await makeArchive(client, server.bucket, 'gone', { host: 'h1', at: '2026-03-02T10:00:00Z' });
      const proxy = await S3FaultProxy.start(server.endpoint);
      const pc = server.client({ endpoint: proxy.endpoint, maxAttempts: 1 });
      try {
        // The first read of the first object answers as a deleted object would.
        proxy.addRule({ op: 'GetObject', nth: [1], action: { status: 404, code: 'NoSuchKey' } });
        const r = await listBucketArchives({ client: pc, bucket: server.bucket, prefix: 'gone', concurrency: 1 });
        expect(r.archives.map((a) => a.key)).toEqual([kept.key]);
      } finally {
        pc.destroy();
        await proxy.close();
      }
    });

    describe('forget', () => {
      const prefix = 'ret';
      const made: Record<string, Made> = {};
      beforeAll(async () => {
        const at = (host: string, iso: string, parent?: string): Promise<Made> =>
          makeArchive(client, server.bucket, prefix, { host, at: iso, ...(parent ? { parent: made[parent]! } : {}) });
        made.F1 = await at('h1', '2024-05-01T10:00:00Z');
        made.F2 = await at('h1', '2025-11-01T10:00:00Z');
        made.F3 = await at('h1', '2026-02-20T10:00:00Z');
        made.F4 = await at('h1', '2026-03-08T10:00:00Z'); // Sunday: ISO week 10
        made.F5 = await at('h1', '2026-03-10T09:00:00Z'); // Tuesday: ISO week 11
        made.C1 = await at('h1', '2026-03-10T10:15:00Z', 'F5');
        made.C2 = await at('h1', '2026-03-10T10:45:00Z', 'C1');
        made.OTHER = await at('h2', '2020-01-01T00:00:00Z');
      });
      const names = (uuids: string[]): string[] => uuids.map((u) => Object.entries(made).find(([, m]) => m.uuid === u)?.[0] ?? u).sort();

      it.each([
        [{ keepLast: 1 }, ['F1', 'F2', 'F3', 'F4']],
        [{ keepHourly: 3 }, ['F1', 'F2', 'F3']],
        [{ keepDaily: 3 }, ['F1', 'F2']],
        [{ keepWeekly: 2 }, ['F1', 'F2', 'F3']],
        [{ keepMonthly: 2 }, ['F1', 'F2', 'F4']],
        [{ keepYearly: 2 }, ['F1', 'F3', 'F4']],
      ])('dry run of %o removes %o of h1 and never a chain member', async (policy, expected) => {
        const before = await keys(client, server.bucket);
        const r = await forget({ client, bucket: server.bucket, prefix, policy, host: 'h1', dryRun: true });
        expect(names(r.removed.map((d) => d.uuid))).toEqual(expected);
        const kept = new Map(r.kept.map((k) => [k.uuid, k.why]));
        expect(kept.get(made.F5!.uuid)).toMatch(/ancestor of|keep/);
        expect(kept.get(made.C1!.uuid)).toBeDefined();
        expect(kept.get(made.OTHER!.uuid)).toMatch(/empty policy/);
        expect(await keys(client, server.bucket)).toEqual(before);
      });

      it('the CLI prints the plan as JSON and deletes nothing with --dry-run', async () => {
        const before = await keys(client, server.bucket);
        const creds = server.storeConfig().credentials!;
        const env = { ...process.env, AWS_ACCESS_KEY_ID: creds.accessKeyId, AWS_SECRET_ACCESS_KEY: creds.secretAccessKey, AWS_REGION: 'us-east-1', XDG_CACHE_HOME: cacheDir };
        const args = ['forget', '--bucket', server.bucket, '--prefix', prefix, '--endpoint', server.endpoint, '--keep-last', '1', '--host', 'h1', '--dry-run', '--json'];
        const { stdout } = await run(process.execPath, [CLI, ...args], { env });
        const out = JSON.parse(stdout) as { dryRun: boolean; removed: Array<{ uuid: string }> };
        expect(out.dryRun).toBe(true);
        expect(names(out.removed.map((d) => d.uuid))).toEqual(['F1', 'F2', 'F3', 'F4']);
        expect(await keys(client, server.bucket)).toEqual(before);
        await expect(run(process.execPath, [CLI, 'forget', '--bucket', server.bucket, '--dry-run'], { env })).rejects.toMatchObject({ code: 2 });
      });

      it('deletes youngest first, reports a refused delete and goes on', async () => {
        const proxy = await S3FaultProxy.start(server.endpoint);
        const pc = server.client({ endpoint: proxy.endpoint, maxAttempts: 1 });
        try {
          // The second DeleteObject (F2, after F4) is refused as Object Lock would refuse it.
          proxy.addRule({ op: 'DeleteObject', nth: [2], action: { status: 403, code: 'AccessDenied' } });
          const r = await forget({ client: pc, bucket: server.bucket, prefix, policy: { keepMonthly: 2 }, host: 'h1', dryRun: false });
          expect(names(r.removed.map((d) => d.uuid))).toEqual(['F1', 'F4']);
          expect(r.skipped.map((s) => [names([s.uuid])[0], s.reason])).toEqual([['F2', expect.stringMatching(/refused \(Object Lock/)]]);
          const left = await keys(client, server.bucket);
          for (const gone of ['F1', 'F4']) expect(left).not.toContain(made[gone]!.key);
          for (const stays of ['F2', 'F3', 'F5', 'C1', 'C2', 'OTHER']) expect(left).toContain(made[stays]!.key);
        } finally {
          pc.destroy();
          await proxy.close();
        }
      });
    });
  });
}

suite('s3rver', () => startS3rver());
suite('fauxqs', () => startFauxqs());
