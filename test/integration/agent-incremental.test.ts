/**
 * Incremental backups through the agent:
 *   full + 3 incrementals with NBD writes in between, each chain restored
 *   (oldest first, format reader) == the disk at that backup;
 *   a sink failure mid-incremental, then an incremental that still has
 *   every change; clean restart keeps the bitmap; SIGKILL + restart forces
 *   a full backup and the API says why.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { startAgent, type Agent } from '../../src/agent/agent.js';
import { parseAgentConfig } from '../../src/agent/config.js';
import { AgentClient } from '../../src/agent/control-client.js';
import { silentLogger } from '../../src/agent/log.js';
import type { BackupStatus } from '../../src/agent/backup-request.js';
import { ZstdPool } from '../../src/codec/zstd-pool.js';
import { makeDisk, makeTempDir, spawnAgent, writeAgentConfig, type AgentProcess } from '../helpers/agent-process.js';
import { applyArchive, firstDiff } from '../helpers/agent-archive.js';
import { concurrentWorkload, nbdUri } from '../helpers/agent-workload.js';
import { FailingSink } from '../helpers/agent-sinks.js';

const SIZE = 4 * 1024 * 1024;

let tmp: { dir: string; cleanup(): Promise<void> };
let diskPath: string;
let rawConfig: Record<string, unknown>;
let pool: ZstdPool;
let agent: Agent | null = null;
let proc: AgentProcess | null = null;
const failing = { armed: false, afterBytes: 1, failures: 0 };
/** Archives of the chain so far, oldest first. */
const chain: string[] = [];

async function restoreChain(): Promise<Buffer> {
  const images = new Map<string, Buffer>();
  let parent: string | null = null;
  for (const [i, p] of chain.entries()) {
    const a = await applyArchive(p, images, pool);
    if (i > 0) expect(a.parentUuid).toBe(parent);
    parent = a.uuid;
  }
  return images.get('vda')!;
}

async function backup(client: AgentClient, mode: 'full' | 'incremental', name: string): Promise<BackupStatus> {
  const path = join(tmp.dir, `${name}.cwa`);
  const st = await client.startBackup({ mode, target: `file:${path}` });
  const done = await client.waitForBackup(st.uuid, undefined, 50);
  if (done.status === 'done') chain.push(path);
  return done;
}

beforeAll(async () => {
  tmp = await makeTempDir('cowstream-agent-inc-');
  diskPath = join(tmp.dir, 'vda.raw');
  await makeDisk(diskPath, SIZE, 5);
  rawConfig = {
    hostId: 'inc',
    stateDir: join(tmp.dir, 'state'),
    disks: [{ name: 'vda', path: diskPath }],
    nbd: { listen: '127.0.0.1:0' },
    store: { bucket: 'unused-bucket', prefix: '', endpoint: 'http://127.0.0.1:9', region: 'us-east-1' },
    // Backups here go to files: the unreachable store fails the start-up checks by design.
    startDegraded: true,
  };
  pool = new ZstdPool({ workers: 1 });
});

afterAll(async () => {
  await agent?.stop();
  await proc?.kill();
  await pool?.close();
  await tmp?.cleanup();
});

describe('incremental chain through the agent', () => {
  it('full + 3 incrementals, a failed incremental, then one that still has every change', async () => {
    agent = await startAgent(parseAgentConfig(rawConfig), { log: silentLogger, wrapSink: (s) => new FailingSink(s, failing) });
    const client = new AgentClient(agent.controlSocket);
    const uri = nbdUri('127.0.0.1', agent.nbdAddress!.port, 'vda');

    const full = await backup(client, 'full', 'c0');
    expect(full.status).toBe('done');
    expect(firstDiff(await restoreChain(), await readFile(diskPath))).toBe(-1);

    let parent = full.uuid;
    for (let k = 1; k <= 3; k++) {
      await concurrentWorkload(uri, 100 + k, SIZE, 2, 15);
      const expected = await readFile(diskPath);
      const inc = await backup(client, 'incremental', `c${k}`);
      expect(inc).toMatchObject({ status: 'done', mode: 'incremental', parentUuid: parent });
      expect(inc.total).toBeGreaterThan(0);
      expect(inc.total).toBeLessThan(SIZE); // only the dirty clusters
      expect(firstDiff(await restoreChain(), expected), `chain after incremental ${k}`).toBe(-1);
      parent = inc.uuid;
    }

    // A sink failure in the middle of an incremental: the backup fails, no archive is left.
    await concurrentWorkload(uri, 200, SIZE, 2, 15);
    const dirtyBefore = (await client.disks())[0]!.bitmap.dirtyBytes!;
    expect(dirtyBefore).toBeGreaterThan(0);
    failing.armed = true;
    const failed = await backup(client, 'incremental', 'failed');
    failing.armed = false;
    expect(failed.status).toBe('error');
    expect(failed.error).toMatch(/injected sink failure/);
    expect(failing.failures).toBeGreaterThan(0);
    await expect(stat(join(tmp.dir, 'failed.cwa'))).rejects.toThrow(/ENOENT/);
    await expect(stat(join(tmp.dir, 'failed.cwa.partial'))).rejects.toThrow(/ENOENT/);
    // Reclaimed: the dirty bits of the failed attempt are all still there.
    expect((await client.disks())[0]!.bitmap.dirtyBytes).toBeGreaterThanOrEqual(dirtyBefore);

    await concurrentWorkload(uri, 201, SIZE, 2, 15);
    const expected = await readFile(diskPath);
    const after = await backup(client, 'incremental', 'c4');
    expect(after).toMatchObject({ status: 'done', mode: 'incremental', parentUuid: parent });
    expect(firstDiff(await restoreChain(), expected), 'chain after the failed incremental').toBe(-1);

    await agent.stop();
    agent = null;
  });

  it('a clean restart keeps the bitmap; SIGKILL then restart forces a full backup and says why', async () => {
    const cfgPath = await writeAgentConfig(tmp.dir, rawConfig);
    proc = await spawnAgent(cfgPath);
    let client = new AgentClient(proc.controlSocket);
    const [disk] = await client.disks();
    expect(disk!.bitmap.state).toBe('valid');
    await concurrentWorkload(nbdUri('127.0.0.1', proc.nbdPort, 'vda'), 300, SIZE, 2, 15);
    let expected = await readFile(diskPath);
    const inc = await backup(client, 'incremental', 'c5');
    expect(inc).toMatchObject({ status: 'done', mode: 'incremental' });
    expect(firstDiff(await restoreChain(), expected)).toBe(-1);

    // Writes, then SIGKILL: those writes are known to no persisted bitmap.
    await concurrentWorkload(nbdUri('127.0.0.1', proc.nbdPort, 'vda'), 301, SIZE, 2, 15);
    await proc.kill();
    proc = await spawnAgent(cfgPath);
    client = new AgentClient(proc.controlSocket);
    const [d2] = await client.disks();
    expect(d2!.bitmap.state).toBe('invalid');
    expect(d2!.bitmap.reason).toMatch(/uncleanly/);
    expect(proc.logs.some((l) => l.msg === 'disk opened' && l.bitmap === 'invalid')).toBe(true);

    expected = await readFile(diskPath);
    chain.length = 0;
    const st = await client.startBackup({ mode: 'incremental', target: `file:${join(tmp.dir, 'after-kill.cwa')}` });
    expect(st.mode).toBe('full');
    expect(st.modeReason).toMatch(/uncleanly/);
    const done = await client.waitForBackup(st.uuid, undefined, 50);
    expect(done).toMatchObject({ status: 'done', mode: 'full', requestedMode: 'incremental', parentUuid: null });
    expect(done.modeReason).toMatch(/uncleanly/);
    chain.push(join(tmp.dir, 'after-kill.cwa'));
    expect(firstDiff(await restoreChain(), expected)).toBe(-1);

    // The CLI shows the reason too (status of the current backup).
    expect(await proc.stop()).toBe(0);
    proc = null;
  });
});
