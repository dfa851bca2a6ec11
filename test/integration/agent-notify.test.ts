/**
 * Notifications against real peers: a real HTTP server receives the webhooks
 * of a real agent whose backup fails in its sink (and succeeds later), and of
 * the notifier itself: retries with growing delays, the bounded queue that
 * drops the oldest, a redirect that is not followed, the bearer token from a
 * 0600 file. Command hooks are real child processes: payload on stdin, key
 * fields in COWSTREAM_* variables, killed with what they started on timeout,
 * shell metacharacters passed through as plain bytes.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { chmod, mkdir, readFile, stat, writeFile } from 'node:fs/promises';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { startAgent } from '../../src/agent/agent.js';
import { AgentConfigError, parseAgentConfig } from '../../src/agent/config.js';
import { AgentClient } from '../../src/agent/control-client.js';
import type { BackupStatus } from '../../src/agent/backup-request.js';
import { startNotifier, type Notifier, type NotifyPayload } from '../../src/agent/notify.js';
import { CatalogClient } from '../../src/catalog/client.js';
import { loadOrCreateEmbeddedCredentials } from '../../src/store/embedded-credentials.js';
import { makeDisk, makeTempDir } from '../helpers/agent-process.js';
import { noFaults, PlannedSink } from '../helpers/agent-faults.js';
import { startHookServer, until, type HookServer } from '../helpers/hook-server.js';
import { captureLog } from '../helpers/capture-log.js';
import { S3FaultProxy } from '../helpers/s3-fault-proxy.js';
import { startFauxqs } from '../helpers/s3-servers.js';

let tmp: { dir: string; cleanup(): Promise<void> };
let diskPath: string;
const servers: HookServer[] = [];
const notifiers: Notifier[] = [];

beforeAll(async () => {
  tmp = await makeTempDir('cowstream-notify-');
  diskPath = join(tmp.dir, 'vda.raw');
  await makeDisk(diskPath, 1024 * 1024, 5);
});

afterAll(async () => {
  for (const n of notifiers) await n.stop();
  for (const s of servers) await s.close();
  await tmp?.cleanup();
});

async function server(): Promise<HookServer> {
  const s = await startHookServer();
  servers.push(s);
  return s;
}

let seq = 0;
/** A validated agent config with these notifications (and a state dir of its own). */
function config(notifications: Record<string, unknown>): ReturnType<typeof parseAgentConfig> {
  return parseAgentConfig({ hostId: 'notify-host', stateDir: join(tmp.dir, `state-${seq++}`), disks: [{ name: 'vda', path: diskPath }], notifications }, tmp.dir);
}

/** A real agent on the test disk with `extra` config (schedules, catalogue, notifications…). */
function agentWith(extra: Record<string, unknown>): ReturnType<typeof startAgent> {
  return startAgent(parseAgentConfig({ hostId: 'notify-host', stateDir: join(tmp.dir, `state-${seq++}`), disks: [{ name: 'vda', path: diskPath }], ...extra }), { log: captureLog().log });
}

function failedStatus(error: string, uuid = '0190a000-0000-7000-8000-000000000001'): BackupStatus {
  const t = new Date().toISOString();
  return {
    status: 'error', uuid, mode: 'full', requestedMode: 'full', parentUuid: null, disks: ['vda'], total: 0, transferred: 0, zeroBytes: 0,
    archiveBytes: 0, cbwClusters: 0, maxCbwWaitMs: 0, startTime: t, endTime: t, error, target: 's3', key: `archives/notify-host/${uuid}.cwa`, bucket: 'b',
  };
}

describe('webhooks', () => {
  it('a backup that fails in its sink POSTs backup.failed (and, with onSuccess, a good one backup.succeeded)', async () => {
    const hook = await server();
    const plan = noFaults();
    const agent = await startAgent(config({ onSuccess: true, webhooks: [{ url: hook.url }] }), { log: captureLog().log, wrapSink: (s) => new PlannedSink(s, plan) });
    try {
      const client = new AgentClient(agent.controlSocket);
      plan.sinkFailAtClose = true;
      const bad = await client.startBackup({ mode: 'full', target: `file:${join(tmp.dir, 'bad.cwa')}` });
      const badFinal = await client.waitForBackup(bad.uuid, undefined, 20);
      expect(badFinal.status).toBe('error');
      expect(plan.fired).toBeGreaterThan(0);
      await until('the failure webhook', () => hook.requests.length >= 1);
      const r = hook.requests[0]!;
      expect(r.method).toBe('POST');
      expect(r.headers['content-type']).toBe('application/json');
      const p = JSON.parse(r.body) as NotifyPayload;
      expect(p).toMatchObject({ version: 1, event: 'backup.failed', host: 'notify-host', disks: ['vda'], archive: { uuid: bad.uuid, target: `file:${join(tmp.dir, 'bad.cwa')}` } });
      expect(p.error).toMatch(/injected sink failure at close/);
      expect(Date.parse(p.startTime!)).toBeLessThanOrEqual(Date.parse(p.endTime!));
      expect(p.id).toMatch(/^[0-9a-f-]{36}$/);

      plan.sinkFailAtClose = false;
      const good = await client.startBackup({ mode: 'full', target: `file:${join(tmp.dir, 'good.cwa')}` });
      expect((await client.waitForBackup(good.uuid, undefined, 20)).status).toBe('done');
      await until('the success webhook', () => hook.requests.length >= 2);
      expect(JSON.parse(hook.requests[1]!.body)).toMatchObject({ event: 'backup.succeeded', archive: { uuid: good.uuid }, error: null, backup: { mode: 'full' } });
    } finally {
      await agent.stop();
    }
  });

  it('retries a failing endpoint with growing delays: fails twice, then succeeds on the 3rd attempt', async () => {
    const hook = await server();
    hook.handler = (_r, res, n) => void res.writeHead(n < 2 ? 503 : 204).end();
    const { log, lines } = captureLog();
    // The jitter draws 0.9 then 0.1: the second delay must still be the longer one.
    const draws = [0.9, 0.1];
    const n = await startNotifier({ config: config({ webhooks: [{ url: hook.url, retries: 4 }] }), log, backoff: { baseMs: 200, maxMs: 10_000 }, random: () => draws.shift() ?? 0.5 });
    notifiers.push(n);
    n.backupEnded(failedStatus('disk on fire'));
    await until('the third attempt', () => hook.requests.length >= 3);
    await until('the delivery to be logged', () => lines.some((l) => l.msg === 'notification sent'));
    await new Promise((r) => setTimeout(r, 300));
    expect(hook.requests).toHaveLength(3);
    // One event: the same id on every attempt.
    expect(new Set(hook.requests.map((r) => (JSON.parse(r.body) as NotifyPayload).id)).size).toBe(1);
    const delays = lines.filter((l) => l.msg === 'notification attempt failed; retrying').map((l) => l.fields.retryInMs as number);
    expect(delays).toHaveLength(2);
    // Equal jitter: retry 1 waits 100 + 0.9·100 ms, retry 2 waits 200 + 0.1·200 ms.
    expect(delays).toEqual([190, 220]);
    const gaps = [hook.requests[1]!.at - hook.requests[0]!.at, hook.requests[2]!.at - hook.requests[1]!.at];
    expect(gaps[0]).toBeGreaterThanOrEqual(delays[0]! - 5);
    expect(gaps[1]).toBeGreaterThanOrEqual(delays[1]! - 5);
    expect(lines.find((l) => l.msg === 'notification sent')?.fields).toMatchObject({ attempt: 3, status: 204 });
  });

  it('keeps at most queueSize pending notifications: a stuck endpoint makes it drop the oldest, with a warning', async () => {
    const hook = await server();
    const held: Array<() => void> = [];
    hook.handler = (_r, res) => void held.push(() => res.writeHead(200).end());
    const { log, lines } = captureLog();
    const n = await startNotifier({ config: config({ queueSize: 2, webhooks: [{ url: hook.url, timeoutMs: 60_000 }] }), log });
    notifiers.push(n);
    const t0 = performance.now();
    for (let i = 1; i <= 6; i++) n.backupEnded(failedStatus(`failure ${i}`));
    // Emitting never waits for the endpoint.
    expect(performance.now() - t0).toBeLessThan(100);
    await until('the first request to be held', () => held.length === 1);
    // In flight: failure 1; pending: 5 and 6 (2, 3 and 4 dropped, oldest first).
    const drops = lines.filter((l) => l.msg === 'notification queue full: oldest notification dropped');
    expect(drops).toHaveLength(3);
    expect(drops.every((l) => l.level === 'warn' && l.fields.capacity === 2)).toBe(true);
    for (;;) {
      held.shift()?.();
      if (hook.requests.length === 3 && held.length === 0) break;
      await new Promise((r) => setTimeout(r, 20));
    }
    await until('three deliveries', () => lines.filter((l) => l.msg === 'notification sent').length === 3);
    expect(hook.requests.map((r) => (JSON.parse(r.body) as NotifyPayload).error)).toEqual(['failure 1', 'failure 5', 'failure 6']);
  });

  it('stopping ends a backoff wait at once: the agent does not hang on a dead endpoint', async () => {
    const hook = await server();
    hook.handler = (_r, res) => void res.writeHead(503).end();
    const { log, lines } = captureLog();
    const n = await startNotifier({ config: config({ webhooks: [{ url: hook.url, retries: 5 }] }), log, backoff: { baseMs: 60_000, maxMs: 60_000 } });
    n.backupEnded(failedStatus('x'));
    await until('a retry to be scheduled', () => lines.some((l) => l.msg === 'notification attempt failed; retrying'));
    const t0 = Date.now();
    await n.stop();
    expect(Date.now() - t0).toBeLessThan(1_000);
    expect(hook.requests).toHaveLength(1);
    expect(lines.find((l) => l.msg === 'notification not delivered')?.fields).toMatchObject({ reason: 'the agent is stopping', attempt: 1 });
  });

  it('gives each attempt timeoutMs: an endpoint that never answers is retried, then given up', async () => {
    const hook = await server();
    hook.handler = () => undefined; // never answers
    const { log, lines } = captureLog();
    const n = await startNotifier({ config: config({ webhooks: [{ url: hook.url, timeoutMs: 300, retries: 1 }] }), log, backoff: { baseMs: 10, maxMs: 10 } });
    notifiers.push(n);
    const t0 = performance.now();
    n.backupEnded(failedStatus('x'));
    await until('the delivery to give up', () => lines.some((l) => l.msg === 'notification not delivered'), 10_000);
    const elapsed = performance.now() - t0;
    expect(hook.requests).toHaveLength(2);
    // The timer starts before the connection: the server sees the second request a little under 300 ms + backoff later at worst.
    expect(hook.requests[1]!.at - hook.requests[0]!.at).toBeGreaterThanOrEqual(250);
    expect(elapsed).toBeLessThan(5_000);
    expect(lines.find((l) => l.msg === 'notification not delivered')?.fields).toMatchObject({ error: 'no answer within 300 ms', reason: 'retries exhausted', attempt: 2 });
  });

  it('does not follow a redirect (nor retry it): the Location target gets nothing', async () => {
    const elsewhere = await server();
    const hook = await server();
    hook.handler = (_r, res) => void res.writeHead(307, { location: elsewhere.url }).end();
    const { log, lines } = captureLog();
    const n = await startNotifier({ config: config({ webhooks: [{ url: hook.url, retries: 3, bearerTokenFile: await tokenFile('redirect-token') }] }), log, backoff: { baseMs: 10, maxMs: 10 } });
    notifiers.push(n);
    n.backupEnded(failedStatus('x'));
    await until('the delivery to give up', () => lines.some((l) => l.msg === 'notification not delivered'));
    await new Promise((r) => setTimeout(r, 200));
    expect(hook.requests).toHaveLength(1);
    expect(elsewhere.requests).toHaveLength(0);
    const failed = lines.find((l) => l.msg === 'notification not delivered')!;
    expect(failed.fields.error).toMatch(/HTTP 307 redirect to http:\/\/127\.0\.0\.1:\d+ not followed/);
    // The log names the endpoint by origin only: a path often carries a secret.
    expect(JSON.stringify(lines)).not.toContain('/hook');
  });

  it('sends the bearer token from a 0600 file, and refuses a token file others can read', async () => {
    const hook = await server();
    const n = await startNotifier({ config: config({ webhooks: [{ url: hook.url, bearerTokenFile: await tokenFile('s3cr3t-token') }] }), log: captureLog().log });
    notifiers.push(n);
    n.backupEnded(failedStatus('x'));
    await until('the webhook', () => hook.requests.length === 1);
    expect(hook.requests[0]!.headers.authorization).toBe('Bearer s3cr3t-token');

    const loose = await tokenFile('loose');
    await chmod(loose, 0o644);
    const err = await startNotifier({ config: config({ webhooks: [{ url: hook.url, bearerTokenFile: loose }] }), log: captureLog().log }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(AgentConfigError);
    expect((err as AgentConfigError).field).toBe('notifications.webhooks[0].bearerTokenFile');
    expect((err as Error).message).toMatch(/chmod 600/);
  });
});

async function tokenFile(token: string): Promise<string> {
  const p = join(tmp.dir, `token-${seq++}`);
  await writeFile(p, `${token}\n`, { mode: 0o600 });
  return p;
}

/** A hook script: records argv, the COWSTREAM_* environment and stdin into the file named by its first argument. */
async function recorderScript(): Promise<string> {
  const p = join(tmp.dir, `recorder-${seq++}.mjs`);
  await writeFile(
    p,
    `#!${process.execPath}
import { writeFileSync, readFileSync } from 'node:fs';
const stdin = readFileSync(0, 'utf8');
const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => k.startsWith('COWSTREAM_') || k.startsWith('AWS_')));
writeFileSync(process.argv[2], JSON.stringify({ argv: process.argv.slice(2), env, stdin }));
console.log('recorded ' + process.argv.length);
console.error('a warning on stderr');
`,
    { mode: 0o700 },
  );
  return p;
}

describe('command hooks', () => {
  it('run argv without a shell: payload on stdin, key fields in COWSTREAM_*, output in the log; metacharacters stay bytes', async () => {
    const out = join(tmp.dir, 'recorded.json');
    const marker = join(tmp.dir, 'PWNED');
    const evil = `$(touch ${marker}) \`touch ${marker}\` ; touch ${marker} | touch ${marker} && touch ${marker} > ${marker} '"\\`;
    const script = await recorderScript();
    const { log, lines } = captureLog();
    const n = await startNotifier({ config: config({ commands: [{ argv: [script, out, evil] }] }), log });
    notifiers.push(n);
    // The agent's own credentials are not the hook's business.
    process.env.AWS_SECRET_ACCESS_KEY = 'must-not-leak';
    try {
      n.backupEnded(failedStatus(evil));
      await until('the hook to run', () => lines.some((l) => l.msg === 'notification sent' || l.msg === 'notification not delivered'));
    } finally {
      delete process.env.AWS_SECRET_ACCESS_KEY;
    }
    const rec = JSON.parse(await readFile(out, 'utf8')) as { argv: string[]; env: Record<string, string>; stdin: string };
    expect(rec.argv).toEqual([out, evil]);
    expect(rec.env).toMatchObject({
      COWSTREAM_EVENT: 'backup.failed',
      COWSTREAM_HOST: 'notify-host',
      COWSTREAM_DISKS: 'vda',
      COWSTREAM_ARCHIVE_UUID: '0190a000-0000-7000-8000-000000000001',
      COWSTREAM_ARCHIVE_KEY: 'archives/notify-host/0190a000-0000-7000-8000-000000000001.cwa',
      COWSTREAM_ERROR: evil,
      COWSTREAM_PAYLOAD_VERSION: '1',
    });
    expect(rec.env.AWS_SECRET_ACCESS_KEY).toBeUndefined();
    const p = JSON.parse(rec.stdin) as NotifyPayload;
    expect(p).toMatchObject({ version: 1, event: 'backup.failed', error: evil, disks: ['vda'] });
    expect(rec.env.COWSTREAM_EVENT_ID).toBe(p.id);
    expect(existsSync(marker)).toBe(false);
    const sent = lines.find((l) => l.msg === 'notification sent')!;
    expect(sent.fields).toMatchObject({ exitCode: 0, stdout: 'recorded 4', stderr: 'a warning on stderr' });
  });

  it('keeps at most 4 KiB of a chatty hook\'s output in the log', async () => {
    const script = join(tmp.dir, `chatty-${seq++}.sh`);
    await writeFile(script, `#!/bin/sh\nhead -c 1000000 /dev/zero | tr '\\0' x\nexit 3\n`, { mode: 0o700 });
    const { log, lines } = captureLog();
    const n = await startNotifier({ config: config({ commands: [{ argv: [script] }] }), log });
    notifiers.push(n);
    n.backupEnded(failedStatus('x'));
    await until('the hook to end', () => lines.some((l) => l.msg === 'notification not delivered'));
    const f = lines.find((l) => l.msg === 'notification not delivered')!.fields;
    expect(f).toMatchObject({ error: 'command exited with 3', exitCode: 3 });
    expect(f.stdout).toBe(`${'x'.repeat(4096)}… (${1_000_000 - 4096} more bytes dropped)`);
  });

  it('kills a hook that outlives its timeout, with the processes it started; output so far is logged', async () => {
    const pidFile = join(tmp.dir, 'sleeper.pid');
    const script = join(tmp.dir, `slow-${seq++}.sh`);
    await writeFile(script, `#!/bin/sh\necho started\nsleep 60 &\necho $! > "$1"\nwait\n`, { mode: 0o700 });
    const { log, lines } = captureLog();
    const n = await startNotifier({ config: config({ commands: [{ argv: [script, pidFile], timeoutMs: 500 }] }), log });
    notifiers.push(n);
    const t0 = Date.now();
    n.backupEnded(failedStatus('slow'));
    await until('the hook to be given up', () => lines.some((l) => l.msg === 'notification not delivered'), 15_000);
    expect(Date.now() - t0).toBeLessThan(5_000);
    const failed = lines.find((l) => l.msg === 'notification not delivered')!;
    expect(failed.fields.error).toMatch(/command killed: timed out after 500 ms/);
    expect(failed.fields.stdout).toBe('started');
    const sleeper = Number(readFileSync(pidFile, 'utf8'));
    expect(sleeper).toBeGreaterThan(1);
    // The script's child (sleep 60) is gone too (or a zombie waiting to be reaped).
    await until('the sleeper to die', async () => {
      const st = await readFile(`/proc/${sleeper}/stat`, 'utf8').catch(() => null);
      return st === null || /^\d+ \(.*\) Z /.test(st);
    }, 5_000);
  });

  it('refuses a program named without a path, and one that is not executable, naming the field', async () => {
    expect(() => config({ commands: [{ argv: ['logger', 'x'] }] })).toThrow(/notifications\.commands\[0\]\.argv\[0\]: "logger" must be a path/);
    const notExec = join(tmp.dir, 'not-exec.sh');
    await writeFile(notExec, '#!/bin/sh\n', { mode: 0o600 });
    expect((await stat(notExec)).mode & 0o111).toBe(0);
    let err: unknown;
    try {
      config({ commands: [{ argv: [notExec] }] });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(AgentConfigError);
    expect((err as AgentConfigError).field).toBe('notifications.commands[0].argv[0]');
  });
});

describe('events of a running agent', () => {
  const payloads = (hook: HookServer): NotifyPayload[] => hook.requests.map((r) => JSON.parse(r.body) as NotifyPayload);

  it('restore jobs from the catalogue: restore.succeeded, and restore.failed for a refused target', async () => {
    const hook = await server();
    const allowed = join(tmp.dir, 'restores');
    await mkdir(allowed);
    const agent = await agentWith({
      catalog: { embedded: true },
      restore: { allowedDirs: [allowed], pollIntervalMs: 100 },
      notifications: { onSuccess: true, webhooks: [{ url: hook.url, events: ['restore.succeeded', 'restore.failed'] }] },
    });
    try {
      const client = new AgentClient(agent.controlSocket);
      const b = await client.startBackup({ mode: 'full', compressionLevel: 1 });
      expect((await client.waitForBackup(b.uuid, undefined, 20)).status).toBe('done');
      const catalog = new CatalogClient({ url: agent.catalogUrl!, token: (await loadOrCreateEmbeddedCredentials(agent.config.stateDir)).catalogToken });
      await until('the archive to be indexed', async () => (await catalog.listArchives({ host: 'notify-host' })).items.some((a) => a.uuid === b.uuid));
      const ok = await catalog.createRestore({ archiveId: b.uuid, hostId: 'notify-host', target: { path: join(allowed, 'out') } });
      await until('restore.succeeded', () => payloads(hook).some((p) => p.event === 'restore.succeeded'));
      const bad = await catalog.createRestore({ archiveId: b.uuid, hostId: 'notify-host', target: { path: join(tmp.dir, 'outside') } });
      await until('restore.failed', () => payloads(hook).some((p) => p.event === 'restore.failed'));
      const [s, f] = [payloads(hook).find((p) => p.event === 'restore.succeeded')!, payloads(hook).find((p) => p.event === 'restore.failed')!];
      expect(s).toMatchObject({ host: 'notify-host', archive: { uuid: b.uuid }, error: null, restore: { jobId: ok.restoreId, target: join(allowed, 'out'), bytes: 1024 * 1024 } });
      expect(f).toMatchObject({ archive: { uuid: b.uuid }, restore: { jobId: bad.restoreId } });
      expect(f.error).toMatch(/outside the allowed directories/);
      // The hook asked for restore events only.
      expect(payloads(hook).every((p) => p.event.startsWith('restore.'))).toBe(true);
    } finally {
      await agent.stop();
    }
  });

  it('retention after a scheduled backup: retention.succeeded lists what it removed', async () => {
    const hook = await server();
    const agent = await agentWith({
      schedules: [{ name: 'fast', disks: ['vda'], full: '* * * * * *', compressionLevel: 1, retention: { keepLast: 1 } }],
      notifications: { onSuccess: true, webhooks: [{ url: hook.url, events: ['retention.succeeded', 'retention.failed'] }] },
    });
    try {
      await until('a retention run that removed an archive', () => payloads(hook).some((p) => p.event === 'retention.succeeded' && p.retention!.removedCount > 0), 30_000);
      const p = payloads(hook).find((x) => x.event === 'retention.succeeded' && x.retention!.removedCount > 0)!;
      expect(p).toMatchObject({ disks: ['vda'], archive: null, error: null, retention: { schedule: 'fast', kept: 1 } });
      expect(p.retention!.removed).toHaveLength(p.retention!.removedCount);
    } finally {
      await agent.stop();
    }
  });

  it('retention that cannot list the bucket: retention.failed with the store error (the backup itself succeeded)', async () => {
    const hook = await server();
    const s3 = await startFauxqs('notify-retention');
    const proxy = await S3FaultProxy.start(s3.endpoint);
    // Listing the bucket fails for good; uploads go through.
    proxy.addRule({ op: 'ListObjects', action: { status: 500, code: 'InternalError' } });
    const saved = { id: process.env.AWS_ACCESS_KEY_ID, secret: process.env.AWS_SECRET_ACCESS_KEY };
    Object.assign(process.env, { AWS_ACCESS_KEY_ID: 'S3RVER', AWS_SECRET_ACCESS_KEY: 'S3RVER' });
    const agent = await agentWith({
      store: { bucket: 'notify-retention', prefix: '', region: 'us-east-1', endpoint: proxy.endpoint, forcePathStyle: true },
      schedules: [{ name: 'fast', disks: ['vda'], full: '* * * * * *', compressionLevel: 1, retention: { keepLast: 1 } }],
      notifications: { onSuccess: true, webhooks: [{ url: hook.url, events: ['backup.succeeded', 'retention.failed', 'retention.succeeded'] }] },
    });
    try {
      await until('retention.failed', () => payloads(hook).some((p) => p.event === 'retention.failed'), 30_000);
      const f = payloads(hook).find((p) => p.event === 'retention.failed')!;
      expect(f).toMatchObject({ disks: ['vda'], archive: null, retention: { schedule: 'fast', removedCount: 0 } });
      expect(f.error).toMatch(/injected fault/); // the proxy's S3 error message
      expect(payloads(hook).some((p) => p.event === 'backup.succeeded')).toBe(true);
      expect(payloads(hook).some((p) => p.event === 'retention.succeeded')).toBe(false);
    } finally {
      await agent.stop();
      await proxy.close();
      await s3.close();
      for (const [k, v] of [['AWS_ACCESS_KEY_ID', saved.id], ['AWS_SECRET_ACCESS_KEY', saved.secret]] as const) {
        if (v === undefined) delete process.env[k];
        else process.env[k] = v;
      }
    }
  });

  it('a scheduled backup that cannot start (its key file is gone) sends backup.failed', async () => {
    const hook = await server();
    const agent = await agentWith({
      schedules: [{ name: 'nightly', disks: ['vda'], full: '* * * * * *', key: join(tmp.dir, 'no-such.key') }],
      notifications: { webhooks: [{ url: hook.url }] },
    });
    try {
      await until('backup.failed', () => payloads(hook).some((p) => p.event === 'backup.failed'), 15_000);
      const f = payloads(hook).find((p) => p.event === 'backup.failed')!;
      expect(f).toMatchObject({ disks: ['vda'], archive: null });
      expect(f.error).toMatch(/^scheduled backup "nightly" could not start: key: .*no-such\.key/);
    } finally {
      await agent.stop();
    }
  });

  it('disk.stale: once for a disk never backed up, cleared by a backup, again when that one gets old', async () => {
    const hook = await server();
    const { log, lines } = captureLog();
    const agent = await startAgent(config({ staleAfter: '2s', webhooks: [{ url: hook.url }] }), { log });
    try {
      await until('the first disk.stale', () => payloads(hook).some((p) => p.event === 'disk.stale'));
      expect(payloads(hook)[0]).toMatchObject({ event: 'disk.stale', disks: ['vda'], archive: null, stale: { disk: 'vda', lastGood: null, ageSeconds: null, staleAfterSeconds: 2 } });
      const client = new AgentClient(agent.controlSocket);
      const b = await client.startBackup({ mode: 'full', target: `file:${join(tmp.dir, 'stale.cwa')}` });
      expect((await client.waitForBackup(b.uuid, undefined, 20)).status).toBe('done');
      await until('the episode to end', () => lines.some((l) => l.msg === 'disk no longer stale'));
      // Checked every second: a second event only when the new backup is older than 2 s.
      await until('the second disk.stale', () => payloads(hook).filter((p) => p.event === 'disk.stale').length >= 2);
      const second = payloads(hook).filter((p) => p.event === 'disk.stale')[1]!;
      expect(second).toMatchObject({ archive: { uuid: b.uuid }, stale: { lastGood: { uuid: b.uuid } } });
      await new Promise((r) => setTimeout(r, 2_500));
      expect(payloads(hook).filter((p) => p.event === 'disk.stale')).toHaveLength(2);
    } finally {
      await agent.stop();
    }
  });
});
