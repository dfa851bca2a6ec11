/**
 * The agent backing up drives of a REAL qemu-storage-daemon (QEMU 7.2)
 * configured in its `qemu[]` section: GET /disks shows the drive and its
 * bitmap as QEMU reports it; POST /backups runs the pull-mode backup into the
 * agent's S3 store (embedded s3rver) with the usual status/cancel/409;
 * full → guest writes → incremental → the chain restored from S3 equals the
 * drive; mixing file disks and QEMU drives is refused. Also the CLI's
 * `--qemu-nbd` flag.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { readdirSync, writeFileSync } from 'node:fs';
import { mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startAgent, type Agent } from '../../src/agent/agent.js';
import { parseAgentConfig } from '../../src/agent/config.js';
import { AgentClient } from '../../src/agent/control-client.js';
import { silentLogger } from '../../src/agent/log.js';
import type { BackupStatus, QemuDiskStatus } from '../../src/agent/backup-request.js';
import { ZstdPool } from '../../src/codec/zstd-pool.js';
import { createS3Client } from '../../src/store/s3-client.js';
import { readEmbeddedCredentials } from '../../src/store/embedded-credentials.js';
import { buildRestorePlan, sourceOpener } from '../../src/restore/locate.js';
import { restoreArchive } from '../../src/restore/engine.js';
import { QmpClient } from '../../src/qemu/qmp.js';
import { copyExport, createImage, guestWrites, pexecFile, startDaemon, tempDir, type QemuDaemon } from '../helpers/qemu-daemon.js';
import { firstDiff } from '../helpers/qemu-archive.js';
import { makeDisk, runCli } from '../helpers/agent-process.js';
import { SlowSink } from '../helpers/agent-sinks.js';

const SIZE = 32 * 1024 * 1024;
const pool = new ZstdPool({ workers: 2 });
const t = tempDir('cowstream-agent-qemu-');
const img = join(t.dir, 'd0.qcow2');
let d: QemuDaemon;
let agent: Agent;
let client: AgentClient;
const slow = { on: false };

/** POST/GET through the control socket, returning the HTTP status and JSON (the client maps errors to exceptions). */
async function http(method: string, path: string, body?: unknown): Promise<{ status: number; json: any }> {
  const res = await client.raw(method, path, body);
  let text = '';
  for await (const c of res) text += (c as Buffer).toString('utf8');
  return { status: res.statusCode ?? 0, json: JSON.parse(text) };
}

async function qemuDisk(): Promise<QemuDiskStatus> {
  const disk = (await client.disks()).find((x) => x.name === 'vm0');
  expect(disk?.kind).toBe('qemu');
  return disk as QemuDiskStatus;
}

async function nodeNames(): Promise<string[]> {
  const qmp = await QmpClient.connect(d.qmpSocket);
  try {
    const nodes = await qmp.execute<{ 'node-name': string }[]>('query-named-block-nodes', { flat: true });
    return nodes.map((n) => n['node-name']).sort();
  } finally {
    await qmp.close();
  }
}

async function backup(body: Record<string, unknown>): Promise<BackupStatus> {
  const started = await client.startBackup({ target: 's3', disks: ['vm0'], ...body });
  return client.waitForBackup(started.uuid, undefined, 50);
}

/** Restores the chain ending at archive `uuid` from the agent's S3 store; returns drive name → bytes. */
async function restoreFromS3(uuid: string, dir: string): Promise<Map<string, Buffer>> {
  const s3 = agent.s3!;
  const store = { bucket: s3.bucket, prefix: s3.prefix, endpoint: s3.endpoint!, credentials: (await readEmbeddedCredentials(agent.config.stateDir)).s3 };
  const s3client = createS3Client(store);
  try {
    const ctx = { store, client: s3client };
    const plan = await buildRestorePlan(uuid, ctx);
    await mkdir(dir, { recursive: true });
    const r = await restoreArchive({ plan, openSource: sourceOpener(ctx), target: dir, compressor: pool, force: true });
    const out = new Map<string, Buffer>();
    for (const dev of r.devices) out.set(dev.name, await readFile(dev.path ?? join(dir, `${dev.name}.raw`)));
    return out;
  } finally {
    s3client.destroy();
  }
}

beforeAll(async () => {
  await createImage(img, 'qcow2', String(SIZE));
  d = await startDaemon(t.dir, [{ path: img, format: 'qcow2' }]);
  // Some incompressible data so the archive has real extents.
  const f = join(t.dir, 'rand.bin');
  writeFileSync(f, randomBytes(6 * 1024 * 1024));
  await pexecFile('qemu-io', ['-f', 'raw', '-c', `write -s ${f} 1048576 6291456`, d.guestUri(0)]);
  await makeDisk(join(t.dir, 'f0.raw'), 1024 * 1024, 3);
  const config = parseAgentConfig({
    hostId: 'qhost',
    stateDir: join(t.dir, 'state'),
    disks: [{ name: 'f0', path: 'f0.raw' }],
    nbd: { listen: '127.0.0.1:0' },
    qemu: [{ qmpSocket: d.qmpSocket, nbdSocket: d.nbdSocket, fleecingDir: t.dir, drives: ['d0=vm0'] }],
  }, t.dir);
  agent = await startAgent(config, { log: silentLogger, wrapSink: (s) => (slow.on ? new SlowSink(s, 2 * 1024 * 1024) : s) });
  client = new AgentClient(agent.controlSocket);
}, 30_000);

afterAll(async () => {
  await agent?.stop();
  await d?.stop();
  await pool.close();
  t.cleanup();
});

describe('agent with a qemu[] entry (qemu-storage-daemon)', () => {
  it('GET /disks lists the QEMU drive next to the file disk', async () => {
    const disks = await client.disks();
    expect(disks.map((x) => [x.kind, x.name])).toEqual([['file', 'f0'], ['qemu', 'vm0']]);
    const q = await qemuDisk();
    expect(q).toMatchObject({ node: 'd0', qmpSocket: d.qmpSocket, size: SIZE, format: 'qcow2', inBackup: false, lastBackup: null });
    expect(q.bitmap.state).toBe('invalid');
    expect(q.bitmap.reason).toMatch(/no cowstream dirty bitmap/);
    // GET /disks left the monitor free (one client at a time): a second client gets in at once.
    expect(await nodeNames()).toEqual(['d0', 'd0-file', 'd0-guest']);
  });

  it('refuses to mix file disks and QEMU drives, and QEMU-incompatible options, with 400 naming the field', async () => {
    const mixed = await http('POST', '/backups', { mode: 'full', disks: ['f0', 'vm0'] });
    expect(mixed.status).toBe(400);
    expect(mixed.json.error.field).toBe('disks');
    expect(mixed.json.error.message).toMatch(/cannot mix file disks \(f0\) and QEMU drives \(vm0\)/);
    const speed = await http('POST', '/backups', { mode: 'full', disks: ['vm0'], speed: '1M' });
    expect(speed.status).toBe(400);
    expect(speed.json.error.field).toBe('speed');
    const unknown = await http('POST', '/backups', { mode: 'full', disks: ['vm9'] });
    expect(unknown.status).toBe(400);
    expect(unknown.json.error.message).toMatch(/unknown disk "vm9" \(known: f0, vm0\)/);
  });

  it('full → guest writes → incremental to S3; the chain restored from S3 equals the drive', async () => {
    const full = await backup({ mode: 'incremental' }); // no bitmap yet → full, saying why
    expect(full).toMatchObject({ status: 'done', mode: 'full', requestedMode: 'incremental', parentUuid: null, disks: ['vm0'], target: 's3', error: null });
    expect(full.modeReason).toMatch(/no cowstream dirty bitmap/);
    // The daemon attaches the guest through a raw filter: our own filter graph, and the status says so.
    expect(full.qemuGraph).toEqual({ kind: 'filter', reason: expect.stringMatching(/raw filter/) });
    expect(full.key).toBe(`archives/qhost/${full.uuid}.cwa`);
    expect(full.total).toBe(SIZE);
    expect(full.archiveBytes).toBeGreaterThan(6 * 1024 * 1024);
    let q = await qemuDisk();
    expect(q.bitmap).toMatchObject({ state: 'valid', parentUuid: full.uuid, persistent: true, names: [`cowstream-${full.uuid}`] });
    expect(q.lastBackup).toMatchObject({ uuid: full.uuid, mode: 'full' });

    // The guest writes through the daemon's writable export; then it is quiet.
    await guestWrites(d.guestUri(0), 5, 40, SIZE);
    q = await qemuDisk();
    expect(q.bitmap.dirtyBytes).toBeGreaterThan(0);
    const ref = join(t.dir, 'ref.raw');
    await copyExport(d.guestUri(0), ref);

    const inc = await backup({ mode: 'incremental' });
    expect(inc).toMatchObject({ status: 'done', mode: 'incremental', parentUuid: full.uuid, error: null });
    expect(inc.modeReason).toBeUndefined();
    // An incremental stores only what changed.
    expect(inc.archiveBytes).toBeLessThan(full.archiveBytes / 2);
    q = await qemuDisk();
    expect(q.bitmap).toMatchObject({ state: 'valid', parentUuid: inc.uuid, dirtyBytes: 0 });
    expect(q.lastBackup).toMatchObject({ uuid: inc.uuid, mode: 'incremental' });

    const restored = await restoreFromS3(inc.uuid, join(t.dir, 'restore-inc'));
    expect([...restored.keys()]).toEqual(['vm0']);
    expect(firstDiff(restored.get('vm0')!, await readFile(ref))).toBeNull();
    // The full alone is the drive before the writes: the incremental really carried them.
    const fullOnly = await restoreFromS3(full.uuid, join(t.dir, 'restore-full'));
    expect(firstDiff(fullOnly.get('vm0')!, await readFile(ref))).not.toBeNull();
    expect(await nodeNames()).toEqual(['d0', 'd0-file', 'd0-guest']);
    expect(readdirSync(t.dir).filter((f) => f.endsWith('.fleece'))).toEqual([]);
  }, 30_000);

  it('a running QEMU backup answers 409 to a second one, shows progress, and cancel keeps the bitmap generation', async () => {
    const before = await qemuDisk();
    slow.on = true;
    try {
      const started = await client.startBackup({ mode: 'full', disks: ['vm0'], target: 's3' });
      const second = await http('POST', '/backups', { mode: 'full', disks: ['f0'] });
      expect(second.status).toBe(409);
      // GET /disks during the backup shares the backup's QMP connection.
      const during = await qemuDisk();
      expect(during.inBackup).toBe(true);
      let st = await client.status();
      for (let i = 0; i < 100 && st.transferred === 0; i++) {
        await new Promise((r) => setTimeout(r, 50));
        st = await client.status();
      }
      expect(st).toMatchObject({ uuid: started.uuid, status: 'active', total: SIZE });
      expect(st.transferred).toBeGreaterThan(0);
      const cancelled = await client.cancel();
      expect(cancelled).toMatchObject({ uuid: started.uuid, status: 'cancelled' });
    } finally {
      slow.on = false;
    }
    const after = await qemuDisk();
    expect(after.bitmap).toMatchObject({ state: 'valid', parentUuid: before.bitmap.parentUuid });
    expect(after.lastBackup).toEqual(before.lastBackup);
    expect(await nodeNames()).toEqual(['d0', 'd0-file', 'd0-guest']);
  }, 30_000);

  it('the CLI passes --qemu-nbd to the pull backup (QEMU already runs an NBD server)', async () => {
    const out = join(t.dir, 'cli');
    await mkdir(out);
    const base = ['backup', '--qemu', d.qmpSocket, '--drive', 'd0=vm0', '--fleecing', t.dir, '--to', `file:${out}`, '--json'];
    const without = await runCli(base, { COWSTREAM_QEMU_NBD_SOCKET: '' });
    expect(without.code).not.toBe(0);
    // --json: the error is printed as JSON on stdout.
    expect(without.stdout.toString() + without.stderr).toMatch(/already runs an NBD server/);
    const ok = await runCli([...base, '--qemu-nbd', d.nbdSocket], { COWSTREAM_QEMU_NBD_SOCKET: '' });
    expect(ok.stderr).toBe('');
    expect(ok.code).toBe(0);
    const r = JSON.parse(ok.stdout.toString()) as { uuid: string; target: string };
    expect(r.target).toBe(join(out, `${r.uuid}.cwa`));
    expect(await nodeNames()).toEqual(['d0', 'd0-file', 'd0-guest']);
  }, 30_000);

  it('an agent with only a qemu entry backs up its drives when POST /backups names no disks', async () => {
    const config = parseAgentConfig({
      hostId: 'qonly',
      stateDir: join(t.dir, 'state2'),
      nbd: { listen: '127.0.0.1:0' },
      qemu: [{ qmpSocket: d.qmpSocket, nbdSocket: d.nbdSocket, fleecingDir: t.dir, drives: [{ node: 'd0', name: 'vm0' }] }],
    }, t.dir);
    const a2 = await startAgent(config, { log: silentLogger });
    try {
      const c2 = new AgentClient(a2.controlSocket);
      const info = await c2.call<{ disks: string[]; qemu: unknown }>('GET', '/');
      expect(info).toMatchObject({ disks: [], qemu: [{ qmpSocket: d.qmpSocket, drives: ['d0=vm0'] }] });
      const target = join(t.dir, 'only-qemu.cwa');
      const started = await c2.startBackup({ mode: 'full', target: `file:${target}` });
      const st = await c2.waitForBackup(started.uuid, undefined, 50);
      expect(st).toMatchObject({ status: 'done', disks: ['vm0'], target: `file:${target}` });
      expect((await readFile(target)).length).toBe(st.archiveBytes);

      // Target "-": answered at once (mode predicted from QEMU's bitmap), archive read from the stream.
      const s2 = await c2.startBackup({ mode: 'incremental', target: '-' });
      expect(s2).toMatchObject({ mode: 'incremental', parentUuid: st.uuid, target: '-' });
      const res = await c2.raw('GET', '/backups/current/stream');
      expect(res.statusCode).toBe(200);
      let streamed = 0;
      for await (const c of res) streamed += (c as Buffer).length;
      const st2 = await c2.waitForBackup(s2.uuid, undefined, 50);
      expect(st2).toMatchObject({ status: 'done', mode: 'incremental', parentUuid: st.uuid });
      expect(streamed).toBe(st2.archiveBytes);
    } finally {
      await a2.stop();
    }
    expect(await nodeNames()).toEqual(['d0', 'd0-file', 'd0-guest']);
  }, 30_000);
});
