/**
 * Clear errors for bad input: wrong QMP socket, not-QMP peers, unknown or
 * unusable nodes, a QEMU too old for snapshot-access; plus QMP client
 * robustness (partial chunks, id correlation, events, timeouts, bounds) and
 * the CLI surface. Real qemu-storage-daemon where QEMU is needed.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createServer } from 'node:net';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { spawn } from 'node:child_process';
import { ZstdPool } from '../../src/codec/zstd-pool.js';
import { FileByteSink } from '../../src/store/file.js';
import { QmpClient, LineSplitter } from '../../src/qemu/qmp.js';
import { runPullBackup } from '../../src/qemu/pull-backup.js';
import { QemuDriveError, QemuUnsupportedError, QmpCommandError, QmpConnectionError, QmpTimeoutError } from '../../src/qemu/errors.js';
import { createImage, startDaemon, tempDir, type QemuDaemon } from '../helpers/qemu-daemon.js';
import { oldSchema, startFakeQmp } from '../helpers/qemu-fake-qmp.js';

const t = tempDir();
const pool = new ZstdPool({ workers: 1 });
afterAll(async () => {
  await pool.close();
  t.cleanup();
});

const baseOpts = {
  mode: 'full' as const,
  fleecingDir: t.dir,
  hostId: 'h',
  compressor: pool,
  onWarning: () => undefined,
  openOutput: async (c: { uuid: string }) => FileByteSink.create(join(t.dir, `${c.uuid}.cwa`)),
};

describe('QMP client', () => {
  it('wrong socket path → QmpConnectionError naming the path', async () => {
    const p = join(t.dir, 'nope.sock');
    await expect(QmpClient.connect(p)).rejects.toThrow(QmpConnectionError);
    await expect(QmpClient.connect(p)).rejects.toThrow(/nope\.sock: no such socket/);
  });

  it('a socket that is not QMP → clear error, no hang', async () => {
    const path = join(t.dir, 'http.sock');
    const srv = createServer((s) => s.end('HTTP/1.1 400 Bad Request\r\n\r\n'));
    await new Promise<void>((r) => srv.listen(path, r));
    try {
      await expect(QmpClient.connect(path, { connectTimeoutMs: 2000 })).rejects.toThrow(/not JSON|not a QMP socket|closed/);
    } finally {
      srv.close();
    }
    const silent = join(t.dir, 'silent.sock');
    const srv2 = createServer(() => undefined);
    await new Promise<void>((r) => srv2.listen(silent, r));
    try {
      await expect(QmpClient.connect(silent, { connectTimeoutMs: 300 })).rejects.toThrow(QmpTimeoutError);
    } finally {
      srv2.close();
    }
  });

  it('parses a greeting split into 3-byte chunks, correlates out-of-order replies by id, delivers events, surfaces class+desc', async () => {
    const fake = await startFakeQmp(t.dir, {
      dribble: true,
      handle: (cmd, args, sock, id) => {
        if (cmd === 'slow') {
          setTimeout(() => sock.write(JSON.stringify({ return: 'slow', id }) + '\r\n'), 50);
          return undefined;
        }
        if (cmd === 'fast') {
          // An event and a reply in one write, the reply split across two writes.
          const line = JSON.stringify({ return: 'fast', id }) + '\r\n';
          sock.write(JSON.stringify({ event: 'JOB_STATUS_CHANGE', data: { id: 'j1', status: 'running' }, timestamp: { seconds: 1, microseconds: 2 } }) + '\r\n' + line.slice(0, 5));
          setTimeout(() => sock.write(line.slice(5)), 10);
          return undefined;
        }
        if (cmd === 'bad') return { error: { class: 'DeviceNotFound', desc: `Device '${String(args.device)}' not found` } };
        if (cmd === 'never') return undefined;
        return {};
      },
    });
    const q = await QmpClient.connect(fake.path);
    try {
      expect(q.version).toMatchObject({ major: 7, minor: 2 });
      const ev = q.waitForEvent((e) => e.event === 'JOB_STATUS_CHANGE' && e.data.status === 'running', 2000);
      const [a, b] = await Promise.all([q.execute('slow'), q.execute('fast')]);
      expect([a, b]).toEqual(['slow', 'fast']);
      expect((await ev).data.id).toBe('j1');
      const err = await q.execute('bad', { device: 'x' }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(QmpCommandError);
      expect(err).toMatchObject({ errorClass: 'DeviceNotFound', desc: "Device 'x' not found" });
      await expect(q.execute('never', {}, 100)).rejects.toThrow(QmpTimeoutError);
      await expect(q.waitForEvent((e) => e.event === 'NOPE', 50)).rejects.toThrow(QmpTimeoutError);
    } finally {
      await q.close();
      await fake.close();
    }
    // Pending commands fail when the connection drops.
    const fake2 = await startFakeQmp(t.dir, { handle: () => undefined });
    const q2 = await QmpClient.connect(fake2.path);
    const pending = q2.execute('hang', {}, 0);
    await fake2.close();
    await expect(pending).rejects.toThrow(QmpConnectionError);
  });

  it('bounds line length', () => {
    const s = new LineSplitter(16);
    expect(s.push(Buffer.from('{"a":1}\r\n{"b"'))).toEqual(['{"a":1}']);
    expect(s.push(Buffer.from(':2}\n'))).toEqual(['{"b":2}']);
    expect(() => s.push(Buffer.from('x'.repeat(17)))).toThrow(QmpConnectionError);
  });
});

describe('pull backup refuses bad input with clear errors', () => {
  let d: QemuDaemon;
  let qmp: QmpClient;
  beforeAll(async () => {
    const img = join(t.dir, 'bad.qcow2');
    await createImage(img, 'qcow2', '8M');
    d = await startDaemon(t.dir, [{ path: img, format: 'qcow2' }]);
    qmp = await QmpClient.connect(d.qmpSocket);
  });
  afterAll(async () => {
    await qmp?.close();
    await d?.stop();
  });

  it('unknown node → QemuDriveError listing the known nodes', async () => {
    const err = await runPullBackup({ ...baseOpts, qmp, nbdServerSocket: d.nbdSocket, drives: [{ node: 'vdz' }] }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(QemuDriveError);
    expect((err as Error).message).toMatch(/block node 'vdz' not found.*known nodes: d0, d0-file, d0-guest/);
  });

  it('a node used directly by an export/device is backed up through a backup job (job graph); nothing is left behind', async () => {
    const r = await runPullBackup({ ...baseOpts, qmp, nbdServerSocket: d.nbdSocket, drives: [{ node: 'd0-guest' }] });
    expect(r.graph).toBe('job');
    expect(r.graphReason).toMatch(/'d0-guest' is attached directly to 'guest0'|'d0-guest' is attached directly/);
    const nodes = await qmp.execute<{ 'node-name': string; 'dirty-bitmaps'?: { name: string }[] }[]>('query-named-block-nodes', { flat: true });
    expect(nodes.map((n) => n['node-name']).sort()).toEqual(['d0', 'd0-file', 'd0-guest']);
    // A raw node cannot keep a persistent bitmap: drop the generation so later tests start clean.
    await qmp.execute('block-dirty-bitmap-remove', { node: 'd0-guest', name: `cowstream-${r.uuid}` });
    expect(await qmp.execute('query-jobs')).toEqual([]);
    expect(readdirSync(t.dir).filter((f) => f.endsWith('.fleece') || f.endsWith('.run'))).toEqual([]);
  });

  it('a second NBD server is refused by QEMU → error says to pass the running one; graph clean', async () => {
    const err = await runPullBackup({ ...baseOpts, qmp, drives: [{ node: 'd0' }] }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(QemuUnsupportedError);
    expect((err as Error).message).toMatch(/already runs an NBD server/);
    const nodes = await qmp.execute<{ 'node-name': string; 'dirty-bitmaps'?: unknown[] }[]>('query-named-block-nodes', { flat: true });
    expect(nodes.map((n) => n['node-name']).sort()).toEqual(['d0', 'd0-file', 'd0-guest']);
    expect(nodes.find((n) => n['node-name'] === 'd0')?.['dirty-bitmaps'] ?? []).toEqual([]);
    expect(readdirSync(t.dir).filter((f) => f.endsWith('.fleece') || f.endsWith('.partial'))).toEqual([]);
  });

  it('QEMU too old for snapshot-access (fake QMP reporting 6.2) → QemuUnsupportedError naming what is missing', async () => {
    const fake = await startFakeQmp(t.dir, {
      version: { major: 6, minor: 2, micro: 0 },
      handle: (cmd) => (cmd === 'query-qmp-schema' ? oldSchema() : { error: { class: 'CommandNotFound', desc: `The command ${cmd} has not been found` } }),
    });
    const q = await QmpClient.connect(fake.path);
    try {
      const err = await runPullBackup({ ...baseOpts, qmp: q, drives: [{ node: 'd0' }] }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(QemuUnsupportedError);
      expect((err as Error).message).toMatch(/QEMU 6\.2\.0.*too old.*snapshot-access.*on-cbw-error/);
    } finally {
      await q.close();
      await fake.close();
    }
  });

  it('CLI: full backup with --json through the real daemon; bad socket exits 1; missing --drive exits 2', async () => {
    const run = (args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ code: number | null; stdout: string; stderr: string }> =>
      new Promise((resolve) => {
        const p = spawn(process.execPath, ['bin/cowstream.js', ...args], { cwd: join(__dirname, '../..'), env: { ...process.env, ...env } });
        let stdout = '';
        let stderr = '';
        p.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
        p.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
        p.on('close', (code) => resolve({ code, stdout, stderr }));
      });
    // A QEMU monitor socket serves one client at a time: let the CLI have it.
    await qmp.close();
    const outDir = join(t.dir, 'cli-out');
    const { mkdirSync } = await import('node:fs');
    mkdirSync(outDir);
    const ok = await run(['backup', '--qemu', d.qmpSocket, '--drive', 'd0=vda', '--fleecing', t.dir, '--to', `file:${outDir}`, '--json'], { COWSTREAM_QEMU_NBD_SOCKET: d.nbdSocket });
    expect({ code: ok.code, stderr: ok.stderr, stdout: ok.code === 0 ? '' : ok.stdout }).toEqual({ code: 0, stderr: '', stdout: '' });
    const res = JSON.parse(ok.stdout) as { uuid: string; mode: string; target: string; devices: { name: string; size: number }[] };
    expect(res).toMatchObject({ mode: 'full', graph: 'filter', graphReason: expect.stringMatching(/raw filter/), devices: [{ name: 'vda', size: 8 * 1024 * 1024 }] });
    expect(res.target).toBe(join(outDir, `${res.uuid}.cwa`));
    expect(existsSync(res.target)).toBe(true);

    const bad = await run(['backup', '--qemu', join(t.dir, 'missing.sock'), '--drive', 'd0', '--to', `file:${outDir}`]);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/missing\.sock: no such socket/);
    const usage = await run(['backup', '--qemu', d.qmpSocket, '--to', `file:${outDir}`]);
    expect(usage.code).toBe(2);
    expect(usage.stderr).toMatch(/--drive/);
    qmp = await QmpClient.connect(d.qmpSocket);
    const nodes = await qmp.execute<{ 'node-name': string }[]>('query-named-block-nodes', { flat: true });
    expect(nodes.map((n) => n['node-name']).sort()).toEqual(['d0', 'd0-file', 'd0-guest']);
  }, 60_000);
});
