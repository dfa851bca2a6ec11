/**
 * The CLI as a user types it on the agent's host, against a real agent
 * process with the embedded S3 store and catalogue: `backup` waits by
 * default (summary with duration, throughput, compression; exit 1 when the
 * backup fails), `--detach` returns at once, a second backup is refused
 * naming `cowstream status`, the agent publishes endpoints.json so that
 * `list`, `snapshots`, `restore` and `verify` need no --catalog/--endpoint/
 * --bucket, routine catalogue reads log at debug, and the exit-code table of
 * docs/cli.md matches real exits.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { BackupStatus } from '../../src/agent/backup-request.js';
import { S3FaultProxy } from '../helpers/s3-fault-proxy.js';
import { REPO_ROOT, makeDisk, makeTempDir, runCli, spawnAgent, writeAgentConfig, type AgentProcess } from '../helpers/agent-process.js';

const SIZE = 4 * 1024 * 1024;
let tmp: { dir: string; cleanup(): Promise<void> };
let proc: AgentProcess | null = null;
let disk: Buffer;
let env: NodeJS.ProcessEnv;
let stateDir: string;
let fullUuid: string;

/** No store or catalogue from the test runner's environment: only the agent's state directory may supply them. */
const CLEAN = { COWSTREAM_CATALOG_URL: '', COWSTREAM_CATALOG_TOKEN: '', COWSTREAM_S3_BUCKET: '', COWSTREAM_S3_PREFIX: '' };

async function until<T>(what: string, fn: () => Promise<T | undefined>, ms = 30_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function idle(): Promise<void> {
  await until('no active backup', async () => {
    const s = await runCli(['status', '--json'], env);
    return (JSON.parse(s.stdout.toString()) as { backup: BackupStatus | null }).backup?.status === 'active' ? undefined : true;
  });
}

beforeAll(async () => {
  tmp = await makeTempDir('cowstream-cli-agent-');
  disk = await makeDisk(join(tmp.dir, 'vda.raw'), SIZE, 5);
  await mkdir(join(tmp.dir, 'restore'));
  const cfg = await writeAgentConfig(tmp.dir, {
    hostId: 'web-1',
    stateDir: 'state',
    disks: [{ name: 'vda', path: 'vda.raw' }],
    catalog: { embedded: true },
    restore: { allowedDirs: ['restore'], pollIntervalMs: 100 },
    log: { level: 'debug' },
  });
  stateDir = join(tmp.dir, 'state');
  proc = await spawnAgent(cfg, CLEAN);
  env = { ...CLEAN, COWSTREAM_AGENT_SOCKET: proc.controlSocket };
}, 60_000);

afterAll(async () => {
  await proc?.kill();
  await tmp?.cleanup();
});

describe('cowstream backup', () => {
  it('waits by default and prints duration, throughput and compression', async () => {
    const r = await runCli(['backup', '--json'], env);
    expect(r.code, r.stderr).toBe(0);
    const st = JSON.parse(r.stdout.toString()) as BackupStatus & { durationMs: number; bytesPerSecond: number; compressionRatio: number };
    expect(st.status).toBe('done');
    expect(st.durationMs).toBe(Date.parse(st.endTime!) - Date.parse(st.startTime));
    expect(st.bytesPerSecond).toBe(Math.round(st.transferred / Math.max(0.001, st.durationMs / 1000)));
    expect(st.compressionRatio).toBeCloseTo(st.transferred / st.archiveBytes, 1);
    fullUuid = st.uuid;

    const text = await runCli(['backup', '--incremental'], env);
    expect(text.code, text.stderr).toBe(0);
    expect(text.stdout.toString()).toMatch(/: done\n/);
    expect(text.stdout.toString()).toMatch(/summary: +\d+\.\d s, (-|[\d.]+ \w+\/s), compression (-|\d+\.\d\dx) \(/);
  });

  it('--detach returns while the backup runs; a second backup is refused naming `cowstream status`; a cancelled backup exits 1', async () => {
    const d = await runCli(['backup', '--detach', '--speed', '256K', '--json'], env);
    expect(d.code, d.stderr).toBe(0);
    const started = JSON.parse(d.stdout.toString()) as { uuid: string };
    const now = JSON.parse((await runCli(['status', '--json'], env)).stdout.toString()) as { backup: BackupStatus };
    expect(now.backup).toMatchObject({ uuid: started.uuid, status: 'active' });

    const second = await runCli(['backup'], env);
    expect(second.code).toBe(1);
    expect(second.stderr).toContain(`backup ${started.uuid}`);
    expect(second.stderr).toMatch(/`cowstream status`/);
    expect(second.stderr).not.toMatch(/GET \/backups/);
    const secondJson = await runCli(['backup', '--json'], env);
    expect(JSON.parse(secondJson.stdout.toString()).error.code).toBe('BACKUP_RUNNING');
    await runCli(['cancel'], env);
    await idle();

    // Waiting (the default) on a backup that ends cancelled: exit 1.
    const waiting = runCli(['backup', '--speed', '256K', '--json'], env);
    await until('a running backup', async () => {
      const s = JSON.parse((await runCli(['status', '--json'], env)).stdout.toString()) as { backup: BackupStatus | null };
      return s.backup?.status === 'active' && s.backup.uuid !== started.uuid ? true : undefined;
    });
    expect((await runCli(['cancel'], env)).code).toBe(0);
    const w = await waiting;
    expect(w.code).toBe(1);
    expect(JSON.parse(w.stdout.toString()).error.message).toMatch(/cancelled/);
  }, 60_000);
});

describe('the agent\'s endpoints are found through its state directory', () => {
  it('endpoints.json is 0600 and names the embedded services', async () => {
    const path = join(stateDir, 'endpoints.json');
    expect((await stat(path)).mode & 0o777).toBe(0o600);
    const ready = proc!.logs.find((l) => l.msg === 'agent ready')!;
    const s3 = ready.s3 as { endpoint: string; bucket: string; prefix: string };
    expect(JSON.parse(await readFile(path, 'utf8'))).toEqual({ s3: { endpoint: s3.endpoint, bucket: s3.bucket, prefix: s3.prefix }, catalog: ready.catalog });
  });

  it('list, snapshots, verify and restore with no --catalog/--endpoint/--bucket', async () => {
    const listed = await until('the catalogue to index the full backup', async () => {
      const l = await runCli(['list', '--json'], env);
      expect(l.code, l.stderr).toBe(0);
      const items = (JSON.parse(l.stdout.toString()) as { items: { uuid: string }[] }).items;
      return items.some((i) => i.uuid === fullUuid) ? items : undefined;
    });
    expect(listed.length).toBeGreaterThanOrEqual(2);
    const text = await runCli(['list'], env);
    expect(text.stdout.toString()).toContain(fullUuid);

    const snaps = await runCli(['snapshots', '--json', '--no-cache'], env);
    expect(snaps.code, snaps.stderr).toBe(0);
    expect((JSON.parse(snaps.stdout.toString()) as { archives: { uuid: string }[] }).archives.map((a) => a.uuid)).toContain(fullUuid);

    const v = await runCli(['verify', fullUuid, '--json'], env);
    expect(v.code, v.stderr).toBe(0);
    expect(JSON.parse(v.stdout.toString())).toMatchObject({ ok: true, archive: fullUuid, plaintextChecked: true });

    const r = await runCli(['restore', fullUuid, '--to', join(tmp.dir, 'restore') + '/'], env);
    expect(r.code, r.stderr).toBe(0);
    expect((await readFile(join(tmp.dir, 'restore', 'vda.raw'))).equals(disk)).toBe(true);

    const via = await runCli(['restore', fullUuid, '--via-catalog', '--host', 'web-1', '--to', join(tmp.dir, 'restore', 'via.raw'), '--wait', '--json'], env);
    expect(via.code, via.stderr).toBe(0);
    expect((await readFile(join(tmp.dir, 'restore', 'via.raw'))).equals(disk)).toBe(true);
  }, 90_000);

  it('routine catalogue reads (the restore poller\'s) log at debug; writes stay at info', async () => {
    const requests = proc!.logs.filter((l) => l.msg === 'request');
    const reads = requests.filter((l) => l.method === 'GET' && (l.status as number) < 400);
    expect(reads.length).toBeGreaterThan(5);
    expect(reads.every((l) => l.level === 'debug')).toBe(true);
    const writes = requests.filter((l) => l.method === 'POST');
    expect(writes.length).toBeGreaterThan(0);
    expect(writes.every((l) => l.level === 'info')).toBe(true);
  });
});

describe('exit codes', () => {
  it('the table in docs/cli.md lists 0, 1, 2, 3 and matches real exits', async () => {
    const doc = await readFile(join(REPO_ROOT, 'docs', 'cli.md'), 'utf8');
    const table = new Map([...doc.matchAll(/^\| (\d) \| ([a-z ]+) \|/gm)].map((m) => [Number(m[1]), m[2]!]));
    expect(table).toEqual(new Map([[0, 'success'], [1, 'failure'], [2, 'usage error'], [3, 'partial']]));
    expect((await runCli(['status'], env)).code).toBe(0);
    expect((await runCli(['status', '--agent', join(tmp.dir, 'nope.sock')], env)).code).toBe(1);
    expect((await runCli(['backup', '--cbw-timeout', 'soon'], env)).code).toBe(2);
    expect((await runCli(['list', '--no-such-flag'], env)).code).toBe(2);
  });

  it('3: forget whose deletions are refused (as Object Lock refuses them) exits 3 and lists them', async () => {
    // A newer full backup, so that --keep-last 1 leaves the first chain to delete.
    expect((await runCli(['backup'], env)).code).toBe(0);
    const s3 = JSON.parse(await readFile(join(stateDir, 'endpoints.json'), 'utf8')) as { s3: { endpoint: string; bucket: string } };
    const proxy = await S3FaultProxy.start(s3.s3.endpoint);
    try {
      proxy.addRule({ op: 'DeleteObject', action: { status: 403, code: 'AccessDenied' } });
      const f = await runCli(['forget', '--keep-last', '1', '--no-cache', '--json', '--state', stateDir, '--endpoint', proxy.endpoint, '--bucket', s3.s3.bucket], env);
      expect(f.code, f.stderr).toBe(3);
      const report = JSON.parse(f.stdout.toString()) as { ok: boolean; skipped: { uuid: string }[] };
      expect(report.ok).toBe(false);
      expect(report.skipped.length).toBeGreaterThan(0);
    } finally {
      await proxy.close();
    }
  }, 60_000);

  it('the agent removes endpoints.json when it stops', async () => {
    expect(await proc!.stop()).toBe(0);
    await expect(stat(join(stateDir, 'endpoints.json'))).rejects.toMatchObject({ code: 'ENOENT' });
    proc = null;
  }, 30_000);
});
