/**
 * `cowstream serve` (the real CLI in a child process) with real NBD clients
 * over its private Unix socket: qemu-img compare and nbdcopy of a depth-3
 * chain against the disk at its newest backup, qemu-io random reads that
 * fetch only the extents they need (GETs counted at a proxy), a local .cwa
 * with no S3, EIO for a corrupt extent's clusters only (logged with the
 * cluster range), the memory cache bound, and a clean stop.
 */
import { existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLUSTER_SIZE } from '../../src/format/constants.js';
import { buildRestorePlan } from '../../src/restore/locate.js';
import type { RestorePlan } from '../../src/restore/plan.js';
import { qemuIo, runTool } from '../helpers/nbd-tools.js';
import { SERVE_DEVICES, dataClusters, extentsFor, startServeFixture, type ServeFixture } from '../helpers/serve-fixture.js';
import { startServe, type ServeProcess } from '../helpers/serve-process.js';

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
