/**
 * The scenario classes of QEMU's iotests, ported as black-box tests of the
 * agent over NBD (ideas from tests 257 — every bitmap sync mode against
 * every outcome —, tests/copy-before-write — on-cbw-error, cbw-timeout —
 * and tests/image-fleecing — a fleecing export under guest overwrites).
 *
 * Each scenario, for a full and an incremental backup: guest writes before,
 * a backup that meets one failure point while the guest keeps writing, then:
 *   - the outcome (error / cancelled / done) and no archive left behind;
 *   - the bitmap: still valid, and holding at least every cluster written
 *     since the last successful backup (no dirty bit lost);
 *   - more writes, then an incremental whose parent is the last successful
 *     backup and whose chain restores byte-identical to the disk.
 * Outcomes that must succeed (no failure, break-guest-write) also check
 * that the archive is the disk at the backup's start, not at its end.
 * SIGKILL of the agent mid-backup runs against the real CLI process.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startAgent, type Agent } from '../../src/agent/agent.js';
import { parseAgentConfig } from '../../src/agent/config.js';
import { AgentClient } from '../../src/agent/control-client.js';
import { silentLogger } from '../../src/agent/log.js';
import type { BackupStatus, FileDiskStatus } from '../../src/agent/backup-request.js';
import { ZstdPool } from '../../src/codec/zstd-pool.js';
import { CLUSTER_SIZE } from '../../src/format/constants.js';
import { NbdClient } from '../../src/nbd/client.js';
import { firstDiff, restoreChainFiles } from '../helpers/agent-archive.js';
import { FaultyDevice, PlannedClusterSink, PlannedSink, noFaults, type FaultPlan } from '../helpers/agent-faults.js';
import { makeDisk, makeTempDir, spawnAgent, writeAgentConfig } from '../helpers/agent-process.js';
import { prng } from '../helpers/agent-workload.js';

const CLUSTERS = 48;
const SIZE = CLUSTERS * CLUSTER_SIZE;

type Mode = 'full' | 'incremental';

/** One failure point: how to arm it, the backup request, and the outcome it must produce. */
interface Failure {
  name: string;
  outcome: 'error' | 'cancelled' | 'done';
  /** Matches the backup's error message. */
  error?: RegExp;
  arm(plan: FaultPlan): void;
  /** Armed once the backup runs and the guest's writes are in flight. */
  armDuring?(plan: FaultPlan): void;
  request?: (dir: string) => Record<string, unknown>;
  /** Some guest writes must fail with EIO (break-guest-write); the others must all succeed. */
  guestWritesFail?: boolean;
  /** Cancel the backup once the guest writes of the scenario are in. */
  cancel?: boolean;
  /** The fault must have fired (sink/source faults). */
  fires?: boolean;
}

const FAILURES: Failure[] = [
  { name: 'success', outcome: 'done', arm: (p) => (p.clusterDelayMs = 15) },
  {
    name: 'source read error',
    outcome: 'error',
    error: /injected read error/,
    fires: true,
    arm: (p) => (p.clusterDelayMs = 40),
    armDuring: (p) => (p.readFailFrom = 0),
  },
  { name: 'sink error at the first byte', outcome: 'error', error: /injected sink failure/, fires: true, arm: (p) => (p.sinkFailAfter = 0) },
  { name: 'sink error after the header', outcome: 'error', error: /injected sink failure/, fires: true, arm: (p) => ((p.clusterDelayMs = 10), (p.sinkFailAfter = 1)) },
  { name: 'sink error mid-archive', outcome: 'error', error: /injected sink failure/, fires: true, arm: (p) => ((p.clusterDelayMs = 10), (p.sinkFailAfter = 256 * 1024)) },
  { name: 'sink error at close', outcome: 'error', error: /injected sink failure at close/, fires: true, arm: (p) => ((p.clusterDelayMs = 5), (p.sinkFailAtClose = true)) },
  { name: 'cancel', outcome: 'cancelled', cancel: true, arm: (p) => (p.clusterDelayMs = 40) },
  {
    name: 'CBW timeout, break-snapshot',
    outcome: 'error',
    error: /time|CBW|copy-before-write/i,
    arm: (p) => (p.clusterDelayMs = 400),
    request: () => ({ cbwTimeoutMs: 50, onCbwError: 'break-snapshot' }),
  },
  {
    name: 'CBW timeout, break-guest-write',
    outcome: 'done',
    guestWritesFail: true,
    arm: (p) => (p.clusterDelayMs = 120),
    request: () => ({ cbwTimeoutMs: 50, onCbwError: 'break-guest-write' }),
  },
  {
    name: 'fleecing store full',
    outcome: 'error',
    error: /fleecing|full|scratch/i,
    arm: (p) => (p.clusterDelayMs = 300),
    request: (dir) => ({ fleecing: { dir, maxBytes: 2 * CLUSTER_SIZE } }),
  },
  {
    name: 'fleecing under guest overwrites',
    outcome: 'done',
    arm: (p) => (p.clusterDelayMs = 20),
    request: (dir) => ({ fleecing: { dir, maxBytes: 64 * CLUSTER_SIZE } }),
  },
];

let tmp: { dir: string; cleanup(): Promise<void> };
let pool: ZstdPool;

beforeAll(async () => {
  tmp = await makeTempDir('cowstream-scenarios-');
  pool = new ZstdPool({ workers: 1 });
});

afterAll(async () => {
  await pool?.close();
  await tmp?.cleanup();
});

function restoreChain(chain: string[]): Promise<Buffer> {
  return restoreChainFiles(chain, 'vda', pool);
}

/** A guest: writes through the agent's NBD Unix socket; records the clusters it touched. */
class Guest {
  readonly touched = new Set<number>();
  failures = 0;
  private constructor(private readonly c: NbdClient) {}
  static async connect(socket: string): Promise<Guest> {
    return new Guest(await NbdClient.connect({ path: socket }, { exportName: 'vda' }));
  }
  /**
   * `n` writes of random data at seeded offsets (whole clusters, partial ones
   * and cluster-straddling ones), or one write at each of `at` (cluster numbers).
   */
  async writes(seed: number, n: number, at?: number[]): Promise<void> {
    const r = prng(seed);
    await Promise.all(
      Array.from({ length: at ? at.length : n }, async (_, i) => {
        const c = at ? Math.min(at[i]!, CLUSTERS - 2) : Math.floor(r() * (CLUSTERS - 1));
        const kind = r();
        const off = kind < 0.4 ? c * CLUSTER_SIZE : kind < 0.7 ? c * CLUSTER_SIZE + 4096 * Math.floor(r() * 8) : (c + 1) * CLUSTER_SIZE - 4096;
        const len = kind < 0.4 ? CLUSTER_SIZE : 8192;
        try {
          await this.c.write(off, randomBytes(len));
          for (let k = Math.floor(off / CLUSTER_SIZE); k <= Math.floor((off + len - 1) / CLUSTER_SIZE); k++) this.touched.add(k);
        } catch {
          this.failures++;
        }
      }),
    );
  }
  close(): Promise<void> {
    return this.c.close();
  }
}

async function vda(client: AgentClient): Promise<FileDiskStatus> {
  return (await client.disks()).find((d) => d.name === 'vda') as FileDiskStatus;
}

async function runMatrix(mode: Mode): Promise<void> {
  const dir = join(tmp.dir, mode);
  await mkdir(dir);
  const diskPath = join(dir, 'vda.raw');
  await makeDisk(diskPath, SIZE, mode === 'full' ? 11 : 12);
  const plan = noFaults();
  const agent: Agent = await startAgent(
    parseAgentConfig({
      hostId: 'scenarios',
      stateDir: join(dir, 'state'),
      disks: [{ name: 'vda', path: diskPath }],
      store: { bucket: 'unused-bucket', prefix: '', endpoint: 'http://127.0.0.1:9', region: 'us-east-1' },
    }),
    {
      log: silentLogger,
      wrapDevice: (d) => new FaultyDevice(d, plan),
      wrapSink: (s) => new PlannedSink(s, plan),
      wrapClusterSink: (s) => new PlannedClusterSink(s, plan),
    },
  );
  const client = new AgentClient(agent.controlSocket);
  const guest = await Guest.connect(agent.nbdSocket!);
  let n = 0;
  const backup = async (m: Mode, extra: Record<string, unknown> = {}): Promise<{ st: BackupStatus; path: string }> => {
    const path = join(dir, `b${n++}.cwa`);
    const st = await client.startBackup({ mode: m, target: `file:${path}`, ...extra });
    return { st: await client.waitForBackup(st.uuid, undefined, 20), path };
  };
  try {
    const first = await backup('full');
    expect(first.st.status).toBe('done');
    const chain = [first.path];
    let lastGood = first.st.uuid;
    /** Clusters written since the last successful backup's snapshot. */
    let sinceGood = new Set<number>();

    for (const [i, f] of FAILURES.entries()) {
      const label = `${mode} / ${f.name}`;
      const seed = (mode === 'full' ? 1000 : 2000) + 10 * i;
      guest.touched.clear();
      guest.failures = 0;
      await guest.writes(seed, 8);
      for (const c of guest.touched) sinceGood.add(c);
      const atStart = await readFile(diskPath);

      Object.assign(plan, noFaults());
      f.arm(plan);
      const path = join(dir, `b${n++}.cwa`);
      const fleeceDir = join(dir, `fleece-${i}`);
      await mkdir(fleeceDir);
      // A sink that fails on the archive header fails the request itself.
      const started = await client.startBackup({ mode, target: `file:${path}`, ...(f.request?.(fleeceDir) ?? {}) }).catch((err: Error) => err);
      if (!(started instanceof Error)) expect(started.mode, label).toBe(mode);
      // The guest keeps writing while the backup runs: most land on clusters not yet copied.
      // Half of them on clusters the backup must copy (for an incremental, the dirty ones).
      const mustCopy = [...sinceGood].slice(0, 6);
      guest.touched.clear();
      const writing = Promise.all([guest.writes(seed + 1, 6), guest.writes(seed + 3, 0, mustCopy)]);
      f.armDuring?.(plan);
      await writing;
      const during = new Set(guest.touched);
      if (!f.cancel) plan.clusterDelayMs = 0; // the fault met the writes; let the rest of the pass run fast
      if (f.cancel) await client.cancel();
      const st: Pick<BackupStatus, 'status' | 'error' | 'uuid'> =
        started instanceof Error ? { status: 'error', error: started.message, uuid: '' } : await client.waitForBackup(started.uuid, undefined, 20);
      Object.assign(plan, { ...noFaults(), fired: plan.fired });

      expect(st.status, `${label}: ${st.error}`).toBe(f.outcome);
      if (f.error) expect(st.error, label).toMatch(f.error);
      if (f.fires) expect(plan.fired, `${label}: the fault fired`).toBeGreaterThan(0);
      if (f.guestWritesFail) expect(guest.failures, `${label}: guest writes broken by the policy`).toBeGreaterThan(0);
      else expect(guest.failures, `${label}: guest writes`).toBe(0);
      const d = await vda(client);
      expect(d.inBackup, label).toBe(false);
      expect(d.bitmap.state, label).toBe('valid');

      if (st.status === 'done') {
        // The archive is the disk at the backup's start, whatever the guest wrote during it.
        // A full starts a new chain.
        if (mode === 'full') chain.length = 0;
        expect(firstDiff(await restoreChain([...chain, path]), atStart), `${label}: snapshot`).toBe(-1);
        chain.push(path);
        lastGood = st.uuid;
        sinceGood = during;
      } else {
        await expect(stat(path), label).rejects.toThrow(/ENOENT/);
        await expect(stat(`${path}.partial`), label).rejects.toThrow(/ENOENT/);
        for (const c of during) sinceGood.add(c);
      }
      // No dirty bit lost: every cluster written since the last good snapshot is still dirty.
      expect(d.bitmap.dirtyBytes!, `${label}: dirty bytes`).toBeGreaterThanOrEqual(sinceGood.size * CLUSTER_SIZE);

      // More writes, then an incremental on the last good backup restores byte-identical.
      await guest.writes(seed + 2, 3);
      const next = await backup('incremental');
      expect(next.st, label).toMatchObject({ status: 'done', mode: 'incremental', parentUuid: lastGood });
      chain.push(next.path);
      lastGood = next.st.uuid;
      sinceGood = new Set();
      expect(firstDiff(await restoreChain(chain), await readFile(diskPath)), `${label}: chain after`).toBe(-1);
    }
  } finally {
    await guest.close().catch(() => undefined);
    await agent.stop();
  }
}

describe('backup scenarios through the agent (iotests 257 / copy-before-write / image-fleecing shapes)', () => {
  it('full backups: every failure point, guest writes during, bitmap kept, next incremental exact', async () => {
    await runMatrix('full');
  }, 180_000);

  it('incremental backups: every failure point, guest writes during, bitmap kept, next incremental exact', async () => {
    await runMatrix('incremental');
  }, 180_000);

  it('SIGKILL of the agent mid-backup (full and incremental): the restarted agent forces a full backup that restores exactly', async () => {
    const dir = join(tmp.dir, 'kill');
    await mkdir(dir);
    const diskPath = join(dir, 'vda.raw');
    await makeDisk(diskPath, SIZE, 13);
    const cfg = await writeAgentConfig(dir, {
      hostId: 'scenarios-kill',
      stateDir: join(dir, 'state'),
      disks: [{ name: 'vda', path: diskPath }],
      store: { bucket: 'unused-bucket', prefix: '', endpoint: 'http://127.0.0.1:9', region: 'us-east-1' },
      // Backups here go to files: the unreachable store fails the start-up checks by design.
      startDegraded: true,
    });
    let proc = await spawnAgent(cfg);
    try {
      let client = new AgentClient(proc.controlSocket);
      const full = await client.startBackup({ mode: 'full', target: `file:${join(dir, 'k0.cwa')}` });
      expect((await client.waitForBackup(full.uuid, undefined, 20)).status).toBe('done');
      for (const [i, mode] of (['incremental', 'full'] as const).entries()) {
        const guest = await Guest.connect(proc.nbdSocket!);
        await guest.writes(3000 + i, 6);
        // Rate-limited so the kill lands mid-pass, while the guest writes.
        const st = await client.startBackup({ mode, target: `file:${join(dir, `killed-${i}.cwa`)}`, speed: 256 * 1024 });
        await guest.writes(3100 + i, 10);
        expect((await client.status()).status).toBe('active');
        await proc.kill();
        await guest.close().catch(() => undefined);
        await expect(stat(join(dir, `killed-${i}.cwa`))).rejects.toThrow(/ENOENT/);

        proc = await spawnAgent(cfg);
        client = new AgentClient(proc.controlSocket);
        const d = await vda(client);
        expect(d.bitmap.state, `after SIGKILL during ${mode} (${st.uuid})`).toBe('invalid');
        expect(d.bitmap.reason).toMatch(/uncleanly/);
        const after = join(dir, `after-${i}.cwa`);
        const next = await client.startBackup({ mode: 'incremental', target: `file:${after}` });
        expect(next.mode).toBe('full');
        expect((await client.waitForBackup(next.uuid, undefined, 20)).status).toBe('done');
        expect(firstDiff(await restoreChain([after]), await readFile(diskPath))).toBe(-1);
      }
    } finally {
      await proc.kill();
    }
  }, 120_000);
});
