/**
 * A compromised host may write anything under its own `archives/<host>/`.
 * Here host "evil" replays host A's real archive (and a forged one whose
 * header claims A's host and uuid) under its own prefix, nested and direct,
 * and removes those copies again. Played against the embedded catalogue
 * (s3rver events → the same indexer) and against lambda/indexer.ts fed with
 * the S3 events s3rver emitted: A's record, key and restores never change,
 * and every replayed object is recorded REJECTED with the reason.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { DeleteObjectCommand, GetObjectCommand, PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import type { S3Event } from 'aws-lambda';
import { v7 } from 'uuid';
import { ZstdPool } from '../../src/codec/zstd-pool.js';
import { CLUSTER_SIZE } from '../../src/format/constants.js';
import { MemoryByteSink } from '../../src/format/memory.js';
import { ArchiveWriter } from '../../src/format/writer.js';
import { archiveKey, classifyArchiveKey } from '../../src/store/config.js';
import { startEmbeddedS3, type EmbeddedS3 } from '../../src/store/embedded-s3.js';
import { startEmbeddedCatalog, type EmbeddedCatalog } from '../../src/catalog/embedded.js';
import type { CatalogRepository } from '../../src/catalog/repository.js';
import { startLambdaPeers, type LambdaPeers } from '../helpers/lambda-peers.js';
import { CatalogClient } from '../../src/catalog/client.js';
import { objectIdForKey } from '../../src/catalog/indexer.js';
import { parseRestorePlan } from '../../src/restore/plan-schema.js';
import type { ArchiveRecord } from '../../src/catalog/records.js';

let pool: ZstdPool;

beforeAll(() => {
  pool = new ZstdPool({ workers: 1 });
});
afterAll(async () => {
  await pool?.close();
});

async function archiveBytes(hostId: string, uuid: string = v7()): Promise<{ uuid: string; bytes: Buffer }> {
  const sink = new MemoryByteSink();
  const size = 3 * CLUSTER_SIZE;
  const w = await ArchiveWriter.create({ hostId, devices: [{ id: 0, name: 'vda', size }], parentUuid: null, uuid, compressor: pool, output: sink });
  for (let c = 0; c < 3; c++) await w.writeCluster(0, c, randomBytes(CLUSTER_SIZE));
  await w.finish();
  return { uuid, bytes: sink.toBuffer() };
}

/** The attacker's objects: a byte-identical replay and a forgery whose header says host A, uuid U. */
function attackKeys(victimUuid: string): { nested: string; direct: string; forgedNested: string; dotdot: string; noHost: string } {
  return {
    nested: `archives/evil/x/archives/A/${victimUuid}.cwa`,
    direct: `archives/evil/${victimUuid}.cwa`,
    forgedNested: `archives/evil/y/archives/A/${victimUuid}.cwa`,
    dotdot: `archives/evil/../A/${victimUuid}.cwa`,
    // Not writable by a host role in AWS, but anyone who can write the bucket may.
    noHost: `archives/${victimUuid}.cwa`,
  };
}

describe('classifyArchiveKey', () => {
  it('accepts only <prefix>/archives/<host>/<uuid>.cwa', () => {
    const u = '0190f3c2-1111-7abc-8def-0123456789ab';
    expect(classifyArchiveKey(`archives/A/${u}.cwa`, '')).toEqual({ kind: 'archive', hostId: 'A', uuid: u });
    expect(classifyArchiveKey(`site/archives/A/${u.toUpperCase()}.cwa`, 'site')).toEqual({ kind: 'archive', hostId: 'A', uuid: u });
    expect(classifyArchiveKey(`other/archives/A/${u}.cwa`, 'site')).toEqual({ kind: 'outside' });
    expect(classifyArchiveKey(`site/archives/A/${u}.cwa`, '')).toEqual({ kind: 'outside' });
    expect(classifyArchiveKey(`restore-plans/${u}.json`, '')).toEqual({ kind: 'outside' });
    const nested = classifyArchiveKey(`archives/evil/x/archives/A/${u}.cwa`, '');
    expect(nested).toMatchObject({ kind: 'invalid', hostId: 'evil' });
    expect((nested as { reason: string }).reason).toMatch(/nested below host evil/);
    expect(classifyArchiveKey(`archives/${u}.cwa`, '')).toMatchObject({ kind: 'invalid', hostId: null });
    expect(classifyArchiveKey(`archives/../A/${u}.cwa`, '')).toMatchObject({ kind: 'invalid', hostId: null });
    expect(classifyArchiveKey('archives/A/not-a-uuid.cwa', '')).toMatchObject({ kind: 'invalid', hostId: 'A' });
    expect(classifyArchiveKey(`archives/A/${u}.cwa.bak`, '')).toMatchObject({ kind: 'invalid', hostId: 'A' });
  });
});

/** What must hold after the attack, whichever path indexed it. */
async function expectVictimIntact(repo: CatalogRepository, bucket: string, before: ArchiveRecord, keys: ReturnType<typeof attackKeys>): Promise<void> {
  const after = await repo.getArchive(before.uuid);
  expect(after).toEqual(before);
  expect(after!.key).toBe(archiveKey('', 'A', before.uuid));
  expect((await repo.listArchives({ hostId: 'A' })).items.map((a) => a.uuid)).toEqual([before.uuid]);
  for (const [what, key] of Object.entries(keys)) {
    const rec = await repo.getArchive(objectIdForKey(bucket, key));
    expect(rec, `${what}: ${key}`).not.toBeNull();
    expect(rec!.key).toBe(key);
    expect(rec!.uuid).not.toBe(before.uuid);
    expect(['REJECTED', 'DELETED'], `${what}: ${JSON.stringify(rec)}`).toContain(rec!.status);
    if (what === 'noHost') expect(rec!.hostId).toBe('(none)');
    else expect(rec!.hostId).toBe('evil');
  }
}

describe('embedded catalogue: a host replays another host\'s archive under its own prefix', () => {
  let dir: string;
  let s3: EmbeddedS3;
  let catalog: EmbeddedCatalog;
  let client: CatalogClient;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'cowstream-hijack-'));
    s3 = await startEmbeddedS3({ dir: join(dir, 's3') });
    catalog = await startEmbeddedCatalog({ stateDir: dir, s3, logger: 'quiet' });
    client = new CatalogClient({ url: catalog.url, token: catalog.token });
  });
  afterAll(async () => {
    await catalog?.close();
    await s3?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  const put = (key: string, body: Buffer): Promise<unknown> => catalog.s3Client.send(new PutObjectCommand({ Bucket: s3.bucket, Key: key, Body: body }));

  it("A's record, key and restores are unchanged; every replay is REJECTED with the reason", async () => {
    const victim = await archiveBytes('A');
    const victimKey = archiveKey('', 'A', victim.uuid);
    await put(victimKey, victim.bytes);
    await catalog.idle();
    const before = (await catalog.repo.getArchive(victim.uuid))!;
    expect(before.status).toBe('INDEXED');
    const { restoreId } = await client.createRestore({ archiveId: victim.uuid, hostId: 'A', target: { path: '/restore/a' } });
    const jobBefore = await client.getRestore(restoreId);

    const keys = attackKeys(victim.uuid);
    const forged = await archiveBytes('A', victim.uuid); // evil's own data, header claiming A and U
    await put(keys.nested, victim.bytes);
    await put(keys.direct, victim.bytes);
    await put(keys.forgedNested, forged.bytes);
    await put(keys.dotdot, forged.bytes);
    await put(keys.noHost, victim.bytes);
    await catalog.idle();

    await expectVictimIntact(catalog.repo, s3.bucket, before, keys);
    const reasons = Object.fromEntries(
      await Promise.all(Object.entries(keys).map(async ([k, key]) => [k, (await catalog.repo.getArchive(objectIdForKey(s3.bucket, key)))!.reason] as const)),
    );
    expect(reasons.nested).toMatch(/nested below host evil/);
    expect(reasons.forgedNested).toMatch(/nested below host evil/);
    // The direct copy is a well-formed key of host evil whose header says host A.
    expect(reasons.direct).toMatch(/header says "A"/);
    expect(reasons.noHost).toMatch(/has no host segment/);
    expect(await client.getRestore(restoreId)).toEqual(jobBefore);

    // A restore planned after the attack still reads A's own object.
    const { restoreId: second } = await client.createRestore({ archiveId: victim.uuid, hostId: 'A', target: { path: '/restore/b' } });
    const plan = parseRestorePlan(
      JSON.parse(await (await catalog.s3Client.send(new GetObjectCommand({ Bucket: s3.bucket, Key: `restore-plans/${second}.json` }))).Body!.transformToString()),
    );
    expect(plan.chain.map((c) => c.locator)).toEqual([{ kind: 's3', bucket: s3.bucket, key: victimKey }]);

    // Removing the replays touches only their own records.
    for (const key of Object.values(keys)) await catalog.s3Client.send(new DeleteObjectCommand({ Bucket: s3.bucket, Key: key }));
    await catalog.idle();
    await expectVictimIntact(catalog.repo, s3.bucket, before, keys);
    for (const key of Object.values(keys)) expect((await catalog.repo.getArchive(objectIdForKey(s3.bucket, key)))!.status).toBe('DELETED');
  });

  it('a second object claiming an indexed uuid at a well-formed key of its own host is REJECTED ("uuid already indexed at KEY")', async () => {
    // evil's own archive, header and key agreeing, reusing B's uuid.
    const b = await archiveBytes('B');
    await put(archiveKey('', 'B', b.uuid), b.bytes);
    await catalog.idle();
    const before = (await catalog.repo.getArchive(b.uuid))!;
    const claim = await archiveBytes('evil', b.uuid);
    const evilKey = archiveKey('', 'evil', b.uuid);
    await put(evilKey, claim.bytes);
    await catalog.idle();
    expect(await catalog.repo.getArchive(b.uuid)).toEqual(before);
    const rec = (await catalog.repo.getArchive(objectIdForKey(s3.bucket, evilKey)))!;
    expect(rec.status).toBe('REJECTED');
    expect(rec.reason).toBe(`uuid ${b.uuid} already indexed at ${archiveKey('', 'B', b.uuid)}`);
    // The loser does not show up in B's disk listing either.
    expect((await catalog.repo.listArchives({ hostId: 'B', disk: 'vda' })).items.map((a) => a.key)).toEqual([before.key]);
  });
});

describe('lambda indexer: the same replay as S3 events', () => {
  let peers: LambdaPeers;
  let repo: CatalogRepository;
  let s3Client: S3Client;
  let s3: EmbeddedS3;
  let events: S3Event[];

  beforeAll(async () => {
    peers = await startLambdaPeers({ ARCHIVE_PREFIX: '' });
    ({ repo, s3Client, s3, events } = peers);
  });
  afterAll(async () => {
    await peers?.close();
  });

  const put = (key: string, body: Buffer): Promise<unknown> => s3Client.send(new PutObjectCommand({ Bucket: s3.bucket, Key: key, Body: body }));

  it("replays delivered in one batch, in either order, never touch A's record", async () => {
    const { handler } = await import('../../lambda/indexer.js');
    const victim = await archiveBytes('A');
    await put(archiveKey('', 'A', victim.uuid), victim.bytes);
    const first = await handler({ Records: events.splice(0).flatMap((e) => e.Records) });
    expect(first.results.map((r) => r.action)).toEqual(['created']);
    const before = (await repo.getArchive(victim.uuid))!;

    const keys = attackKeys(victim.uuid);
    const forged = await archiveBytes('A', victim.uuid);
    await put(keys.nested, victim.bytes);
    await put(keys.direct, victim.bytes);
    await put(keys.forgedNested, forged.bytes);
    await put(keys.dotdot, forged.bytes);
    await put(keys.noHost, victim.bytes);
    const created = events.splice(0).flatMap((e) => e.Records);
    expect(created).toHaveLength(5);
    // Later events of other keys carry larger sequencers: they must not count.
    const r1 = await handler({ Records: [...created].reverse() });
    await expectVictimIntact(repo, s3.bucket, before, keys);
    expect(r1.results.map((r) => r.action)).toEqual(['rejected', 'rejected', 'rejected', 'rejected', 'rejected']);
    const r2 = await handler({ Records: created }); // re-delivery
    expect(r2.results.every((r) => r.action === 'unchanged')).toBe(true);

    for (const key of Object.values(keys)) await s3Client.send(new DeleteObjectCommand({ Bucket: s3.bucket, Key: key }));
    const removed = events.splice(0).flatMap((e) => e.Records);
    expect(removed).toHaveLength(5);
    const r3 = await handler({ Records: removed });
    expect(r3.results.map((r) => r.action)).toEqual(['deleted', 'deleted', 'deleted', 'deleted', 'deleted']);
    await expectVictimIntact(repo, s3.bucket, before, keys);
  });
});
