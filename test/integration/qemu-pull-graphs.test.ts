/**
 * Pull mode for VMs as they are: a drive whose format node is attached to
 * the guest directly (no raw filter) is fleeced by a backup job (job graph),
 * one behind a raw filter by our own filter (filter graph). Against a REAL
 * qemu-storage-daemon: archive = disk at the snapshot point while the guest
 * writes through the very export being backed up; incremental chains across
 * both graph kinds; QEMU's graph exactly as before after success, cancel and
 * a SIGKILL of the backup process (the next run removes what it left).
 */
import { afterAll, describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ZstdPool } from '../../src/codec/zstd-pool.js';
import { QmpClient } from '../../src/qemu/qmp.js';
import type { PullBackupOptions, PullBackupResult } from '../../src/qemu/pull-backup.js';
import { QemuBackupError, QmpTimeoutError } from '../../src/qemu/errors.js';
import { processStart } from '../../src/qemu/run-record.js';
import { backupToFile, fillRandom } from '../helpers/qemu-pull.js';
import { copyExport, createImage, guestWrites, startDaemon, tempDir, type QemuDaemon } from '../helpers/qemu-daemon.js';
import { firstDiff, restoreChain } from '../helpers/qemu-archive.js';

const SIZE = 64 * 1024 * 1024;
const pool = new ZstdPool({ workers: 2 });
afterAll(async () => pool.close());

type Attach = 'filter' | 'direct';


/** Everything of QEMU's block layer a backup may touch: nodes, edges, exports, jobs. */
async function graphOf(qmp: QmpClient): Promise<{ nodes: string[]; edges: string[]; exports: string[]; jobs: string[] }> {
  const nodes = await qmp.execute<{ 'node-name': string; drv: string; ro: boolean }[]>('query-named-block-nodes', { flat: true });
  const g = await qmp.execute<{ nodes: { id: number; name: string; type: string }[]; edges: { parent: number; child: number; name: string }[] }>('x-debug-query-block-graph');
  const byId = new Map(g.nodes.map((n) => [n.id, n]));
  const label = (id: number): string => `${byId.get(id)?.type}:${byId.get(id)?.name}`;
  const exports = await qmp.execute<{ id: string; 'node-name': string }[]>('query-block-exports');
  const jobs = await qmp.execute<{ id: string }[]>('query-jobs');
  return {
    nodes: nodes.map((n) => `${n['node-name']}:${n.drv}:${n.ro ? 'ro' : 'rw'}`).sort(),
    edges: g.edges.map((e) => `${label(e.parent)} -${e.name}-> ${label(e.child)}`).sort(),
    exports: exports.map((e) => `${e.id}@${e['node-name']}`).sort(),
    jobs: jobs.map((j) => j.id).sort(),
  };
}

async function bitmapNames(qmp: QmpClient): Promise<string[]> {
  const nodes = await qmp.execute<{ 'node-name': string; 'dirty-bitmaps'?: { name: string }[] }[]>('query-named-block-nodes', { flat: true });
  // A copy-before-write filter keeps an unnamed bitmap on the drive while it exists.
  return (nodes.find((n) => n['node-name'] === 'd0')?.['dirty-bitmaps'] ?? []).map((b) => b.name).filter((n) => typeof n === 'string' && n.startsWith('cowstream-')).sort();
}

/** Starts a daemon on `dir/d0.qcow2` (created on first use) with the guest attached as asked. */
async function openDaemon(dir: string, attach: Attach): Promise<{ d: QemuDaemon; qmp: QmpClient }> {
  const img = join(dir, 'd0.qcow2');
  if (!existsSync(img)) await createImage(img, 'qcow2', String(SIZE));
  const d = await startDaemon(dir, [{ path: img, format: 'qcow2' }], { attach });
  return { d, qmp: await QmpClient.connect(d.qmpSocket) };
}

const ownFiles = (dir: string): string[] => readdirSync(dir).filter((f) => f.endsWith('.fleece') || f.endsWith('.run'));

/**
 * Full backup while the guest writes (seeded, started at the snapshot
 * point); checks that reads overlapped the writes, that the archive equals
 * the copy taken just before the snapshot point (and not the disk after the
 * writes), and that QEMU's graph is as before. Returns the result and the
 * graph seen at the snapshot point.
 */
async function backupWhileWriting(
  d: QemuDaemon,
  qmp: QmpClient,
  dir: string,
  opts: Partial<PullBackupOptions>,
  writes: { seed: number; count: number; maxLen: number },
): Promise<{ r: PullBackupResult; during: Awaited<ReturnType<typeof graphOf>> }> {
  const before = await graphOf(qmp);
  const ref = join(dir, 'ref.raw');
  await copyExport(d.guestUri(0), ref);
  let writers: Promise<void> | null = null;
  let writesDone = false;
  let readWhileWriting = false;
  let during: Awaited<ReturnType<typeof graphOf>> | null = null;
  const r = await backupToFile(d, qmp, dir, 'full', pool, {
    ...opts,
    onSnapshot: async () => {
      during = await graphOf(qmp);
      writers = guestWrites(d.guestUri(0), writes.seed, writes.count, SIZE, { maxLen: writes.maxLen }).then(() => void (writesDone = true));
    },
    onProgress: () => {
      if (!writesDone) readWhileWriting = true;
    },
  });
  await writers;
  expect(readWhileWriting).toBe(true);
  const now = join(dir, 'now.raw');
  await copyExport(d.guestUri(0), now);
  const restored = await restoreChain(r.path, join(dir, `restore-${r.uuid}`), pool);
  const want = await readFile(ref);
  expect(firstDiff(restored.get('vda')!, want)).toBeNull();
  expect((await readFile(now)).equals(want)).toBe(false);
  expect(await graphOf(qmp)).toEqual(before);
  expect(ownFiles(dir)).toEqual([]);
  return { r, during: during! };
}

describe('job graph: a qcow2 node exported to the guest directly', () => {
  const t = tempDir();
  let d: QemuDaemon;
  let qmp: QmpClient;
  afterAll(async () => {
    await qmp?.close();
    await d?.stop();
    t.cleanup();
  });

  it('archive equals the disk at the snapshot point while the guest writes through that export; 1 MiB READs over several connections; graph as before', async () => {
    ({ d, qmp } = await openDaemon(t.dir, 'direct'));
    await fillRandom(d, t.dir, 32 * 1024 * 1024);
    await guestWrites(d.guestUri(0), 5, 40, SIZE);
    expect((await graphOf(qmp)).edges).toContain('block-backend: -root-> block-driver:d0');
    const { r, during } = await backupWhileWriting(d, qmp, t.dir, { readChunk: 4 * 1024 * 1024, readSize: 1024 * 1024, connections: 3, maxInFlight: 2 }, { seed: 77, count: 400, maxLen: 1024 * 1024 });
    expect(r.graph).toBe('job');
    expect(r.graphReason).toMatch(/'d0' is attached directly/);
    expect(r.devices[0]).toMatchObject({ readSize: 1024 * 1024, connections: 3 });
    // During the backup the job's filter sits between the export and the drive.
    expect(during.jobs).toEqual([expect.stringMatching(/^cowstream-[0-9a-f]{8}-job0$/)]);
    expect(await bitmapNames(qmp)).toEqual([`cowstream-${r.uuid}`]);
  }, 90_000);

  it('cancel mid-read: graph as before, bitmap generation kept, no files left', async () => {
    const before = await graphOf(qmp);
    const bms = await bitmapNames(qmp);
    const ac = new AbortController();
    const p = backupToFile(d, qmp, t.dir, 'incremental', pool, { signal: ac.signal, readChunk: 64 * 1024, maxInFlight: 1, connections: 1, onProgress: () => ac.abort() }).catch((e: unknown) => e);
    await guestWrites(d.guestUri(0), 6, 20, SIZE);
    expect(await p).toBeInstanceOf(QemuBackupError);
    expect(await graphOf(qmp)).toEqual(before);
    expect(await bitmapNames(qmp)).toEqual(bms);
    expect(ownFiles(t.dir)).toEqual([]);
  }, 60_000);

  it('the archive sink fails mid-backup: graph as before, the bitmap generation folded back', async () => {
    const before = await graphOf(qmp);
    const bms = await bitmapNames(qmp);
    let written = 0;
    const failing = backupToFile(d, qmp, t.dir, 'incremental', pool, {
      readChunk: 256 * 1024,
      openOutput: async () => ({
        write: async (c: Uint8Array) => {
          written += c.length;
          if (written > 64 * 1024) throw new Error('disk full');
        },
        close: async () => undefined,
        abort: async () => undefined,
      }),
    }).catch((e: unknown) => e);
    await guestWrites(d.guestUri(0), 7, 30, SIZE);
    expect(String(await failing)).toMatch(/disk full/);
    expect(await graphOf(qmp)).toEqual(before);
    expect(await bitmapNames(qmp)).toEqual(bms);
    expect(ownFiles(t.dir)).toEqual([]);
  }, 60_000);

  it('a backup job cancelled from outside mid-backup fails the backup (its reads would no longer be the snapshot)', async () => {
    const before = await graphOf(qmp);
    const bms = await bitmapNames(qmp);
    let cancelled: Promise<unknown> | null = null;
    const p = backupToFile(d, qmp, t.dir, 'full', pool, {
      readChunk: 64 * 1024,
      maxInFlight: 1,
      connections: 1,
      onProgress: () => {
        cancelled ??= qmp.execute<{ id: string }[]>('query-jobs').then((jobs) => qmp.execute('job-cancel', { id: jobs.find((j) => j.id.endsWith('-job0'))!.id }));
      },
    });
    await expect(p).rejects.toThrow(/backup job of 'vda' ended during the backup/);
    await cancelled;
    expect(await graphOf(qmp)).toEqual(before);
    expect(await bitmapNames(qmp)).toEqual(bms);
    expect(ownFiles(t.dir)).toEqual([]);
  }, 60_000);

  it('a busy QMP socket (another client holds the monitor) gives a clear error, no hang', async () => {
    const err = await QmpClient.connect(d.qmpSocket, { connectTimeoutMs: 500 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(QmpTimeoutError);
    expect((err as Error).message).toMatch(/another client holds it/);
  });
});

describe('filter graph with 1 MiB READs: a qcow2 fleecing image whose cluster is the READ size', () => {
  const t = tempDir();
  let d: QemuDaemon;
  let qmp: QmpClient;
  afterAll(async () => {
    await qmp?.close();
    await d?.stop();
    t.cleanup();
  });

  it('archive equals the disk at the snapshot point while the guest writes; graph as before', async () => {
    ({ d, qmp } = await openDaemon(t.dir, 'filter'));
    await fillRandom(d, t.dir, 40 * 1024 * 1024);
    // Small scattered writes: each lands in a cbw cluster a READ may be crossing.
    // Runs and status windows of 17 clusters: data runs start off the 1 MiB grid, and READs must not.
    const odd = 17 * 64 * 1024;
    const { r } = await backupWhileWriting(d, qmp, t.dir, { readSize: 1024 * 1024, readChunk: odd, statusWindow: odd, connections: 3, maxInFlight: 2 }, { seed: 91, count: 600, maxLen: 64 * 1024 });
    expect(r.graph).toBe('filter');
    expect(r.devices[0]).toMatchObject({ readSize: 1024 * 1024, connections: 3 });
  }, 90_000);
});

describe('incremental chain across both graph kinds (same image, attached differently)', () => {
  const t = tempDir();
  let d: QemuDaemon;
  let qmp: QmpClient;
  afterAll(async () => {
    await qmp?.close();
    await d?.stop();
    t.cleanup();
  });
  const restart = async (attach: Attach): Promise<void> => {
    await qmp?.close();
    await d?.stop();
    ({ d, qmp } = await openDaemon(t.dir, attach));
  };
  const check = async (r: PullBackupResult & { path: string }, tag: string): Promise<void> => {
    const disk = join(t.dir, `${tag}.raw`);
    await copyExport(d.guestUri(0), disk);
    const restored = await restoreChain(r.path, join(t.dir, `restore-${tag}`), pool);
    expect(firstDiff(restored.get('vda')!, await readFile(disk))).toBeNull();
  };

  it('filter full → job incremental → filter incremental → job incremental, each restoring to the disk', async () => {
    await restart('filter');
    await fillRandom(d, t.dir, 16 * 1024 * 1024);
    const full = await backupToFile(d, qmp, t.dir, 'full', pool);
    expect(full.graph).toBe('filter');
    await check(full, 'full');
    let parent = full.uuid;
    const kinds: Attach[] = ['direct', 'filter', 'direct'];
    for (const [i, attach] of kinds.entries()) {
      await restart(attach);
      const before = await graphOf(qmp);
      await guestWrites(d.guestUri(0), 30 + i, 50, SIZE);
      const inc = await backupToFile(d, qmp, t.dir, 'incremental', pool, { readSize: 1024 * 1024 });
      expect({ graph: inc.graph, mode: inc.mode, parent: inc.parentUuid }).toEqual({ graph: attach === 'direct' ? 'job' : 'filter', mode: 'incremental', parent });
      expect(inc.devices[0]!.skippedClusters).toBeGreaterThan(0);
      await check(inc, `inc${i}`);
      expect(await graphOf(qmp)).toEqual(before);
      expect(await bitmapNames(qmp)).toEqual([`cowstream-${inc.uuid}`]);
      parent = inc.uuid;
    }
    expect(ownFiles(t.dir)).toEqual([]);
  }, 120_000);
});

describe.each<Attach>(['direct', 'filter'])('SIGKILL of the backup process mid-backup (%s attach)', (attach) => {
  const t = tempDir();
  let d: QemuDaemon;
  let qmp: QmpClient | null = null;
  afterAll(async () => {
    await qmp?.close();
    await d?.stop();
    t.cleanup();
  });

  it('leaves recognisable leftovers; the next run removes them, restores the bitmap generation and backs up correctly', async () => {
    ({ d, qmp } = await openDaemon(t.dir, attach));
    await fillRandom(d, t.dir, 24 * 1024 * 1024);
    const base = await backupToFile(d, qmp, t.dir, 'full', pool);
    const before = await graphOf(qmp);
    await guestWrites(d.guestUri(0), 40, 60, SIZE);
    // The monitor serves one client: hand it to the child.
    await qmp.close();
    qmp = null;
    const child = spawn(process.execPath, ['--import', 'tsx', join(__dirname, '../helpers/qemu-pull-child.ts'), d.qmpSocket, d.nbdSocket, t.dir, t.dir, 'incremental'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let errOut = '';
    child.stderr.on('data', (c: Buffer) => (errOut += c.toString()));
    const exited = new Promise<NodeJS.Signals | null>((r) => child.once('exit', (_c, sig) => r(sig)));
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`child never reported progress: ${out} ${errOut}`)), 30_000);
      child.stdout.on('data', (c: Buffer) => {
        out += c.toString();
        if (out.includes('progress')) {
          clearTimeout(timer);
          resolve();
        }
      });
      child.once('exit', () => reject(new Error(`child exited early: ${out} ${errOut}`)));
    });
    child.kill('SIGKILL');
    expect(await exited).toBe('SIGKILL');
    // The guest keeps writing after the crash: the next incremental must see it.
    await guestWrites(d.guestUri(0), 41, 40, SIZE);
    qmp = await QmpClient.connect(d.qmpSocket);
    const left = await graphOf(qmp);
    expect(left.nodes.some((n) => /^cowstream-[0-9a-f]{8}-/.test(n))).toBe(true);
    expect((await bitmapNames(qmp)).length).toBe(2);
    expect(ownFiles(t.dir).some((f) => f.endsWith('.run'))).toBe(true);

    // A record naming a live process: its objects are not touched.
    const runFile = join(t.dir, ownFiles(t.dir).find((f) => f.endsWith('.run'))!);
    const saved = readFileSync(runFile, 'utf8');
    const sleeper = spawn('sleep', ['30']);
    try {
      writeFileSync(runFile, JSON.stringify({ ...(JSON.parse(saved) as object), pid: sleeper.pid, pidStart: processStart(sleeper.pid!) }));
      await expect(backupToFile(d, qmp, t.dir, 'incremental', pool)).rejects.toThrow(/cowstream backup [0-9a-f-]{36} \(pid \d+\) is still running on this QEMU/);
      expect(await graphOf(qmp)).toEqual(left);
      // No record at all (or one that is not ours): nothing proves the owner gone, so nothing is touched.
      rmSync(runFile);
      await expect(backupToFile(d, qmp, t.dir, 'incremental', pool)).rejects.toThrow(/owner cannot be told .*cowstream-[0-9a-f]{8}-/);
      expect(await graphOf(qmp)).toEqual(left);
    } finally {
      sleeper.kill('SIGKILL');
      writeFileSync(runFile, saved, { mode: 0o600 });
    }

    const warnings: string[] = [];
    const next = await backupToFile(d, qmp, t.dir, 'incremental', pool, { onWarning: (m) => warnings.push(m) }).catch((e: unknown) => { throw new Error(`${String(e)} after warnings: ${warnings.join(' / ')}`); });
    expect(next.recovered).toEqual([expect.stringMatching(/removed the leftovers of cowstream backup [0-9a-f-]{36} \(its process is gone\)/)]);
    expect(warnings.filter((w) => w.startsWith('recovery:'))).toEqual([]);
    // The killed run's generation went back into the base's: the chain still starts at base.
    expect(next.mode).toBe('incremental');
    expect(next.parentUuid).toBe(base.uuid);
    expect(await graphOf(qmp)).toEqual(before);
    expect(await bitmapNames(qmp)).toEqual([`cowstream-${next.uuid}`]);
    expect(ownFiles(t.dir)).toEqual([]);
    const disk = join(t.dir, 'disk.raw');
    await copyExport(d.guestUri(0), disk);
    const restored = await restoreChain(next.path, join(t.dir, 'restore'), pool);
    expect(firstDiff(restored.get('vda')!, await readFile(disk))).toBeNull();
  }, 120_000);
});
