/**
 * Races around POST /backups for the drives of a REAL qemu-storage-daemon
 * (QEMU 7.2), on an agent whose only disks are one `qemu[]` entry. Of many
 * simultaneous requests exactly one wins and the others get 409 at once;
 * GET /backups/current and cancel see the winner (the uuid its 202 named);
 * a cancel that arrives while the winner is still starting cancels it and
 * leaves QEMU's graph as it was; stop() waits for a running QEMU backup.
 *
 * "At once" is made observable with QEMU's monitor itself: it serves one
 * client at a time, so while the test holds it the winner cannot get past
 * its first QMP step and cannot have been answered. Every answer that
 * arrives then was decided without waiting for the winner. A QMP proxy in
 * front of the daemon's socket puts a cancel in flight with each QMP command
 * a start sends, one after the other.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { connect, createServer, type Server } from 'node:net';
import { join } from 'node:path';
import { startAgent, type Agent } from '../../src/agent/agent.js';
import { parseAgentConfig } from '../../src/agent/config.js';
import { AgentClient } from '../../src/agent/control-client.js';
import { parseBackupRequest, type BackupStatus } from '../../src/agent/backup-request.js';
import { silentLogger } from '../../src/agent/log.js';
import { ConflictError } from '../../src/errors.js';
import { QmpClient } from '../../src/qemu/qmp.js';
import { createImage, graphState, pexecFile, startDaemon, tempDir, type QemuDaemon, type QemuGraphState } from '../helpers/qemu-daemon.js';
import { SlowSink } from '../helpers/agent-sinks.js';

const SIZE = 32 * 1024 * 1024;
/** Simultaneous requests per burst. */
const N = 8;
const t = tempDir('cowstream-agent-qemu-races-');
const fleeceDir = join(t.dir, 'fleece');
const outDir = join(t.dir, 'out');
const configFiles = Array.from({ length: 8 }, (_, i) => join(t.dir, `vm${i}.conf`));
let d: QemuDaemon;
/** QEMU's graph before any backup; every test must leave it exactly so. */
let clean: QemuGraphState;
let agent: Agent | null = null;
let seq = 0;

beforeAll(async () => {
  const img = join(t.dir, 'd0.qcow2');
  await createImage(img, 'qcow2', String(SIZE));
  d = await startDaemon(t.dir, [{ path: img, format: 'qcow2' }]);
  // Incompressible data: at the slow sink's 1 MiB/s the backup runs for seconds.
  const f = join(t.dir, 'rand.bin');
  writeFileSync(f, randomBytes(6 * 1024 * 1024));
  await pexecFile('qemu-io', ['-f', 'raw', '-c', `write -s ${f} 1048576 6291456`, d.guestUri(0)]);
  // Config files make POST /backups await file reads before its run exists (the race window).
  for (const [i, p] of configFiles.entries()) writeFileSync(p, `cores: ${i}\n`.repeat(2000));
  mkdirSync(fleeceDir);
  mkdirSync(outDir);
  clean = await graphState(d.qmpSocket);
}, 30_000);

afterEach(async () => {
  await agent?.stop();
  agent = null;
});

afterAll(async () => {
  await d?.stop();
  t.cleanup();
});

async function qemuAgent(name: string, qmpSocket = d.qmpSocket): Promise<{ agent: Agent; client: AgentClient }> {
  const config = parseAgentConfig(
    { hostId: 'qraces', stateDir: join(t.dir, `state-${name}`), qemu: [{ qmpSocket, nbdSocket: d.nbdSocket, fleecingDir: fleeceDir, drives: ['d0=vm0'] }] },
    t.dir,
  );
  agent = await startAgent(config, { log: silentLogger, wrapSink: (s) => new SlowSink(s, 1024 * 1024) });
  return { agent, client: new AgentClient(agent.controlSocket) };
}

function body(): Record<string, unknown> {
  return { mode: 'full', disks: ['vm0'], target: `file:${join(outDir, `b${seq++}.cwa`)}`, configFiles };
}

/** POST/GET through the control socket: HTTP status and JSON (the client maps errors to exceptions). */
async function http(client: AgentClient, method: string, path: string, payload?: unknown): Promise<{ status: number; json: any }> {
  const res = await client.raw(method, path, payload);
  let text = '';
  for await (const c of res) text += (c as Buffer).toString('utf8');
  return { status: res.statusCode ?? 0, json: JSON.parse(text) };
}

/** Polls `pred` every 10 ms for at most `ms`; whether it became true. */
async function until(pred: () => boolean | Promise<boolean>, ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  for (;;) {
    if (await pred()) return true;
    if (Date.now() > end) return false;
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** GET /backups/current once a run exists (404 before the first one). */
async function currentRun(client: AgentClient): Promise<BackupStatus> {
  let cur: { status: number; json: any } = { status: 0, json: null };
  await until(async () => (cur = await http(client, 'GET', '/backups/current')).status === 200, 3000);
  expect(cur.status).toBe(200);
  return cur.json as BackupStatus;
}

/** A QMP socket in front of the daemon's: `onCommand` runs as each command passes, before QEMU sees it. */
async function qmpProxy(path: string, onCommand: (name: string) => void): Promise<Server> {
  const server = createServer((c) => {
    const up = connect(d.qmpSocket);
    c.on('data', (chunk: Buffer) => {
      // QmpClient writes one JSON command per line.
      for (const m of chunk.toString('utf8').matchAll(/"execute":"([^"]+)"/g)) onCommand(m[1]!);
      up.write(chunk);
    });
    up.pipe(c);
    c.on('error', () => up.destroy());
    up.on('error', () => c.destroy());
    c.on('close', () => up.end());
  });
  await new Promise<void>((r) => server.listen(path, r));
  return server;
}

/** Nothing of a backup left: QEMU's graph as before, no fleecing image or run record, no (partial) archive. */
async function expectNothingLeft(): Promise<void> {
  expect(await graphState(d.qmpSocket)).toEqual(clean);
  expect(readdirSync(fleeceDir)).toEqual([]);
  expect(readdirSync(outDir)).toEqual([]);
}

describe('concurrent POST /backups for the drives of a qemu[] entry (qemu-storage-daemon)', () => {
  it('exactly one of many simultaneous requests wins, the others get 409 at once; status and cancel see the winner', async () => {
    const { client } = await qemuAgent('burst');
    const answered: { status: number; json: any }[] = [];
    let posts: Promise<{ status: number; json: any }>[] = [];
    let running: BackupStatus | null = null;
    const monitor = await QmpClient.connect(d.qmpSocket);
    try {
      posts = Array.from({ length: N }, () =>
        http(client, 'POST', '/backups', body()).then((r) => {
          answered.push(r);
          return r;
        }),
      );
      await until(() => answered.length >= N - 1, 3000);
      // The winner is blocked on QEMU's monitor; the losers did not wait for it.
      expect(answered.map((r) => r.status)).toEqual(Array(N - 1).fill(409));
      for (const r of answered) expect(r.json.error.message).toMatch(/another backup is starting|still running/);
      running = await currentRun(client);
      expect(running.status).toBe('active');
    } finally {
      await monitor.close();
    }
    const all = await Promise.all(posts);
    const won = all.filter((r) => r.status === 202);
    expect(won).toHaveLength(1);
    expect(all.filter((r) => r.status === 409)).toHaveLength(N - 1);
    const uuid = won[0]!.json.uuid as string;
    expect(uuid).toBe(running!.uuid);
    expect(await http(client, 'GET', '/backups/current')).toMatchObject({ status: 200, json: { uuid, status: 'active' } });
    // A second round while the winner runs: still 409, at once.
    const again = await Promise.all(Array.from({ length: 3 }, () => http(client, 'POST', '/backups', body())));
    expect(again.map((r) => r.status)).toEqual([409, 409, 409]);
    const cancelled = await http(client, 'POST', '/backups/current/cancel');
    expect(cancelled).toMatchObject({ status: 200, json: { uuid, status: 'cancelled' } });
    await expectNothingLeft();
  }, 60_000);

  it('a cancel that arrives while the winner is still starting (QEMU not yet reached) cancels it; the graph is as it was', async () => {
    const { client } = await qemuAgent('cancel-blocked');
    const monitor = await QmpClient.connect(d.qmpSocket);
    let post: Promise<{ status: number; json: any }> | null = null;
    let cancel: Promise<{ status: number; json: any }> | null = null;
    let postAnswered = false;
    try {
      post = http(client, 'POST', '/backups', body()).finally(() => (postAnswered = true));
      const running = await currentRun(client);
      expect(running.status).toBe('active');
      cancel = http(client, 'POST', '/backups/current/cancel');
      // Give the cancel time to reach the agent while the winner is still starting.
      await new Promise((r) => setTimeout(r, 200));
      expect(postAnswered).toBe(false);
    } finally {
      await monitor.close();
    }
    const [p, c] = await Promise.all([post!, cancel!]);
    expect(p.status).toBe(202);
    expect(c).toMatchObject({ status: 200, json: { uuid: p.json.uuid, status: 'cancelled' } });
    expect(await http(client, 'GET', '/backups/current')).toMatchObject({ status: 200, json: { uuid: p.json.uuid, status: 'cancelled' } });
    await expectNothingLeft();
  }, 60_000);

  it('a cancel at fixed points into a starting backup (config files, QMP set-up, fleecing, first reads) cancels exactly that backup; the graph is as it was', async () => {
    const { agent: a } = await qemuAgent('cancel-delays');
    // Event-loop turns before the cancel: 0 is before the run exists; the QMP set-up takes
    // a few hundred to a few thousand turns here, so the later ones land in it or just after.
    for (const turns of [0, 1, 10, 50, 100, 200, 400, 800, 1600, 3200, 6400]) {
      const started = a.backups.startBackup(parseBackupRequest(body()));
      for (let i = 0; i < turns; i++) await new Promise((r) => setImmediate(r));
      const cancelled = await a.backups.cancel();
      const answer = await started;
      expect({ turns, uuid: cancelled.uuid, status: cancelled.status }).toEqual({ turns, uuid: answer.uuid, status: 'cancelled' });
      expect(a.backups.current()).toMatchObject({ uuid: answer.uuid, status: 'cancelled' });
      await expectNothingLeft();
    }
  }, 120_000);

  it('a cancel as each QMP command of the start is in flight cancels exactly that backup; the graph is as it was', async () => {
    const step = { at: 0, seen: 0, sent: [] as string[], cancel: null as Promise<BackupStatus> | null };
    const proxy = await qmpProxy(join(t.dir, 'qmp-proxy.sock'), (name) => {
      step.sent.push(name);
      if (++step.seen === step.at) step.cancel = agent!.backups.cancel();
    });
    try {
      const { agent: a } = await qemuAgent('cancel-qmp', join(t.dir, 'qmp-proxy.sock'));
      // How many commands a start sends up to its snapshot point (its answer).
      Object.assign(step, { at: 0, seen: 0, sent: [], cancel: null });
      await a.backups.startBackup(parseBackupRequest(body()));
      const commands = step.sent.length;
      await a.backups.cancel();
      await expectNothingLeft();
      expect(step.sent).toContain('blockdev-reopen');
      for (let at = 1; at <= commands + 1; at++) {
        Object.assign(step, { at, seen: 0, sent: [], cancel: null });
        const answer = await a.backups.startBackup(parseBackupRequest(body()));
        // Past the snapshot point the command may come late or never: then cancel now.
        const cancelled = await (step.cancel ?? a.backups.cancel());
        expect({ at, command: step.sent[at - 1], uuid: cancelled.uuid, status: cancelled.status }).toEqual({ at, command: step.sent[at - 1], uuid: answer.uuid, status: 'cancelled' });
        await expectNothingLeft();
      }
    } finally {
      await agent?.stop();
      agent = null;
      await new Promise((r) => proxy.close(r));
    }
  }, 120_000);

  it('stop() waits for a running QEMU backup that won a burst: it is cancelled and QEMU is left as it was', async () => {
    const { agent: a, client } = await qemuAgent('stop-running');
    const all = await Promise.all(Array.from({ length: N }, () => http(client, 'POST', '/backups', body())));
    const won = all.filter((r) => r.status === 202);
    expect(won).toHaveLength(1);
    expect(all.filter((r) => r.status === 409)).toHaveLength(N - 1);
    const uuid = won[0]!.json.uuid as string;
    // Really running: QEMU fleeces into fleecingDir and data reaches the archive.
    expect(await until(() => (a.backups.current()?.transferred ?? 0) > 0, 10_000)).toBe(true);
    expect(a.backups.current()).toMatchObject({ uuid, status: 'active' });
    expect(readdirSync(fleeceDir).length).toBeGreaterThan(0);
    await a.stop();
    agent = null;
    expect(a.backups.current()).toMatchObject({ uuid, status: 'cancelled' });
    await expectNothingLeft();
  }, 60_000);

  it('stop() while a burst is still starting: one winner, cancelled, waited for; nothing is left in QEMU', async () => {
    const { agent: a } = await qemuAgent('stop-starting');
    const settled = Promise.allSettled(Array.from({ length: N }, () => a.backups.startBackup(parseBackupRequest(body()))));
    await a.stop();
    agent = null;
    // What stop() waited for is over: nothing runs, and QEMU is as it was at once.
    await expectNothingLeft();
    const results = await settled;
    const won = results.filter((r): r is PromiseFulfilledResult<BackupStatus> => r.status === 'fulfilled');
    expect(won).toHaveLength(1);
    for (const r of results) if (r.status === 'rejected') expect(r.reason).toBeInstanceOf(ConflictError);
    expect(a.backups.current()).toMatchObject({ uuid: won[0]!.value.uuid, status: 'cancelled' });
    await expect(a.backups.startBackup(parseBackupRequest(body()))).rejects.toThrow(ConflictError);
  }, 60_000);
});
