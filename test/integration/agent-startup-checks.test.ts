/**
 * Start-up checks (src/agent/startup-checks.ts): `cowstream agent
 * --check-config` and a normal start check the store (list + a write probe
 * under archives/<hostId>/) and the catalogue against real peers: s3rver
 * (SigV4-verified, so wrong keys are refused), fauxqs, a TCP server that
 * never answers and an HTTP catalogue that refuses the token. A failure
 * names the setting, exits 1 (2 for a bad config); `startDegraded` starts
 * and reports the failure in GET / and `cowstream status`.
 */
import { createServer as createTcpServer, type Server as TcpServer, type Socket } from 'node:net';
import { createServer as createHttpServer, type Server as HttpServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeDisk, makeTempDir, runCli, spawnAgent, writeAgentConfig } from '../helpers/agent-process.js';
import { startFauxqs, startS3rver, type TestS3Server } from '../helpers/s3-servers.js';
import { startEmbeddedCatalog } from '../../src/catalog/embedded.js';

const HOST = 'host-a';
let tmp: { dir: string; cleanup(): Promise<void> };
let s3rver: TestS3Server;
let fauxqs: TestS3Server;
let disk: string;
let n = 0;
const sockets = new Set<Socket>();
let blackHole: TcpServer;
let blackHoleUrl: string;
let refusing: HttpServer;
let refusingUrl: string;

/** Only the test's keys: nothing from the runner's AWS environment. */
function env(keys?: { accessKeyId: string; secretAccessKey: string }): NodeJS.ProcessEnv {
  return {
    AWS_ACCESS_KEY_ID: keys?.accessKeyId ?? 'S3RVER',
    AWS_SECRET_ACCESS_KEY: keys?.secretAccessKey ?? 'S3RVER',
    AWS_PROFILE: '',
    AWS_ENDPOINT_URL: '',
    AWS_ENDPOINT_URL_S3: '',
    COWSTREAM_CATALOG_TOKEN: '',
  };
}
const s3rverKeys = (): { accessKeyId: string; secretAccessKey: string } => s3rver.embedded!.credentials;

async function config(extra: Record<string, unknown>): Promise<string> {
  const dir = join(tmp.dir, `c${++n}`);
  const { mkdir } = await import('node:fs/promises');
  await mkdir(dir);
  return writeAgentConfig(dir, { hostId: HOST, stateDir: join(dir, 'state'), disks: [{ name: 'd0', path: disk }], ...extra });
}

function s3rverStore(bucket = s3rver.bucket): Record<string, unknown> {
  return { bucket, endpoint: s3rver.endpoint, region: 'us-east-1', forcePathStyle: true, requestChecksumCalculation: 'WHEN_REQUIRED', responseChecksumValidation: 'WHEN_REQUIRED' };
}

async function check(cfg: string, e: NodeJS.ProcessEnv, json = false): Promise<{ code: number | null; out: string; stderr: string }> {
  const r = await runCli(['agent', '--config', cfg, '--check-config', ...(json ? ['--json'] : [])], e, 20_000);
  return { code: r.code, out: r.stdout.toString(), stderr: r.stderr };
}

beforeAll(async () => {
  tmp = await makeTempDir('cowstream-checks-');
  disk = join(tmp.dir, 'd0.img');
  await makeDisk(disk, 1024 * 1024);
  [s3rver, fauxqs] = await Promise.all([startS3rver('check-bucket'), startFauxqs('check-bucket')]);
  blackHole = createTcpServer((s) => {
    sockets.add(s);
    s.on('error', () => undefined);
  });
  await new Promise<void>((r) => blackHole.listen(0, '127.0.0.1', r));
  blackHoleUrl = `http://127.0.0.1:${(blackHole.address() as AddressInfo).port}`;
  refusing = createHttpServer((_q, s) => {
    s.writeHead(401, { 'content-type': 'application/json' }).end(JSON.stringify({ error: { code: 'UNAUTHORIZED', message: 'bad token' } }));
  });
  await new Promise<void>((r) => refusing.listen(0, '127.0.0.1', r));
  refusingUrl = `http://127.0.0.1:${(refusing.address() as AddressInfo).port}`;
});

afterAll(async () => {
  for (const s of sockets) s.destroy();
  await new Promise<void>((r) => blackHole?.close(() => r()));
  await new Promise<void>((r) => refusing?.close(() => r()));
  await Promise.all([s3rver?.close(), fauxqs?.close()]);
  await tmp?.cleanup();
});

describe('cowstream agent --check-config', () => {
  it('passes a good store (s3rver and fauxqs) and the embedded default', async () => {
    const good = await check(await config({ store: s3rverStore() }), env(s3rverKeys()));
    expect(good.code, good.stderr).toBe(0);
    expect(good.out).toMatch(/^ok +store\.read: listed s3:\/\/check-bucket\/archives\/host-a\//m);
    expect(good.out).toMatch(/^ok +store\.write: may write under/m);

    const f = await check(await config({ store: { bucket: fauxqs.bucket, endpoint: fauxqs.endpoint, region: 'us-east-1', forcePathStyle: true } }), env(), true);
    expect(f.code, f.stderr).toBe(0);
    const body = JSON.parse(f.out) as { ok: boolean; checks: Array<{ name: string; status: string }> };
    expect(body.ok).toBe(true);
    expect(body.checks.map((c) => `${c.name}=${c.status}`)).toEqual(['store.read=ok', 'store.write=ok']);
    // The probe was aborted: nothing is left on fauxqs.
    expect(await fauxqs.pendingUploads()).toBe(0);

    const embedded = await check(await config({ catalog: { embedded: true } }), env());
    expect(embedded.code, embedded.stderr).toBe(0);
    expect(embedded.out).toMatch(/^skipped store\.read: embedded S3/m);
  });

  it('a missing bucket names store.bucket and exits 1', async () => {
    const r = await check(await config({ store: s3rverStore('no-such-bucket') }), env(s3rverKeys()), true);
    expect(r.code).toBe(1);
    const body = JSON.parse(r.out) as { ok: boolean; checks: Array<{ name: string; status: string; field?: string; fix?: string }> };
    expect(body.ok).toBe(false);
    expect(body.checks[0]).toMatchObject({ name: 'store.read', status: 'failed', field: 'store.bucket', code: 'STORE_CHECK' });
    expect(body.checks[0]!.fix).toMatch(/create the bucket/);
  });

  it('wrong credentials name the AWS credentials and exit 1', async () => {
    const r = await check(await config({ store: s3rverStore() }), env({ accessKeyId: s3rverKeys().accessKeyId, secretAccessKey: 'wrong-secret-wrong-secret' }));
    expect(r.code).toBe(1);
    expect(r.out).toMatch(/^failed +store\.read: AWS credentials: .*rejects the agent's credentials/m);
  });

  it('a stalled endpoint names store.endpoint within the store.timeouts bound', async () => {
    const t0 = Date.now();
    const r = await check(await config({ store: { ...s3rverStore(), endpoint: blackHoleUrl, timeouts: { connectMs: 500, requestMs: 1000 } } }), env());
    expect(r.code).toBe(1);
    expect(r.out).toMatch(/^failed +store\.read: store\.endpoint: .*did not answer in time/m);
    expect(Date.now() - t0).toBeLessThan(15_000);
  });

  it('a catalogue that refuses the token names it; an unreachable one names catalog.url', async () => {
    const refused = await check(await config({ store: s3rverStore(), catalog: { url: refusingUrl } }), env(s3rverKeys()));
    expect(refused.code).toBe(1);
    expect(refused.out).toMatch(/^ok +store\.write/m);
    expect(refused.out).toMatch(/^failed +catalog: COWSTREAM_CATALOG_TOKEN: .*refused the token/m);
    const down = await check(await config({ store: s3rverStore(), catalog: { url: 'http://127.0.0.1:1' } }), env(s3rverKeys()));
    expect(down.code).toBe(1);
    expect(down.out).toMatch(/^failed +catalog: catalog\.url: /m);
  });

  it('a real catalogue (catalog serve) passes with its token and names catalog.tokenFile for a wrong one', async () => {
    const { writeFile, mkdir } = await import('node:fs/promises');
    const stateDir = join(tmp.dir, 'catalog-state');
    await mkdir(stateDir);
    const catalog = await startEmbeddedCatalog({ stateDir, s3: s3rver.embedded!, logger: 'quiet', console: false });
    try {
      const good = join(tmp.dir, 'good.token');
      const bad = join(tmp.dir, 'bad.token');
      await writeFile(good, catalog.token, { mode: 0o600 });
      await writeFile(bad, 'x'.repeat(catalog.token.length), { mode: 0o600 });
      const ok = await check(await config({ store: s3rverStore(), catalog: { url: catalog.url, tokenFile: good } }), env(s3rverKeys()));
      expect(ok.code, ok.out + ok.stderr).toBe(0);
      expect(ok.out).toMatch(/^ok +catalog: GET \/hosts\/host-a\/restores at /m);
      const refused = await check(await config({ store: s3rverStore(), catalog: { url: catalog.url, tokenFile: bad } }), env(s3rverKeys()));
      expect(refused.code).toBe(1);
      expect(refused.out).toMatch(/^failed +catalog: catalog\.tokenFile: .*refused the token/m);
    } finally {
      await catalog.close();
    }
  });

  it('a bad config exits 2', async () => {
    const r = await check(await config({ store: { bucket: 'x' } }), env());
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/store\.bucket/);
  });
});

describe('cowstream agent (normal start)', () => {
  it('exits 1 naming the field when a check fails', async () => {
    const r = await runCli(['agent', '--config', await config({ store: s3rverStore('no-such-bucket') })], env(s3rverKeys()), 20_000);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/cowstream: store\.bucket: bucket "no-such-bucket" does not exist.*create the bucket/);
  });

  it('with startDegraded starts and reports the failure in GET / and cowstream status', async () => {
    const cfg = await config({ store: s3rverStore('no-such-bucket'), startDegraded: true });
    const agent = await spawnAgent(cfg, env(s3rverKeys()));
    try {
      expect(agent.logs.some((l) => l.msg === 'start-up check failed' && l.field === 'store.bucket')).toBe(true);
      const e = { ...env(), COWSTREAM_AGENT_SOCKET: agent.controlSocket };
      const st = await runCli(['status', '--json'], e);
      expect(st.code, st.stderr).toBe(0);
      const body = JSON.parse(st.stdout.toString()) as { degraded?: Array<{ name: string; field: string }> };
      expect(body.degraded).toEqual([expect.objectContaining({ name: 'store.read', field: 'store.bucket' })]);
      const text = await runCli(['status'], e);
      expect(text.stdout.toString()).toMatch(/^DEGRADED: start-up check store\.read failed: store\.bucket/m);
    } finally {
      expect(await agent.stop()).toBe(0);
    }
  });
});
