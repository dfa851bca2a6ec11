/**
 * `cowstream serve` (the real CLI in a child process) with real NBD clients
 * over its private Unix socket: qemu-img compare and nbdcopy of a depth-3
 * chain against the disk at its newest backup, qemu-io random reads that
 * fetch only the extents they need (GETs counted at a proxy), nbdinfo --map
 * showing zero runs as holes, writable overlays that survive a restart
 * and never write to the bucket, hydration to a local file (alone and
 * under an overlay), a local .cwa
 * with no S3, EIO for a corrupt extent's clusters only (logged with the
 * cluster range), the memory cache bound, and a clean stop.
 */
import { spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLUSTER_SIZE } from '../../src/format/constants.js';
import { buildRestorePlan } from '../../src/restore/locate.js';
import type { RestorePlan } from '../../src/restore/plan.js';
import { qemuIo, runTool, waitFor } from '../helpers/nbd-tools.js';
import { SERVE_DEVICES, dataClusters, extentsFor, startServeFixture, type ServeFixture } from '../helpers/serve-fixture.js';
import { startServe, type ServeProcess } from '../helpers/serve-process.js';

const NOBODY = ['--reuid=65534', '--regid=65534', '--clear-groups'];
const canDropPrivileges = process.getuid?.() === 0 && spawnSync('setpriv', [...NOBODY, 'true']).status === 0;

describe('cowstream serve with real NBD clients', () => {
  let fx: ServeFixture;
  let plan: RestorePlan;
  let store: string[];
  let env: NodeJS.ProcessEnv;
  const running: ServeProcess[] = [];

  beforeAll(async () => {
    fx = await startServeFixture();
    plan = await buildRestorePlan(fx.steps[2]!.uuid, fx.ctx());
    for (const d of SERVE_DEVICES) writeFileSync(join(fx.work, `${d.name}.raw`), fx.steps[2]!.disks.get(d.name)!);
    const creds = fx.server.embedded!.credentials;
    env = { AWS_ACCESS_KEY_ID: creds.accessKeyId, AWS_SECRET_ACCESS_KEY: creds.secretAccessKey, AWS_PROFILE: '', COWSTREAM_S3_BUCKET: '', XDG_RUNTIME_DIR: fx.work };
    store = ['--bucket', 'backups', '--prefix', 'site1', '--endpoint', fx.proxy.endpoint, '--region', 'us-east-1'];
  }, 90_000);

  afterAll(async () => {
    for (const s of running) await s.stop('SIGKILL').catch(() => undefined);
    await fx?.close();
  });

  const serve = async (args: string[]): Promise<ServeProcess> => {
    const s = await startServe(args, env);
    running.push(s);
    return s;
  };
  const uri = (s: ServeProcess, name: string): string => s.out.exports.find((e) => e.name === name)!.uri;

  it('exports a depth-3 chain on a private socket; qemu-img compare and nbdcopy match the disk', async () => {
    const s = await serve([fx.steps[2]!.uuid, ...store]);
    expect(s.out).toMatchObject({ ok: true, readOnly: true, archive: { uuid: fx.steps[2]!.uuid, host: 'host-a', chainDepth: 3 } });
    expect(s.out.exports.map((e) => [e.name, e.size])).toEqual(SERVE_DEVICES.map((d) => [d.name, d.size]));
    expect(s.out.exports[0]!.uri).toBe(`nbd+unix:///vda?socket=${s.out.socket}`);
    expect(statSync(s.out.socket).mode & 0o777).toBe(0o600);
    expect(statSync(dirname(s.out.socket)).mode & 0o777).toBe(0o700);
    for (const d of SERVE_DEVICES) {
      const cmp = await runTool('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', join(fx.work, `${d.name}.raw`), uri(s, d.name)]);
      expect(cmp.stdout + cmp.stderr).toMatch(/Images are identical/);
      expect(cmp.code).toBe(0);
      const copy = join(fx.work, `${d.name}.copy`);
      const nc = await runTool('nbdcopy', [uri(s, d.name), copy]);
      expect(nc.stderr).toBe('');
      expect(readFileSync(copy).equals(fx.steps[2]!.disks.get(d.name)!)).toBe(true);
    }
    // Read-only: a write is refused.
    const w = await qemuIo(uri(s, 'vda'), ['write -P 1 0 4096']);
    expect(w.ok).toBe(false);
    const { code } = await s.stop();
    expect(code).toBe(0);
    expect(existsSync(dirname(s.out.socket))).toBe(false);
  });

  it('--tcp serves the same exports on TCP as well', async () => {
    const s = await serve([fx.steps[2]!.uuid, '--tcp', '127.0.0.1:0', ...store]);
    expect(s.out.tcp?.host).toBe('127.0.0.1');
    const e = s.out.exports.find((x) => x.name === 'vdb')!;
    expect(e.tcpUri).toBe(`nbd://127.0.0.1:${s.out.tcp!.port}/vdb`);
    const cmp = await runTool('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', join(fx.work, 'vdb.raw'), e.tcpUri!]);
    expect(cmp.code).toBe(0);
    await s.stop();
  });

  it.skipIf(!canDropPrivileges)('another user (uid 65534) cannot connect, by the default socket or a given one', async () => {
    const pub = join(fx.work, 'public');
    mkdirSync(pub);
    chmodSync(pub, 0o755);
    chmodSync(fx.work, 0o711); // only serve's own directory and socket modes stand in the way
    try {
      for (const extra of [[], ['--socket', join(pub, 'serve.sock')]]) {
        const s = await serve([fx.steps[2]!.uuid, ...extra, ...store]);
        const own = await runTool('nbdinfo', ['--size', uri(s, 'vdb')]);
        expect(own.stdout.trim()).toBe(String(SERVE_DEVICES[1]!.size));
        const nobody = await runTool('setpriv', [...NOBODY, 'nbdinfo', '--size', uri(s, 'vdb')]);
        expect(nobody.code).not.toBe(0);
        expect(nobody.stderr).toMatch(/Permission denied/);
        await s.stop();
      }
    } finally {
      chmodSync(fx.work, 0o700);
    }
  });

  it('random qemu-io reads fetch only the extents they touch', async () => {
    const s = await serve([fx.steps[2]!.uuid, '--read-ahead', '0', ...store]);
    const clusters = dataClusters(plan, 0);
    const picks = [clusters[1]!, clusters[Math.floor(clusters.length / 2)]!, clusters[clusters.length - 3]!];
    const want = new Set<string>();
    for (const c of picks) for (const k of extentsFor(plan, 0, c, c)) want.add(k);
    expect(want.size).toBeGreaterThan(1);
    const before = fx.proxy.count('GetObject');
    const disk = fx.steps[2]!.disks.get('vda')!;
    const cmds = picks.flatMap((c) => [`read -v ${c * CLUSTER_SIZE + 8192} 16`]);
    const r = await qemuIo(uri(s, 'vda'), cmds, { readOnly: true });
    expect(r.ok).toBe(true);
    for (const c of picks) {
      const hex = [...disk.subarray(c * CLUSTER_SIZE + 8192, c * CLUSTER_SIZE + 8192 + 16)].map((b) => b.toString(16).padStart(2, '0')).join(' ');
      expect(r.stdout).toContain(hex);
    }
    expect(fx.proxy.count('GetObject') - before).toBe(want.size);
    // A zero run reads as zeroes with no GET.
    const zero = plan.devices[0]!.zeroRuns[0]!;
    const z = await qemuIo(uri(s, 'vda'), [`read -P 0 ${zero[0] * CLUSTER_SIZE} ${CLUSTER_SIZE}`], { readOnly: true });
    expect(z.ok).toBe(true);
    expect(fx.proxy.count('GetObject') - before).toBe(want.size);
    await s.stop();
  });

  it('nbdinfo --map shows zero runs as holes and data as allocated, with no GET', async () => {
    const s = await serve([fx.steps[2]!.uuid, ...store]);
    const before = fx.proxy.count('GetObject');
    for (const [pi, d] of plan.devices.entries()) {
      const r = await runTool('nbdinfo', ['--map', '--json', uri(s, d.name)]);
      expect(r.code).toBe(0);
      const map = JSON.parse(r.stdout) as { offset: number; length: number; type: number }[];
      // The expected state of every cluster, from the plan.
      const hole = new Array<boolean>(d.clusters).fill(false);
      for (const [f, n] of [...d.zeroRuns, ...d.missingRuns]) for (let c = f; c < f + n; c++) hole[c] = true;
      expect(hole.some(Boolean)).toBe(true);
      let end = 0;
      for (const m of map) {
        expect(m.offset).toBe(end);
        expect(m.type).toBe(m.type === 0 ? 0 : 3); // 0 data, 3 hole+zero
        for (let c = Math.floor(m.offset / CLUSTER_SIZE); c * CLUSTER_SIZE < m.offset + m.length; c++) expect([pi, c, hole[c]]).toEqual([pi, c, m.type === 3]);
        end = m.offset + m.length;
      }
      expect(end).toBe(d.size);
    }
    expect(fx.proxy.count('GetObject') - before).toBe(0);
    await s.stop();
  });

  it('--overlay: writes survive a restart of serve with the same overlay and never reach the bucket', async () => {
    const writesToBucket = (): number => ['PutObject', 'UploadPart', 'CreateMultipartUpload', 'CompleteMultipartUpload', 'DeleteObject'].reduce((n, op) => n + fx.proxy.count(op as never), 0);
    const before = writesToBucket();
    const overlay = join(fx.work, 'vda.overlay');
    const expected = Buffer.from(fx.steps[2]!.disks.get('vda')!);
    const data = dataClusters(plan, 0)[4]!;
    const zero = plan.devices[0]!.zeroRuns[0]![0];
    const s = await serve([fx.steps[2]!.uuid, '--disk', 'vda', '--overlay', overlay, ...store]);
    expect(s.out.readOnly).toBe(false);
    // A partial write into a data cluster, a whole zero-run cluster, one straddling two clusters.
    const writes: [number, number, number][] = [[data * CLUSTER_SIZE + 1000, 3000, 0xab], [zero * CLUSTER_SIZE, CLUSTER_SIZE, 0xcd], [(data + 1) * CLUSTER_SIZE - 512, 1024, 0xef]];
    const w = await qemuIo(uri(s, 'vda'), writes.map(([off, len, p]) => `write -P ${p} ${off} ${len}`).concat(['flush']));
    expect(w.ok).toBe(true);
    for (const [off, len, p] of writes) expected.fill(p, off, off + len);
    const copy = join(fx.work, 'overlay1.copy');
    expect((await runTool('nbdcopy', [uri(s, 'vda'), copy])).code).toBe(0);
    expect(readFileSync(copy).equals(expected)).toBe(true);
    expect((await s.stop()).code).toBe(0);
    expect(statSync(overlay).mode & 0o777).toBe(0o600);
    const again = await serve([fx.steps[2]!.uuid, '--disk', 'vda', '--overlay', overlay, ...store]);
    const copy2 = join(fx.work, 'overlay2.copy');
    expect((await runTool('nbdcopy', [uri(again, 'vda'), copy2])).code).toBe(0);
    expect(readFileSync(copy2).equals(expected)).toBe(true);
    await again.stop();
    // Another archive of the same disk (same size) over this overlay: refused, the overlay untouched.
    const overlayBytes = readFileSync(overlay);
    const other = await startServe([fx.steps[1]!.uuid, '--disk', 'vda', '--overlay', overlay, ...store], env);
    expect(other.out).toMatchObject({ ok: false, error: { message: expect.stringMatching(new RegExp(`made over "${fx.steps[2]!.uuid}/vda", not over "${fx.steps[1]!.uuid}/vda"`)) } });
    expect(await other.exited()).toBe(1);
    expect(readFileSync(overlay).equals(overlayBytes)).toBe(true);
    expect(writesToBucket()).toBe(before);
    // The archive itself still serves the original disk.
    const ro = await serve([fx.steps[2]!.uuid, '--disk', 'vda', ...store]);
    const cmp = await runTool('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', join(fx.work, 'vda.raw'), uri(ro, 'vda')]);
    expect(cmp.code).toBe(0);
    await ro.stop();
  });

  it('--overlay DIR gives each disk its own overlay; a file is refused for several disks', async () => {
    const dir = join(fx.work, 'overlays');
    mkdirSync(dir, { mode: 0o700 });
    const s = await serve([fx.steps[2]!.uuid, '--overlay', dir, ...store]);
    const w = await qemuIo(uri(s, 'vdb'), ['write -P 7 0 4096']);
    expect(w.ok).toBe(true);
    const r = await qemuIo(uri(s, 'vda'), ['read -P 7 0 4096'], { readOnly: true });
    expect(r.ok).toBe(false); // vda is untouched
    await s.stop();
    expect(readdirSync(dir).sort()).toEqual(['vda.overlay', 'vdb.overlay']);
    const bad = await startServe([fx.steps[2]!.uuid, '--overlay', join(fx.work, 'one.overlay'), ...store], env);
    expect(bad.out).toMatchObject({ ok: false, error: { code: 'USAGE', message: expect.stringMatching(/2 disks \(vda, vdb\)/) } });
    expect(await bad.exited()).toBe(2);
    expect(existsSync(join(fx.work, 'one.overlay'))).toBe(false);
  });

  const hydrated = (s: ServeProcess, disk: string): boolean => s.logs().some((l) => l.msg === 'hydration complete: reads are served from the target' && l.disk === disk);

  it('--hydrate copies the disk to a private local file while it is served', async () => {
    const target = join(fx.work, 'hydrated-vda.raw');
    const s = await serve([fx.steps[2]!.uuid, '--disk', 'vda', '--hydrate', target, ...store]);
    expect(await waitFor(() => hydrated(s, 'vda'), 30_000)).toBe(true);
    expect(s.logs().some((l) => l.msg === 'hydration started' && l.bytesTotal === SERVE_DEVICES[0]!.size)).toBe(true);
    expect(readFileSync(target).equals(fx.steps[2]!.disks.get('vda')!)).toBe(true);
    expect(statSync(target).mode & 0o777).toBe(0o600);
    // Still served, now from the target.
    const cmp = await runTool('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', target, uri(s, 'vda')]);
    expect(cmp.code).toBe(0);
    expect((await s.stop()).code).toBe(0);
    // An existing non-empty target is refused without --force.
    const again = await startServe([fx.steps[2]!.uuid, '--disk', 'vda', '--hydrate', target, ...store], env);
    expect(again.out).toMatchObject({ ok: false, error: { message: expect.stringMatching(/not empty/) } });
    expect(await again.exited()).toBe(1);
  });

  it('--overlay with --hydrate: each target ends as the archive plus the overlay writes', async () => {
    const dir = join(fx.work, 'ovh');
    mkdirSync(dir, { mode: 0o700 });
    const s = await serve([fx.steps[2]!.uuid, '--overlay', dir, '--hydrate', dir, ...store]);
    const expected = new Map(SERVE_DEVICES.map((d) => [d.name, Buffer.from(fx.steps[2]!.disks.get(d.name)!)]));
    const writes: [string, number, number, number][] = [['vda', 5 * CLUSTER_SIZE + 100, 70_000, 0x11], ['vdb', 0, 4096, 0x22], ['vdb', SERVE_DEVICES[1]!.size - 8192, 8192, 0x33]];
    for (const [disk, off, len, p] of writes) {
      const w = await qemuIo(uri(s, disk), [`write -P ${p} ${off} ${len}`, 'flush']);
      expect(w.ok).toBe(true);
      expected.get(disk)!.fill(p, off, off + len);
    }
    expect(await waitFor(() => hydrated(s, 'vda') && hydrated(s, 'vdb'), 30_000)).toBe(true);
    // A write after completion reaches the target too.
    const late = await qemuIo(uri(s, 'vda'), [`write -P 68 ${CLUSTER_SIZE} 4096`, 'flush']);
    expect(late.ok).toBe(true);
    expected.get('vda')!.fill(68, CLUSTER_SIZE, CLUSTER_SIZE + 4096);
    expect((await s.stop()).code).toBe(0);
    for (const d of SERVE_DEVICES) expect([d.name, readFileSync(join(dir, `${d.name}.raw`)).equals(expected.get(d.name)!)]).toEqual([d.name, true]);
  });

  it('serves a local .cwa chain with no S3 configured', async () => {
    const dir = join(fx.work, 'local');
    mkdirSync(dir);
    const paths = await fx.download(dir);
    const before = fx.proxy.requests.length;
    const s = await serve([paths[2]!]);
    expect(s.out.archive.chainDepth).toBe(3);
    const cmp = await runTool('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', join(fx.work, 'vdb.raw'), uri(s, 'vdb')]);
    expect(cmp.code).toBe(0);
    expect(fx.proxy.requests.length).toBe(before);
    await s.stop();
  });

  it('a corrupt extent gives EIO for its clusters only, and is logged with the cluster range', async () => {
    const { paths, victim } = await fx.corruptCopy(plan, 'corrupt', (e) => Math.floor(e.length / 2));
    const s = await serve([paths[2]!]);
    const [, , first, count] = victim.runs.find(([pi]) => pi === 0)!;
    const bad = await qemuIo(uri(s, 'vda'), [`read ${first * CLUSTER_SIZE} 4096`], { readOnly: true });
    expect(bad.ok).toBe(false);
    expect(bad.stdout + bad.stderr).toMatch(/Input\/output error/);
    const good = dataClusters(plan, 0).find((c) => !extentsFor(plan, 0, c, c).has(`2@${victim.offset}`))!;
    const disk = fx.steps[2]!.disks.get('vda')!;
    const hex = [...disk.subarray(good * CLUSTER_SIZE, good * CLUSTER_SIZE + 16)].map((b) => b.toString(16).padStart(2, '0')).join(' ');
    const ok = await qemuIo(uri(s, 'vda'), [`read -v ${good * CLUSTER_SIZE} 16`], { readOnly: true });
    expect(ok.ok).toBe(true);
    expect(ok.stdout).toContain(hex);
    const damaged = s.logs().filter((l) => l.msg === 'damaged extent: its clusters read as errors');
    expect(damaged).toHaveLength(1);
    expect(damaged[0]).toMatchObject({ level: 'error', archive: fx.steps[0]!.uuid, extentOffset: victim.offset, clusters: expect.arrayContaining([`vda:${first}-${first + count - 1}`]) });
    await s.stop();
  });

  it('keeps the memory cache within --cache-memory while nbdcopy reads everything', async () => {
    const s = await serve([fx.steps[2]!.uuid, '--cache-memory', '1M', ...store]);
    const copy = join(fx.work, 'bounded.copy');
    const nc = await runTool('nbdcopy', [uri(s, 'vda'), copy]);
    expect(nc.code).toBe(0);
    expect(readFileSync(copy).equals(fx.steps[2]!.disks.get('vda')!)).toBe(true);
    const { code, stderr } = await s.stop('SIGINT');
    expect(code).toBe(0);
    const end = stderr.split('\n').filter((l) => l.includes('"serve stopped"')).map((l) => JSON.parse(l) as { stats: { cacheBytesPeak: number; cacheLimitBytes: number } });
    expect(end).toHaveLength(1);
    expect(end[0]!.stats.cacheLimitBytes).toBe(1024 * 1024);
    expect(end[0]!.stats.cacheBytesPeak).toBeGreaterThan(0);
    expect(end[0]!.stats.cacheBytesPeak).toBeLessThanOrEqual(1024 * 1024);
  });
});
