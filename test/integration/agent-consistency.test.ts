/**
 * THE consistency stress test, through the real agent and real NBD clients:
 * copy the disk, start a backup (slow sink), let several concurrent qemu-io
 * processes issue seeded random overlapping writes / zero writes / discards,
 * then extract the archive: it must equal the copy byte for byte.
 *
 * Seeds: SEEDS_PER_VARIANT per variant × {no fleecing, fleecing}, all with a
 * deliberately slow sink (backpressure reaches CBW). The CBW engine's own
 * tests run many more seeds in-process; here every seed costs real client
 * processes, so the count is kept small enough for the CI budget.
 * COWSTREAM_STRESS_SEEDS raises it (e.g. 25 → 50 seeds in total).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startAgent, type Agent } from '../../src/agent/agent.js';
import { parseAgentConfig } from '../../src/agent/config.js';
import { AgentClient } from '../../src/agent/control-client.js';
import { silentLogger } from '../../src/agent/log.js';
import { ZstdPool } from '../../src/codec/zstd-pool.js';
import { makeDisk, makeTempDir } from '../helpers/agent-process.js';
import { applyArchive, firstDiff } from '../helpers/agent-archive.js';
import { concurrentWorkload, nbdUri, runQemuIo as runQemuIoCmds } from '../helpers/agent-workload.js';
import { SlowClusterSink, SlowSink } from '../helpers/agent-sinks.js';

const SEEDS_PER_VARIANT = Number(process.env.COWSTREAM_STRESS_SEEDS ?? 10);
// Not a cluster multiple: the last partial cluster is exercised too.
const SIZE = 2 * 1024 * 1024 + 3 * 4096;
/** ~1 s per backup: the workload runs while the job is still copying. */
const SINK_BYTES_PER_SEC = 2 * 1024 * 1024;
const CLIENTS = 3;
const OPS = 25;

let tmp: { dir: string; cleanup(): Promise<void> };
let agent: Agent;
let client: AgentClient;
let pool: ZstdPool;
let diskPath: string;

beforeAll(async () => {
  tmp = await makeTempDir('cowstream-agent-stress-');
  diskPath = join(tmp.dir, 'vda.raw');
  await makeDisk(diskPath, SIZE, 42);
  agent = await startAgent(
    parseAgentConfig({
      hostId: 'stress',
      stateDir: join(tmp.dir, 'state'),
      disks: [{ name: 'vda', path: diskPath }],
      nbd: { listen: '127.0.0.1:0' },
      store: { bucket: 'unused-bucket', prefix: '', endpoint: 'http://127.0.0.1:9', region: 'us-east-1' },
    }),
    { log: silentLogger, wrapClusterSink: (s) => new SlowClusterSink(s, SINK_BYTES_PER_SEC), wrapSink: (s) => new SlowSink(s, 4 * SINK_BYTES_PER_SEC) },
  );
  client = new AgentClient(agent.controlSocket);
  pool = new ZstdPool({ workers: 1 });
});

afterAll(async () => {
  await pool?.close();
  await agent?.stop();
  await tmp?.cleanup();
});

describe.each([
  { variant: 'no fleecing', fleecing: false },
  { variant: 'fleecing', fleecing: true },
])('consistency under concurrent NBD writes ($variant, slow sink)', ({ fleecing }) => {
  it(`${SEEDS_PER_VARIANT} seeds: archive == disk at backup start`, async () => {
    let cbwTotal = 0;
    let overlapped = 0;
    for (let i = 0; i < SEEDS_PER_VARIANT; i++) {
      const seed = (fleecing ? 1000 : 0) + i + 1;
      const copy = await readFile(diskPath); // quiescent: no client is connected
      const archive = join(tmp.dir, `seed-${seed}.cwa`);
      const st = await client.startBackup({
        mode: 'full',
        target: `file:${archive}`,
        ...(fleecing ? { fleecing: { dir: join(tmp.dir, 'scratch'), maxBytes: 16 * 1024 * 1024 } } : {}),
      });
      await concurrentWorkload(nbdUri('127.0.0.1', agent.nbdAddress!.port, 'vda'), seed, SIZE, CLIENTS, OPS);
      if ((await client.status()).status === 'active') overlapped++;
      const done = await client.waitForBackup(st.uuid, undefined, 50);
      expect(done.status, `seed ${seed}: ${done.error}`).toBe('done');
      cbwTotal += done.cbwClusters;

      const images = new Map<string, Buffer>();
      await applyArchive(archive, images, pool);
      const restored = images.get('vda')!;
      const diff = firstDiff(restored, copy);
      expect(diff, `seed ${seed}${fleecing ? ' (fleecing)' : ''}: first differing byte at ${diff}`).toBe(-1);
      // The workload really changed the disk (so the test can fail).
      expect((await readFile(diskPath)).equals(copy), `seed ${seed}: workload changed nothing`).toBe(false);
    }
    // Guest writes hit clusters before the background pass did: CBW was exercised.
    expect(cbwTotal).toBeGreaterThan(0);
    // At least one whole workload ran inside a backup (usually all do; a loaded CI machine slows the clients).
    expect(overlapped).toBeGreaterThanOrEqual(1);
  }, 240_000);
});

describe('copy-before-write error policy through NBD (cbwTimeoutMs 1 ms, slow sink)', () => {
  const tail = SIZE - 2 * 65536; // still NEED when the write comes: the background pass goes in order

  it('break-guest-write: the NBD client gets EIO, the snapshot stays intact', async () => {
    const copy = await readFile(diskPath);
    const archive = join(tmp.dir, 'bgw.cwa');
    const st = await client.startBackup({ mode: 'full', target: `file:${archive}`, cbwTimeoutMs: 1, onCbwError: 'break-guest-write' });
    const uri = nbdUri('127.0.0.1', agent.nbdAddress!.port, 'vda');
    await expect(runQemuIoCmds(uri, [`write -P 0x5a ${tail} 4096`])).rejects.toThrow(/Input\/output error/);
    const done = await client.waitForBackup(st.uuid, undefined, 50);
    expect(done.status, done.error ?? '').toBe('done');
    const images = new Map<string, Buffer>();
    await applyArchive(archive, images, pool);
    expect(firstDiff(images.get('vda')!, copy)).toBe(-1);
    expect((await readFile(diskPath)).equals(copy)).toBe(true); // the refused write did not land
    await runQemuIoCmds(uri, [`write -P 0x5a ${tail} 4096`]); // and writes work again after the backup
  });

  it('break-snapshot: the guest write proceeds and the backup fails saying why', async () => {
    const st = await client.startBackup({ mode: 'full', target: `file:${join(tmp.dir, 'bs.cwa')}`, cbwTimeoutMs: 1 });
    await runQemuIoCmds(nbdUri('127.0.0.1', agent.nbdAddress!.port, 'vda'), [`write -P 0x6b ${tail} 4096`, `read -P 0x6b ${tail} 4096`]);
    const done = await client.waitForBackup(st.uuid, undefined, 50);
    expect(done.status).toBe('error');
    expect(done.error).toMatch(/copy-before-write/);
  });
});
