/**
 * openArchiveExports against s3rver (behind a counting proxy) and local
 * files: a depth-3 chain reads back exactly the disk of its newest backup,
 * fetching only what reads need (single flight, coalescing, read-ahead),
 * zero runs report as holes, a damaged extent fails only its clusters, the
 * memory cache stays within its bound, the disk cache is private and
 * re-checked, and a 1 TiB sparse disk opens at once.
 */
import { mkdirSync, readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EncryptionKeyError } from '../../src/errors.js';
import { CLUSTER_SIZE } from '../../src/format/constants.js';
import { ArchiveWriter } from '../../src/format/writer.js';
import { buildRestorePlan, type ArchiveContext } from '../../src/restore/locate.js';
import type { RestorePlan } from '../../src/restore/plan.js';
import { ExtentDamagedError, ExtentFetchError, openArchiveExports, type ArchiveExportSet } from '../../src/serve/archive-exports.js';
import { FileByteSink } from '../../src/store/file.js';
import { mulberry32 } from '../helpers/prng.js';
import { buildChain } from '../helpers/s3-chain-fixture.js';
import { SERVE_DEVICES, dataClusters, extentsFor, startServeFixture, type ServeFixture } from '../helpers/serve-fixture.js';

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

/** Heap and buffer bytes still referenced (after a full GC). */
function retainedBytes(): number {
  gc();
  gc();
  const m = process.memoryUsage();
  return m.heapUsed + m.external;
}

const readAll = async (set: ArchiveExportSet, name: string, chunk = 1024 * 1024): Promise<Buffer> => {
  const e = set.exports.find((x) => x.name === name)!;
  const parts: Buffer[] = [];
  for (let off = 0; off < e.size; off += chunk) parts.push(await e.device.read(off, Math.min(chunk, e.size - off)));
  return Buffer.concat(parts);
};

describe('archive exports (serve)', () => {
  let fx: ServeFixture;
  let plan: RestorePlan;
  let ref: string;

  beforeAll(async () => {
    fx = await startServeFixture();
    ref = fx.steps[2]!.uuid;
    plan = await buildRestorePlan(ref, fx.ctx());
  }, 90_000);

  afterAll(async () => {
    await fx?.close();
  });

  const open = (o: Partial<Parameters<typeof openArchiveExports>[0]> = {}, ctx: ArchiveContext = fx.ctx()): Promise<ArchiveExportSet> =>
    openArchiveExports({ ref, context: ctx, compressor: fx.pool, ...o });

  it('reads every device of a depth-3 chain exactly as the disk at its newest backup', async () => {
    const set = await open();
    try {
      expect(set.archive).toMatchObject({ uuid: ref, host: 'host-a', chainDepth: 3 });
      expect(set.exports.map((e) => [e.name, e.size])).toEqual(SERVE_DEVICES.map((d) => [d.name, d.size]));
      for (const d of SERVE_DEVICES) expect((await readAll(set, d.name)).equals(fx.steps[2]!.disks.get(d.name)!)).toBe(true);
      // Unaligned reads across cluster edges and the short last cluster.
      const vda = set.exports[0]!;
      const disk = fx.steps[2]!.disks.get('vda')!;
      for (const [off, len] of [[CLUSTER_SIZE - 7, 20], [3 * CLUSTER_SIZE + 1, 2 * CLUSTER_SIZE], [vda.size - 100, 100], [0, 1]] as const) {
        expect((await vda.device.read(off, len)).equals(disk.subarray(off, off + len))).toBe(true);
      }
      await expect(vda.device.read(vda.size - 1, 2)).rejects.toThrow(/exceeds device size/);
      await expect(vda.device.write(0, Buffer.alloc(1))).rejects.toThrow(/read-only/);
    } finally {
      await set.close();
    }
  });

  it('fetches only the extents a random read needs, once, however many reads wait for it', async () => {
    const set = await open({ readAheadBytes: 0 });
    try {
      const clusters = dataClusters(plan, 0);
      const picks = [clusters[3]!, clusters[Math.floor(clusters.length / 2)]!, clusters[clusters.length - 2]!];
      const before = fx.proxy.count('GetObject');
      const want = new Set<string>();
      for (const c of picks) {
        // 16 concurrent reads of the same 4 KiB: one fetch (single flight).
        await Promise.all(Array.from({ length: 16 }, () => set.exports[0]!.device.read(c * CLUSTER_SIZE + 4096, 4096)));
        for (const k of extentsFor(plan, 0, c, c)) want.add(k);
      }
      expect(want.size).toBeGreaterThan(1);
      expect(fx.proxy.count('GetObject') - before).toBe(want.size);
      expect(set.stats().gets).toBe(want.size);
      // Read again: all from the cache.
      for (const c of picks) await set.exports[0]!.device.read(c * CLUSTER_SIZE, CLUSTER_SIZE);
      expect(fx.proxy.count('GetObject') - before).toBe(want.size);
      // Zero runs need no fetch.
      const zero = plan.devices[0]!.zeroRuns[0]!;
      expect((await set.exports[0]!.device.read(zero[0] * CLUSTER_SIZE, CLUSTER_SIZE)).equals(Buffer.alloc(CLUSTER_SIZE))).toBe(true);
      expect(fx.proxy.count('GetObject') - before).toBe(want.size);
    } finally {
      await set.close();
    }
  });

  it('a sequential reader reads ahead with one ranged GET per extent (parallel connections), each extent fetched once', async () => {
    const extents = plan.ranges.flatMap((r) => r.extents.map((e) => `${e.offset}-${e.offset + e.length - 1}`));
    const ranges = (from: number): string[] =>
      fx.proxy.requests
        .slice(from)
        .filter((r) => r.op === 'GetObject')
        .map((r) => String(r.headers.range ?? '').replace(/^bytes=/, ''));
    const set = await open({ readAheadBytes: 4 * 1024 * 1024 });
    const from = fx.proxy.requests.length; // after the footers, headers and indexes
    try {
      for (const d of SERVE_DEVICES) expect((await readAll(set, d.name, 64 * 1024)).equals(fx.steps[2]!.disks.get(d.name)!)).toBe(true);
      // Read-ahead still in flight when the last read returned settles first.
      for (let i = 0; i < 100 && set.stats().gets < extents.length; i++) await new Promise((r) => setTimeout(r, 20));
      const got = ranges(from);
      // A coalesced read of several extents would ride one connection at its rate.
      for (const r of got) expect(extents).toContain(r);
      expect(new Set(got).size).toBe(got.length);
      expect(got.length).toBe(extents.length);
      expect(set.stats().cacheHits).toBeGreaterThan(0);
    } finally {
      await set.close();
    }
  });

  it('starts the zstd pool\'s first worker while it opens the chain, not in the first read', async () => {
    const { ZstdPool } = await import('../../src/codec/zstd-pool.js');
    const pool = new ZstdPool({ workers: 2 });
    try {
      const set = await open({ compressor: pool });
      expect(pool.stats().workers).toBe(1);
      await set.close();
    } finally {
      await pool.close();
    }
  });

  it('keeps the disk cache within --cache-disk, evicting the least recently used extents', async () => {
    const parent = join(fx.work, 'dbound');
    mkdirSync(parent);
    const largest = Math.max(...plan.ranges.flatMap((r) => r.extents.map((e) => e.length)));
    const bound = largest + 1024;
    const set = await open({ readAheadBytes: 0, cache: { memoryBytes: 0, dir: parent, diskBytes: bound } });
    try {
      for (const d of SERVE_DEVICES) expect((await readAll(set, d.name)).equals(fx.steps[2]!.disks.get(d.name)!)).toBe(true);
      await new Promise((r) => setTimeout(r, 200)); // background writes and unlinks
      const cdir = join(parent, readdirSync(parent)[0]!);
      const onDisk = readdirSync(cdir).reduce((n, f) => n + statSync(join(cdir, f)).size, 0);
      expect(onDisk).toBeGreaterThan(0);
      expect(onDisk).toBeLessThanOrEqual(bound);
      expect(set.stats().diskCacheBytes).toBeLessThanOrEqual(bound);
    } finally {
      await set.close();
    }
  });

  it('seeded stress: concurrent random and sequential reads under eviction match the disk', async () => {
    const seed = Number(process.env.SERVE_STRESS_SEED ?? 20261201);
    const rng = mulberry32(seed);
    const dir = join(fx.work, 'stress');
    mkdirSync(dir);
    const paths = await fx.download(dir);
    const limit = 4 * 1024 * 1024;
    const set = await openArchiveExports({ ref: paths[2]!, context: { store: null, client: null }, compressor: fx.pool, cache: { memoryBytes: limit }, readAheadBytes: 512 * 1024 });
    try {
      for (let batch = 0; batch < 12; batch++) {
        await Promise.all(
          Array.from({ length: 16 }, async () => {
            const pi = rng.int(0, 1);
            const disk = fx.steps[2]!.disks.get(SERVE_DEVICES[pi]!.name)!;
            const dev = set.exports[pi]!.device;
            // A run of sequential reads from a random place (read-ahead), or one random read.
            let off = rng.int(0, disk.length - 1);
            for (let k = rng.chance(0.3) ? 4 : 1; k > 0 && off < disk.length; k--) {
              const len = Math.min(disk.length - off, rng.int(1, 300 * 1024));
              // Both reads: the NBD server's shared views must stay right under eviction too.
              const got = rng.chance(0.5) ? await dev.readShared!(off, len) : await dev.read(off, len);
              if (!got.equals(disk.subarray(off, off + len))) throw new Error(`seed ${seed}: ${SERVE_DEVICES[pi]!.name} differs at ${off}+${len}`);
              off += len;
            }
          }),
        );
      }
      const st = set.stats();
      expect(st.cacheBytesPeak).toBeLessThanOrEqual(limit);
      expect(st.cacheHits).toBeGreaterThan(0);
      expect(st.extentErrors + st.fetchErrors).toBe(0);
    } finally {
      await set.close();
    }
  });

  it('readShared answers a read inside one extent from the cached buffer; read() answers are the caller\'s to change', async () => {
    const set = await open({ readAheadBytes: 0 });
    try {
      const dev = set.exports[0]!.device;
      const disk = fx.steps[2]!.disks.get(set.exports[0]!.name)!;
      // The first allocated cluster: a read inside it lies in one extent.
      let off = 0;
      for (const e of await dev.mapExtents(0, dev.size)) {
        if (!e.hole && e.length >= CLUSTER_SIZE) break;
        off += e.length;
      }
      expect(off).toBeLessThan(dev.size);
      const len = CLUSTER_SIZE - 1024;
      const a = await dev.readShared!(off + 512, len);
      const b = await dev.readShared!(off + 512, len);
      expect(a.equals(disk.subarray(off + 512, off + 512 + len))).toBe(true);
      // No copy per read: both answers are views of the same cached memory.
      expect(b.buffer).toBe(a.buffer);
      const mine = await dev.read(off + 512, len);
      expect(mine.buffer).not.toBe(a.buffer);
      mine.fill(0xa5);
      expect((await dev.readShared!(off + 512, len)).equals(disk.subarray(off + 512, off + 512 + len))).toBe(true);
      expect((await dev.read(off, 4 * CLUSTER_SIZE)).equals(disk.subarray(off, off + 4 * CLUSTER_SIZE))).toBe(true);
    } finally {
      await set.close();
    }
  });

  it('keeps the memory cache within its configured bytes', async () => {
    const limit = 1024 * 1024;
    const set = await open({ cache: { memoryBytes: limit } });
    try {
      for (const d of SERVE_DEVICES) expect((await readAll(set, d.name, 1024 * 1024)).equals(fx.steps[2]!.disks.get(d.name)!)).toBe(true);
      const s = set.stats();
      expect(s.cacheBytesPeak).toBeGreaterThan(0);
      expect(s.cacheBytesPeak).toBeLessThanOrEqual(limit);
      expect(s.cacheLimitBytes).toBe(limit);
    } finally {
      await set.close();
    }
  });

  it('reports zero runs and uncovered clusters as holes, data as allocated', async () => {
    const set = await open();
    try {
      for (const [pi, d] of plan.devices.entries()) {
        const ex = await set.exports[pi]!.device.mapExtents(0, d.size);
        expect(ex.reduce((n, e) => n + e.length, 0)).toBe(d.size);
        // Expected holes from the plan, cluster by cluster.
        const hole = new Array<boolean>(d.clusters).fill(false);
        for (const [f, n] of [...d.zeroRuns, ...d.missingRuns]) for (let c = f; c < f + n; c++) hole[c] = true;
        let off = 0;
        for (const e of ex) {
          expect(e.zero).toBe(e.hole);
          for (let c = Math.floor(off / CLUSTER_SIZE); c * CLUSTER_SIZE < off + e.length; c++) expect(hole[c]).toBe(e.hole);
          off += e.length;
        }
        expect(ex.some((e) => e.hole)).toBe(true);
        // Clipped to the request, starting at its offset.
        const part = await set.exports[pi]!.device.mapExtents(CLUSTER_SIZE + 5, 3 * CLUSTER_SIZE);
        expect(part.reduce((n, e) => n + e.length, 0)).toBe(3 * CLUSTER_SIZE);
      }
      expect(set.stats().gets).toBe(0);
    } finally {
      await set.close();
    }
  });

  it('serves a local .cwa chain with no S3 at all', async () => {
    const dir = join(fx.work, 'local');
    mkdirSync(dir);
    const paths = await fx.download(dir);
    const ctx: ArchiveContext = { store: null, client: null };
    const set = await openArchiveExports({ ref: paths[2]!, context: ctx, compressor: fx.pool });
    try {
      expect(set.archive.chainDepth).toBe(3);
      for (const d of SERVE_DEVICES) expect((await readAll(set, d.name)).equals(fx.steps[2]!.disks.get(d.name)!)).toBe(true);
      expect(ctx.client).toBeNull();
    } finally {
      await set.close();
    }
  });

  it('a corrupt extent fails only the clusters it supplies, and is logged once with them', async () => {
    // A winning extent of the full archive supplying vda, its payload damaged near the end.
    const { paths, victim } = await fx.corruptCopy(plan, 'corrupt', (e) => e.length - 10);
    const logs: { level: string; message: string; fields?: Record<string, unknown> }[] = [];
    const set = await openArchiveExports({ ref: paths[2]!, context: { store: null, client: null }, compressor: fx.pool, log: (level, message, fields) => logs.push({ level, message, ...(fields ? { fields } : {}) }) });
    try {
      const [, , first, count] = victim.runs.find(([pi]) => pi === 0)!;
      const dev = set.exports[0]!.device;
      for (let k = 0; k < 2; k++) await expect(dev.read(first * CLUSTER_SIZE, 512)).rejects.toBeInstanceOf(ExtentDamagedError);
      await expect(dev.read((first + count - 1) * CLUSTER_SIZE, 512)).rejects.toThrow(new RegExp(`vda:${first}-${first + count - 1}`));
      // Everything else still reads correctly.
      const disk = fx.steps[2]!.disks.get('vda')!;
      const ok = dataClusters(plan, 0).filter((c) => !extentsFor(plan, 0, c, c).has(`2@${victim.offset}`));
      for (const c of [ok[0]!, ok[ok.length - 1]!]) {
        const len = Math.min(CLUSTER_SIZE, disk.length - c * CLUSTER_SIZE);
        expect((await dev.read(c * CLUSTER_SIZE, len)).equals(disk.subarray(c * CLUSTER_SIZE, c * CLUSTER_SIZE + len))).toBe(true);
      }
      const damaged = logs.filter((l) => /damaged extent/.test(l.message));
      expect(damaged).toHaveLength(1);
      expect(damaged[0]!.fields).toMatchObject({ archive: fx.steps[0]!.uuid, extentOffset: victim.offset, clusters: expect.arrayContaining([`vda:${first}-${first + count - 1}`]) });
      expect(set.stats().extentErrors).toBe(1);
    } finally {
      await set.close();
    }
  });

  it('a store failure fails the read with EIO-class ExtentFetchError, and a later read retries', async () => {
    const set = await open({ readAheadBytes: 0 });
    try {
      const c = dataClusters(plan, 1)[2]!;
      fx.proxy.addRule({ op: 'GetObject', action: { status: 403, code: 'AccessDenied' } });
      await expect(set.exports[1]!.device.read(c * CLUSTER_SIZE, 4096)).rejects.toBeInstanceOf(ExtentFetchError);
      fx.proxy.clearRules();
      const disk = fx.steps[2]!.disks.get('vdb')!;
      expect((await set.exports[1]!.device.read(c * CLUSTER_SIZE, 4096)).equals(disk.subarray(c * CLUSTER_SIZE, c * CLUSTER_SIZE + 4096))).toBe(true);
      expect(set.stats()).toMatchObject({ extentErrors: 0, fetchErrors: 1 });
    } finally {
      fx.proxy.clearRules();
      await set.close();
    }
  });

  it('keeps a private disk cache (0700 dir, 0600 files), re-checked on every hit', async () => {
    const parent = join(fx.work, 'dcache');
    mkdirSync(parent);
    const set = await open({ readAheadBytes: 0, cache: { memoryBytes: 0, dir: parent, diskBytes: 64 * 1024 * 1024 } });
    try {
      const dev = set.exports[0]!.device;
      const disk = fx.steps[2]!.disks.get('vda')!;
      const c = dataClusters(plan, 0)[5]!;
      const want = disk.subarray(c * CLUSTER_SIZE, (c + 1) * CLUSTER_SIZE);
      expect((await dev.read(c * CLUSTER_SIZE, CLUSTER_SIZE)).equals(want)).toBe(true);
      await new Promise((r) => setTimeout(r, 200)); // the cache file is written in the background
      const [sub] = readdirSync(parent);
      const cdir = join(parent, sub!);
      expect(statSync(cdir).mode & 0o777).toBe(0o700);
      const files = readdirSync(cdir);
      expect(files.length).toBeGreaterThan(0);
      for (const f of files) expect(statSync(join(cdir, f)).mode & 0o777).toBe(0o600);
      const gets = set.stats().gets;
      expect((await dev.read(c * CLUSTER_SIZE, CLUSTER_SIZE)).equals(want)).toBe(true);
      expect(set.stats().gets).toBe(gets);
      expect(set.stats().diskCacheHits).toBe(1);
      // Another local user's (or a disk's) change to a cache file is caught and the archive read again.
      for (const f of files) {
        const b = readFileSync(join(cdir, f));
        b[b.length - 1]! ^= 1;
        writeFileSync(join(cdir, f), b);
      }
      expect((await dev.read(c * CLUSTER_SIZE, CLUSTER_SIZE)).equals(want)).toBe(true);
      expect(set.stats().gets).toBe(gets + 1);
      expect(set.stats().extentErrors).toBe(0);
    } finally {
      await set.close();
    }
    expect(readdirSync(parent)).toEqual([]);
  });

  it('serves an encrypted chain only with its key, authenticated before any read', async () => {
    const key = randomBytes(32);
    const steps = await buildChain({ client: fx.client, bucket: 'backups', prefix: 'enc', hostId: 'host-e', devices: SERVE_DEVICES, incrementals: 2, compressor: fx.pool, seed: 9, encryptionKey: key });
    const ctx = fx.ctx();
    const top = steps[2]!.uuid;
    await expect(openArchiveExports({ ref: `s3://backups/${steps[2]!.key}`, context: ctx, compressor: fx.pool })).rejects.toBeInstanceOf(EncryptionKeyError);
    await expect(openArchiveExports({ ref: `s3://backups/${steps[2]!.key}`, context: ctx, compressor: fx.pool, key: randomBytes(32) })).rejects.toThrow(/wrong key/);
    const set = await openArchiveExports({ ref: `s3://backups/${steps[2]!.key}`, context: ctx, compressor: fx.pool, key });
    try {
      expect(set.archive.uuid).toBe(top);
      for (const d of SERVE_DEVICES) expect((await readAll(set, d.name)).equals(steps[2]!.disks.get(d.name)!)).toBe(true);
    } finally {
      await set.close();
    }
  });

  it('opens a 1 TiB sparse disk at once, without memory sized by the disk', async () => {
    const path = join(fx.work, 'sparse.cwa');
    const size = 1024 ** 4;
    const w = await ArchiveWriter.create({ hostId: 'host-a', devices: [{ id: 0, name: 'big', size }], compressor: fx.pool, output: await FileByteSink.create(path) });
    const data = Buffer.alloc(CLUSTER_SIZE, 0x5a);
    await w.writeCluster(0, 1000, data);
    await w.writeCluster(0, size / CLUSTER_SIZE - 1, data);
    await w.writeZeroes(0, 0, 1000);
    await w.writeZeroes(0, 1001, size / CLUSTER_SIZE - 1002);
    await w.finish();
    const before = retainedBytes();
    const t0 = performance.now();
    const set = await openArchiveExports({ ref: path, context: { store: null, client: null }, compressor: fx.pool });
    try {
      const dev = set.exports[0]!.device;
      expect((await dev.read(1000 * CLUSTER_SIZE, CLUSTER_SIZE)).equals(data)).toBe(true);
      expect(performance.now() - t0).toBeLessThan(1000);
      // Held by the open set: a per-cluster array of this disk would be ≥ 16 MiB.
      expect(retainedBytes() - before).toBeLessThan(8 * 1024 * 1024);
      expect((await dev.read(size - 4096, 4096)).equals(data.subarray(0, 4096))).toBe(true);
      expect((await dev.read(512 * 1024 ** 3, 4096)).equals(Buffer.alloc(4096))).toBe(true);
      const map = await dev.mapExtents(0, size);
      expect(map).toEqual([
        { length: 1000 * CLUSTER_SIZE, hole: true, zero: true },
        { length: CLUSTER_SIZE, hole: false, zero: false },
        { length: size - 1002 * CLUSTER_SIZE, hole: true, zero: true },
        { length: CLUSTER_SIZE, hole: false, zero: false },
      ]);
    } finally {
      await set.close();
    }
  });
});
