/**
 * Indexer + API against real peers: s3rver (embedded S3 with its event hook)
 * and dynalite, through the embedded catalogue — the same handler code the
 * Lambdas run.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes, randomUUID } from 'node:crypto';
import { PutObjectCommand } from '@aws-sdk/client-s3';
import { v7 } from 'uuid';
import { ZstdPool } from '../../src/codec/zstd-pool.js';
import { CLUSTER_SIZE } from '../../src/format/constants.js';
import { MemoryByteSink } from '../../src/format/memory.js';
import { ArchiveWriter } from '../../src/format/writer.js';
import { archiveKey } from '../../src/store/config.js';
import { startEmbeddedS3, type EmbeddedS3 } from '../../src/store/embedded-s3.js';
import { startEmbeddedCatalog, type EmbeddedCatalog } from '../../src/catalog/embedded.js';
import { CatalogClient } from '../../src/catalog/client.js';
import { Indexer, type IndexResult } from '../../src/catalog/indexer.js';
import { runVerify } from '../../src/catalog/verify.js';
import { ConflictError, NotFoundError, UsageError } from '../../src/errors.js';
import { buildChain, type ChainStep } from '../helpers/s3-chain-fixture.js';

let dir: string;
let s3: EmbeddedS3;
let catalog: EmbeddedCatalog;
let client: CatalogClient;
let pool: ZstdPool;
let chain: ChainStep[];
const indexed: Array<IndexResult & { at: number }> = [];

async function waitFor<T>(what: string, fn: () => Promise<T | null | undefined>, timeoutMs: number): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

async function archiveBytes(hostId: string, parentUuid: string | null = null): Promise<{ uuid: string; bytes: Buffer }> {
  const uuid = v7();
  const sink = new MemoryByteSink();
  const size = 4 * CLUSTER_SIZE + 1000;
  const w = await ArchiveWriter.create({ hostId, devices: [{ id: 0, name: 'vda', size }], parentUuid, uuid, compressor: pool, output: sink });
  for (let c = 0; c * CLUSTER_SIZE < size; c++) {
    const len = Math.min(CLUSTER_SIZE, size - c * CLUSTER_SIZE);
    // Random data: incompressible, so the first extent's payload spans many KiB.
    await w.writeCluster(0, c, randomBytes(len));
  }
  await w.finish();
  return { uuid, bytes: sink.toBuffer() };
}

async function put(key: string, body: Buffer): Promise<void> {
  await catalog.s3Client.send(new PutObjectCommand({ Bucket: s3.bucket, Key: key, Body: body }));
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'cowstream-catalog-it-'));
  s3 = await startEmbeddedS3({ dir: join(dir, 's3') });
  catalog = await startEmbeddedCatalog({
    stateDir: dir,
    s3,
    logger: 'quiet',
    onIndexed: (r) => indexed.push({ ...r, at: Date.now() }),
  });
  client = new CatalogClient({ url: catalog.url, token: catalog.token });
  pool = new ZstdPool({ workers: 1 });
  chain = await buildChain({
    client: catalog.s3Client,
    bucket: s3.bucket,
    prefix: '',
    hostId: 'h1',
    devices: [
      { id: 0, name: 'vda', size: 12 * CLUSTER_SIZE },
      { id: 1, name: 'vdb', size: 5 * CLUSTER_SIZE + 777 },
    ],
    incrementals: 2,
    compressor: pool,
  });
});

afterAll(async () => {
  await catalog?.close();
  await s3?.close();
  await pool?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('embedded catalogue: indexer', () => {
  it('indexes each uploaded archive within 2 s of upload completion', async () => {
    const done = Date.now(); // buildChain resolved = the last multipart upload completed
    const last = chain[chain.length - 1]!;
    await waitFor('the newest archive to be indexed', () => catalog.repo.getArchive(last.uuid), 2000);
    expect(Date.now() - done).toBeLessThan(2000);
    await catalog.idle();
    for (const step of chain) expect(indexed.filter((r) => r.uuid === step.uuid).map((r) => r.action), JSON.stringify(indexed)).toContain('created');
  });

  it('lists archives newest first with chain depth, sizes and stats', async () => {
    await catalog.idle();
    const page = await client.listArchives({ host: 'h1' });
    expect(page.items.map((a) => a.uuid)).toEqual([...chain].reverse().map((s) => s.uuid));
    const [inc2, inc1, full] = page.items;
    expect([full!.chainDepth, inc1!.chainDepth, inc2!.chainDepth]).toEqual([0, 1, 2]);
    expect(full!.parentUuid).toBeNull();
    expect(inc2!.parentUuid).toBe(inc1!.uuid);
    expect(full!.devices).toEqual([
      { name: 'vda', size: 12 * CLUSTER_SIZE },
      { name: 'vdb', size: 5 * CLUSTER_SIZE + 777 },
    ]);
    expect(full!.status).toBe('INDEXED');
    expect(full!.dataBytes + full!.zeroBytes).toBe(17 * CLUSTER_SIZE + 777);
    expect(full!.bytesStored).toBeGreaterThan(0);
    expect(full!.compressionRatio).toBeGreaterThan(1); // the fixture has compressible text
    const vdb = await client.listArchives({ host: 'h1', disk: 'vdb', limit: 2 });
    expect(vdb.items).toHaveLength(2);
    expect(vdb.cursor).toBeDefined();
    const rest = await client.listArchives({ host: 'h1', disk: 'vdb', limit: 2, cursor: vdb.cursor });
    expect(rest.items.map((a) => a.uuid)).toEqual([full!.uuid]);
    const c = await client.getChain(inc2!.uuid);
    expect(c.items.map((a) => a.uuid)).toEqual([inc2!.uuid, inc1!.uuid, full!.uuid]);
  });

  it('re-indexing the same object is a no-op', async () => {
    await catalog.idle();
    const before = await catalog.repo.getArchive(chain[0]!.uuid);
    const indexer = new Indexer({ repo: catalog.repo, s3: catalog.s3Client });
    const event = { Records: [{ eventName: 'ObjectCreated:CompleteMultipartUpload', s3: { bucket: { name: s3.bucket }, object: { key: chain[0]!.key } } }] };
    const [r1] = await indexer.handleEvent(event);
    const [r2] = await indexer.handleEvent(event);
    expect(r1!.action).toBe('unchanged');
    expect(r2!.action).toBe('unchanged');
    expect(await catalog.repo.getArchive(chain[0]!.uuid)).toEqual(before);
  });

  it('rejects garbage, truncated and mislabelled archives with a reason', async () => {
    const garbageKey = archiveKey('', 'h9', randomUUID());
    await put(garbageKey, Buffer.from('this is not an archive at all'));
    const good = await archiveBytes('h9');
    const truncKey = archiveKey('', 'h9', good.uuid);
    await put(truncKey, good.bytes.subarray(0, good.bytes.length - 100));
    const other = await archiveBytes('someone-else');
    const wrongHostKey = archiveKey('', 'h9', other.uuid);
    await put(wrongHostKey, other.bytes);
    // Keys with spaces arrive form-encoded ('+'): decoded before use (an indexer configured with that prefix).
    const spaced = await archiveBytes('h 9'.replace(' ', '-'));
    const spacedKey = `with space/archives/h-9/${spaced.uuid}.cwa`;
    await put(spacedKey, spaced.bytes);
    await catalog.idle();
    const spacedEvent = { eventName: 'ObjectCreated:Put', s3: { bucket: { name: s3.bucket }, object: { key: spacedKey.replace(/ /g, '+') } } };
    expect((await new Indexer({ repo: catalog.repo, s3: catalog.s3Client }).handleRecord(spacedEvent)).action).toBe('ignored');
    expect((await new Indexer({ repo: catalog.repo, s3: catalog.s3Client, prefix: 'with space' }).handleRecord(spacedEvent)).action).toBe('created');
    await waitFor('rejections', async () => ((await client.listArchives({ host: 'h9' })).items.length === 3 ? true : null), 3000);
    const byKey = new Map((await client.listArchives({ host: 'h9' })).items.map((a) => [a.key, a]));
    expect(byKey.get(garbageKey)!.status).toBe('REJECTED');
    expect(byKey.get(garbageKey)!.reason).toMatch(/TRUNCATED|FORMAT/);
    expect(byKey.get(truncKey)!.status).toBe('REJECTED');
    expect(byKey.get(truncKey)!.reason).toMatch(/TRUNCATED/);
    expect(byKey.get(wrongHostKey)!.status).toBe('REJECTED');
    expect(byKey.get(wrongHostKey)!.reason).toMatch(/someone-else/);
    const sp = await waitFor('spaced key', () => catalog.repo.getArchive(spaced.uuid), 2000);
    expect(sp.key).toBe(`with space/archives/h-9/${spaced.uuid}.cwa`);
    expect(sp.status).toBe('INDEXED');
  });

  it('a payload-damaged archive is INDEXED, then CORRUPT after verify, naming the extent', async () => {
    const a = await archiveBytes('hv');
    const b = await archiveBytes('hv');
    const bad = Buffer.from(a.bytes);
    // Flip a byte inside the first extent's stored payload (just before the 2nd extent ends is also fine);
    // header/trailer/footer stay intact so indexing succeeds.
    const headerLen = bad.readUInt32LE(bad.length - 144 + 12);
    bad[headerLen + 4000] ^= 0xff;
    await put(archiveKey('', 'hv', a.uuid), bad);
    await put(archiveKey('', 'hv', b.uuid), b.bytes);
    await catalog.idle();
    await waitFor('hv archives', async () => ((await client.listArchives({ host: 'hv' })).items.length === 2 ? true : null), 3000);
    expect((await client.getArchive(a.uuid)).status).toBe('INDEXED');
    const report = await runVerify({ repo: catalog.repo, s3: catalog.s3Client, byteBudget: 1 << 30 });
    const outcome = report.checked.find((c) => c.uuid === a.uuid)!;
    expect(outcome.ok).toBe(false);
    const rec = await client.getArchive(a.uuid);
    expect(rec.status).toBe('CORRUPT');
    expect(rec.reason).toMatch(/extent 0 at offset \d+/);
    expect((await client.getArchive(b.uuid)).status).toBe('VERIFIED');
    expect((await client.getArchive(chain[0]!.uuid)).status).toBe('VERIFIED');
    // A small budget verifies one archive (the least recently verified) and stops.
    const small = await runVerify({ repo: catalog.repo, s3: catalog.s3Client, byteBudget: 1 });
    expect(small.checked).toHaveLength(1);
    expect(small.budgetExhausted).toBe(true);
  });
});

describe('embedded catalogue: API', () => {
  async function raw(method: string, path: string, body?: string): Promise<{ status: number; json: any; type: string | null }> {
    const res = await fetch(catalog.url + path, { method, body, headers: { authorization: `Bearer ${catalog.token}`, ...(body ? { 'content-type': 'application/json' } : {}) } });
    return { status: res.status, json: await res.json(), type: res.headers.get('content-type') };
  }

  it('bad bodies are 400 naming the field, unknown routes 404, wrong methods 405, all JSON', async () => {
    const r1 = await raw('POST', '/restores', '{}');
    expect(r1.status).toBe(400);
    expect(r1.json.error.message).toMatch(/archiveId/);
    expect(r1.json.error.message).toMatch(/target/);
    const r2 = await raw('POST', '/restores', '{not json');
    expect(r2.status).toBe(400);
    expect(r2.json.error.message).toMatch(/JSON/);
    const r3 = await raw('POST', '/restores', JSON.stringify({ archiveId: chain[0]!.uuid, hostId: 'h1', target: { path: '/x' }, extra: 1 }));
    expect(r3.status).toBe(400);
    expect(r3.json.error.message).toMatch(/extra/);
    const r4 = await raw('GET', '/nope');
    expect(r4.status).toBe(404);
    expect(r4.type).toMatch(/application\/json/);
    const r5 = await raw('PUT', '/archives');
    expect(r5.status).toBe(405);
    const r6 = await raw('GET', '/archives/not-a-uuid');
    expect(r6.status).toBe(400);
    const r7 = await raw('GET', `/archives/${randomUUID()}`);
    expect(r7.status).toBe(404);
    const r8 = await raw('GET', '/archives?limit=abc');
    expect(r8.status).toBe(400);
    const r9 = await raw('GET', '/archives?host=h1&cursor=AAAA');
    expect(r9.status).toBe(400);
    const r10 = await raw('POST', `/restores/${randomUUID()}/claim`, JSON.stringify({ agentId: 'a' }));
    expect(r10.status).toBe(404);
    const r11 = await raw('GET', '/hosts/h1/restores?status=BOGUS');
    expect(r11.status).toBe(400);
    await expect(client.getArchive(randomUUID())).rejects.toBeInstanceOf(NotFoundError);
    await expect(client.listArchives({ disk: 'vda' })).rejects.toBeInstanceOf(UsageError);
  });

  it('DELETE refuses while a child depends on the archive, then deletes leaf first', async () => {
    const [full, inc1, inc2] = chain;
    await expect(client.deleteArchive(full!.uuid)).rejects.toBeInstanceOf(ConflictError);
    await expect(client.deleteArchive(inc1!.uuid)).rejects.toThrow(/parent of/);
    // A restore of a healthy chain can be requested (plan stored in S3) before the delete.
    const { restoreId } = await client.createRestore({ archiveId: inc2!.uuid, hostId: 'h1', target: { path: '/restore/x' } });
    const job = await client.getRestore(restoreId);
    expect(job.status).toBe('PENDING');
    expect(job.planKey).toBe(`restore-plans/${restoreId}.json`);
    expect((await client.listRestores('h1')).items.map((j) => j.id)).toContain(restoreId);
    expect((await client.cancelRestore(restoreId)).status).toBe('CANCELLED');
    await expect(client.cancelRestore(restoreId)).rejects.toBeInstanceOf(ConflictError);

    const deleted = await client.deleteArchive(inc2!.uuid);
    expect(deleted.status).toBe('DELETED');
    await catalog.idle(); // the ObjectRemoved notification must not undo or duplicate anything
    expect((await client.getArchive(inc2!.uuid)).status).toBe('DELETED');
    expect((await client.deleteArchive(inc1!.uuid)).status).toBe('DELETED');
    expect((await client.listArchives({ host: 'h1' })).items.map((a) => a.uuid)).toEqual([full!.uuid]);
    // A restore of a deleted archive is a conflict, not a server error.
    await expect(client.createRestore({ archiveId: inc2!.uuid, hostId: 'h1', target: { path: '/r' } })).rejects.toBeInstanceOf(ConflictError);
  });
});
