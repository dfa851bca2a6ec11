/**
 * Restore jobs belong to one host and one agent. Played as an attacker
 * would: host B's role (as API Gateway's IAM authorizer reports it) goes
 * after host A's jobs through lambda/api.ts; a second agent of A reports on
 * a job it did not claim; an agent dies holding a lease; bad targets,
 * unknown hosts and malformed URLs. Real dynalite and s3rver throughout.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { S3Client } from '@aws-sdk/client-s3';
import type { APIGatewayProxyStructuredResultV2 } from 'aws-lambda';
import { ZstdPool } from '../../src/codec/zstd-pool.js';
import { CLUSTER_SIZE } from '../../src/format/constants.js';
import { startEmbeddedS3, type EmbeddedS3 } from '../../src/store/embedded-s3.js';
import { startEmbeddedCatalog, type EmbeddedCatalog } from '../../src/catalog/embedded.js';
import { CatalogClient } from '../../src/catalog/client.js';
import { RestorePoller } from '../../src/agent/restore-poller.js';
import { iamCallerResolver, parseCallerRoles } from '../../src/catalog/access.js';
import { ConflictError, UsageError } from '../../src/errors.js';
import { buildChain, type ChainStep } from '../helpers/s3-chain-fixture.js';
import { apiEvent, startLambdaPeers, type IamCaller, type LambdaPeers } from '../helpers/lambda-peers.js';
import { runCli } from '../helpers/agent-process.js';

const ACCOUNT = '123456789012';
const role = (roleId: string, name: string): IamCaller => ({ userId: `${roleId}:session-1`, userArn: `arn:aws:sts::${ACCOUNT}:assumed-role/${name}/session-1` });
const HOST_A = role('AROAHOSTAAAAAAAAAAAAA', 'cowstream-Host-A');
const HOST_B = role('AROAHOSTBBBBBBBBBBBBB', 'cowstream-Host-B');
const OPERATOR = role('AROAOPERATOROOOOOOOOO', 'cowstream-Operator');
const STRANGER = role('AROASTRANGERSSSSSSSSS', 'SomeAdmin');
const CALLER_ROLES = JSON.stringify({
  operators: [OPERATOR.userId.split(':')[0]],
  hosts: [
    { roleId: HOST_A.userId.split(':')[0], hostId: 'A' },
    { roleId: HOST_B.userId.split(':')[0], hostId: 'B' },
  ],
});

let pool: ZstdPool;
beforeAll(() => {
  pool = new ZstdPool({ workers: 1 });
});
afterAll(async () => {
  await pool?.close();
});

const devices = [{ id: 0, name: 'vda', size: 4 * CLUSTER_SIZE }];
const body = (r: APIGatewayProxyStructuredResultV2): any => JSON.parse(r.body ?? 'null'); // eslint-disable-line @typescript-eslint/no-explicit-any

describe('lambda api: the caller is its IAM identity', () => {
  let peers: LambdaPeers;
  let chainA: ChainStep[];
  let handler: (typeof import('../../lambda/api.js'))['handler'];

  beforeAll(async () => {
    peers = await startLambdaPeers({ ARCHIVE_PREFIX: '', CALLER_ROLES, RESTORE_LEASE_SECONDS: '300' });
    chainA = await buildChain({ client: peers.s3Client, bucket: peers.s3.bucket, prefix: '', hostId: 'A', devices, incrementals: 0, compressor: pool, seed: 3 });
    await buildChain({ client: peers.s3Client, bucket: peers.s3.bucket, prefix: '', hostId: 'B', devices, incrementals: 0, compressor: pool, seed: 4 });
    const indexer = await import('../../lambda/indexer.js');
    await indexer.handler({ Records: peers.events.splice(0).flatMap((e) => e.Records) });
    ({ handler } = await import('../../lambda/api.js'));
  });
  afterAll(async () => {
    await peers?.close();
  });

  const call = (caller: IamCaller | undefined, method: string, path: string, b?: unknown): Promise<APIGatewayProxyStructuredResultV2> =>
    handler(apiEvent(method, path, b, caller));

  it("host B's role gets 403 on every route and operation of host A's jobs; the job is untouched", async () => {
    const created = await call(OPERATOR, 'POST', '/restores', { archiveId: chainA[0]!.uuid, hostId: 'A', target: { path: '/restore/a' } });
    expect(created.statusCode, created.body).toBe(202);
    const { restoreId } = body(created);
    const before = body(await call(OPERATOR, 'GET', `/restores/${restoreId}`));
    const attempts: Array<[string, string, unknown?]> = [
      ['GET', '/hosts/A/restores'],
      ['GET', '/hosts/A/restores?status=CLAIMED'],
      ['GET', `/restores/${restoreId}`],
      ['POST', `/restores/${restoreId}/claim`, { agentId: 'B@evil' }],
      ['POST', `/restores/${restoreId}/progress`, { agentId: 'B@evil', bytesDone: 0, bytesTotal: 1 }],
      ['POST', `/restores/${restoreId}/complete`, { agentId: 'B@evil', ok: false, error: 'x' }],
      ['POST', `/restores/${restoreId}/cancel`],
      ['POST', '/restores', { archiveId: chainA[0]!.uuid, hostId: 'B', target: { path: '/restore/b' } }],
      ['GET', '/archives'],
      ['GET', `/archives/${chainA[0]!.uuid}`],
      ['GET', `/archives/${chainA[0]!.uuid}/chain`],
      ['DELETE', `/archives/${chainA[0]!.uuid}`],
      ['GET', '/hosts'],
    ];
    for (const [method, path, b] of attempts) {
      const r = await call(HOST_B, method, path, b);
      expect(r.statusCode, `${method} ${path}: ${r.body}`).toBe(403);
      expect(body(r).error.code).toBe('FORBIDDEN');
    }
    // Neither an unknown role nor a request without IAM identity gets anywhere.
    for (const caller of [STRANGER, undefined]) {
      expect((await call(caller, 'GET', `/restores/${restoreId}`)).statusCode).toBe(403);
      expect((await call(caller, 'POST', `/restores/${restoreId}/claim`, { agentId: 'x' })).statusCode).toBe(403);
    }
    expect(body(await call(OPERATOR, 'GET', `/restores/${restoreId}`))).toEqual(before);
    // Host A sees and claims its own job; the operator reads everything but claims nothing.
    expect(body(await call(HOST_A, 'GET', '/hosts/A/restores')).items.map((j: { id: string }) => j.id)).toContain(restoreId);
    expect((await call(OPERATOR, 'POST', `/restores/${restoreId}/claim`, { agentId: 'op' })).statusCode).toBe(403);
    expect((await call(OPERATOR, 'GET', '/hosts/A/restores')).statusCode).toBe(200);
    expect((await call(OPERATOR, 'GET', '/archives?host=B')).statusCode).toBe(200);
    const claimed = await call(HOST_A, 'POST', `/restores/${restoreId}/claim`, { agentId: 'A@one' });
    expect(claimed.statusCode, claimed.body).toBe(200);
    expect(body(claimed).leaseExpiresAt).toBeDefined();
  });

  it("export jobs: host B can neither list, read, claim, report on, complete nor end host A's; only the operator requests and ends them", async () => {
    const created = await call(OPERATOR, 'POST', '/exports', { archiveId: chainA[0]!.uuid, hostId: 'A', devices: ['vda'] });
    expect(created.statusCode, created.body).toBe(202);
    const { exportId } = body(created);
    const before = body(await call(OPERATOR, 'GET', `/exports/${exportId}`));
    expect(before).toMatchObject({ kind: 'export', status: 'PENDING', hostId: 'A', locator: { key: chainA[0]!.key } });
    const served = { exportId: 'evil', exports: [{ name: 'export-evil/vda', disk: 'vda', size: 1, uris: ['nbd://attacker:10809/x'] }] };
    const attempts: Array<[string, string, unknown?]> = [
      ['GET', '/hosts/A/exports'],
      ['GET', '/hosts/A/exports?status=RUNNING'],
      ['GET', `/exports/${exportId}`],
      ['POST', `/exports/${exportId}/claim`, { agentId: 'B@evil' }],
      ['POST', `/exports/${exportId}/progress`, { agentId: 'B@evil', served }],
      ['POST', `/exports/${exportId}/complete`, { agentId: 'B@evil', ok: false, error: 'x' }],
      ['POST', `/exports/${exportId}/cancel`],
      ['DELETE', `/exports/${exportId}`],
      ['POST', '/exports', { archiveId: chainA[0]!.uuid, hostId: 'B' }],
    ];
    for (const [method, path, b] of attempts) {
      const r = await call(HOST_B, method, path, b);
      expect(r.statusCode, `${method} ${path}: ${r.body}`).toBe(403);
    }
    for (const caller of [STRANGER, undefined]) expect((await call(caller, 'GET', `/exports/${exportId}`)).statusCode).toBe(403);
    expect(body(await call(OPERATOR, 'GET', `/exports/${exportId}`))).toEqual(before);
    // Export jobs are not restore jobs: they never show up in the restore listing an older agent polls.
    expect(body(await call(HOST_A, 'GET', '/hosts/A/restores')).items.map((j: { id: string }) => j.id)).not.toContain(exportId);
    expect(body(await call(HOST_A, 'GET', '/hosts/A/exports')).items.map((j: { id: string }) => j.id)).toEqual([exportId]);
    expect((await call(OPERATOR, 'POST', `/exports/${exportId}/claim`, { agentId: 'op' })).statusCode).toBe(403);
    expect((await call(HOST_A, 'POST', `/exports/${exportId}/claim`, { agentId: 'A@one' })).statusCode).toBe(200);
    // A second agent of A may not report URIs for a job it did not claim.
    expect((await call(HOST_A, 'POST', `/exports/${exportId}/progress`, { agentId: 'A@two', served })).statusCode).toBe(409);
    const good = { exportId: '1a2b3c4d', exports: [{ name: 'export-1a2b3c4d/vda', disk: 'vda', size: 4, uris: ['nbd+unix:///export-1a2b3c4d/vda?socket=%2Frun%2Fnbd.sock'] }] };
    const rep = await call(HOST_A, 'POST', `/exports/${exportId}/progress`, { agentId: 'A@one', served: good });
    expect(rep.statusCode, rep.body).toBe(200);
    expect(body(rep)).toMatchObject({ status: 'RUNNING', served: good });
    expect((await call(HOST_A, 'DELETE', `/exports/${exportId}`)).statusCode).toBe(403);
    expect(body(await call(OPERATOR, 'DELETE', `/exports/${exportId}`)).status).toBe('CANCELLED');
    // The agent's next report is refused: that is how it learns to stop serving.
    expect((await call(HOST_A, 'POST', `/exports/${exportId}/progress`, { agentId: 'A@one' })).statusCode).toBe(409);
  });

  it('POST /exports: 400 naming the field for bad overlays, devices and cache sizes; 404 for unknown hosts', async () => {
    const cases: Array<[Record<string, unknown>, RegExp]> = [
      [{ overlay: 'rel/o.overlay' }, /overlay: must be an absolute path/],
      [{ overlay: '/srv/../etc/o' }, /overlay: must not contain a "\.\." segment/],
      [{ cache: { memoryBytes: -1 } }, /cache\.memoryBytes/],
      [{ devices: ['nope'] }, /devices: archive .* has no device nope/],
      [{ target: { path: '/x' } }, /target: unknown field/],
    ];
    for (const [extra, msg] of cases) {
      const r = await call(OPERATOR, 'POST', '/exports', { archiveId: chainA[0]!.uuid, hostId: 'A', ...extra });
      expect(r.statusCode, JSON.stringify(extra)).toBe(400);
      expect(body(r).error.message).toMatch(msg);
    }
    const r = await call(OPERATOR, 'POST', '/exports', { archiveId: chainA[0]!.uuid, hostId: 'never-seen' });
    expect(r.statusCode).toBe(404);
  });

  it('agentId is required on progress and complete, and any other agent than the claimer gets 409', async () => {
    const { restoreId } = body(await call(OPERATOR, 'POST', '/restores', { archiveId: chainA[0]!.uuid, hostId: 'A', target: { path: '/restore/c' } }));
    expect((await call(HOST_A, 'POST', `/restores/${restoreId}/claim`, { agentId: 'A@one' })).statusCode).toBe(200);
    const noAgent = await call(HOST_A, 'POST', `/restores/${restoreId}/progress`, { bytesDone: 1, bytesTotal: 2 });
    expect(noAgent.statusCode).toBe(400);
    expect(body(noAgent).error.message).toMatch(/agentId/);
    const noAgentComplete = await call(HOST_A, 'POST', `/restores/${restoreId}/complete`, { ok: true });
    expect(noAgentComplete.statusCode).toBe(400);
    expect(body(noAgentComplete).error.message).toMatch(/agentId/);
    expect((await call(HOST_A, 'POST', `/restores/${restoreId}/progress`, { agentId: 'A@two', bytesDone: 1, bytesTotal: 2 })).statusCode).toBe(409);
    expect((await call(HOST_A, 'POST', `/restores/${restoreId}/complete`, { agentId: 'A@two', ok: true })).statusCode).toBe(409);
    expect(body(await call(HOST_A, 'GET', `/restores/${restoreId}`)).status).toBe('CLAIMED');
    expect(body(await call(HOST_A, 'POST', `/restores/${restoreId}/progress`, { agentId: 'A@one', bytesDone: 1, bytesTotal: 2 })).status).toBe('RUNNING');
    expect(body(await call(HOST_A, 'POST', `/restores/${restoreId}/complete`, { agentId: 'A@one', ok: true })).status).toBe('SUCCEEDED');
  });

  it('POST /restores: 400 naming target.path for a relative or ".." target, 404 listing the known hosts for an unknown host', async () => {
    for (const path of ['relative/dir', '/restore/../etc/cron.d', '..', '/restore/x/..']) {
      const r = await call(OPERATOR, 'POST', '/restores', { archiveId: chainA[0]!.uuid, hostId: 'A', target: { path } });
      expect(r.statusCode, path).toBe(400);
      expect(body(r).error.message, path).toMatch(/target\.path: must (be an absolute path|not contain a "\.\." segment)/);
    }
    const r = await call(OPERATOR, 'POST', '/restores', { archiveId: chainA[0]!.uuid, hostId: 'never-seen', target: { path: '/restore/x' } });
    expect(r.statusCode).toBe(404);
    expect(body(r).error.message).toMatch(/host "never-seen".*known hosts: A, B/);
  });

  it('a malformed percent-escape in the URL is 400, not 500', async () => {
    for (const path of ['/restores/%ZZ', '/archives/%E0%A4%A', '/hosts/%/restores', '/restores/%C0%AF/claim']) {
      const caller = path.startsWith('/restores/%C0') ? HOST_A : OPERATOR;
      const r = await call(caller, path.endsWith('claim') ? 'POST' : 'GET', path, path.endsWith('claim') ? { agentId: 'a' } : undefined);
      expect(r.statusCode, `${path}: ${r.body}`).toBe(400);
      expect(body(r).error.message).toMatch(/malformed percent-escape/);
    }
  });

  it('CALLER_ROLES: missing or malformed refuses to run; the session name never counts', () => {
    expect(() => parseCallerRoles(undefined)).toThrow(/CALLER_ROLES is not set/);
    expect(() => parseCallerRoles('{"operators":[]}')).toThrow(/CALLER_ROLES is invalid/);
    const resolve = iamCallerResolver(parseCallerRoles(CALLER_ROLES));
    const ev = (c: IamCaller): ReturnType<typeof apiEvent> => apiEvent('GET', '/hosts', undefined, c);
    expect(resolve(ev(HOST_A))).toMatchObject({ operator: false, host: 'A' });
    expect(resolve(ev(OPERATOR))).toMatchObject({ operator: true, host: null });
    // A stranger naming its session after an operator role id is still a stranger.
    expect(() => resolve(ev({ userId: `AROASTRANGERSSSSSSSSS:${OPERATOR.userId}`, userArn: 'arn:x' }))).toThrow(/neither a host role nor the operator role/);
  });
});

describe('embedded catalogue: leases and --timeout', () => {
  let dir: string;
  let s3: EmbeddedS3;
  let catalog: EmbeddedCatalog;
  let client: CatalogClient;
  let chain: ChainStep[];
  const LEASE_MS = 1000;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'cowstream-jobs-'));
    s3 = await startEmbeddedS3({ dir: join(dir, 's3') });
    catalog = await startEmbeddedCatalog({ stateDir: dir, s3, logger: 'quiet', restoreLeaseMs: LEASE_MS });
    client = new CatalogClient({ url: catalog.url, token: catalog.token });
    chain = await buildChain({ client: catalog.s3Client, bucket: s3.bucket, prefix: '', hostId: 'h1', devices, incrementals: 0, compressor: pool, seed: 5 });
    await catalog.idle();
  });
  afterAll(async () => {
    await catalog?.close();
    await s3?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

  it('progress renews the lease; when the agent goes silent the job becomes FAILED naming the partial target', async () => {
    const target = '/restore/lease-target';
    const { restoreId } = await client.createRestore({ archiveId: chain[0]!.uuid, hostId: 'h1', target: { path: target } });
    await client.claimRestore(restoreId, 'h1@agent');
    // Reports every LEASE/4 for 2 leases keep the job alive.
    const until = Date.now() + 2 * LEASE_MS;
    while (Date.now() < until) {
      expect((await client.reportProgress(restoreId, { agentId: 'h1@agent', bytesDone: 1, bytesTotal: 10 })).status).toBe('RUNNING');
      await sleep(LEASE_MS / 4);
      expect((await client.getRestore(restoreId)).status).toBe('RUNNING');
    }
    // The agent dies.
    await sleep(LEASE_MS + 100);
    expect((await client.listRestores('h1', 'RUNNING')).items.map((j) => j.id)).not.toContain(restoreId);
    const job = await client.getRestore(restoreId);
    expect(job.status).toBe('FAILED');
    expect(job.error).toMatch(/^agent lost: no report from h1@agent .*a partial target may be left at \/restore\/lease-target$/);
    expect(job.finishedAt).toBeDefined();
    // A late report from the lost agent is refused: it must stop writing.
    await expect(client.reportProgress(restoreId, { agentId: 'h1@agent', bytesDone: 2, bytesTotal: 10 })).rejects.toBeInstanceOf(ConflictError);
    await expect(client.completeRestore(restoreId, { agentId: 'h1@agent', ok: true })).rejects.toBeInstanceOf(ConflictError);
    expect((await client.listRestores('h1', 'FAILED')).items.map((j) => j.id)).toContain(restoreId);
  });

  it('a CLAIMED job that never reports fails too, seen through the listing', async () => {
    const { restoreId } = await client.createRestore({ archiveId: chain[0]!.uuid, hostId: 'h1', target: { path: '/restore/never' } });
    await client.claimRestore(restoreId, 'h1@silent');
    await sleep(LEASE_MS + 100);
    expect((await client.listRestores('h1', 'CLAIMED')).items.map((j) => j.id)).not.toContain(restoreId);
    expect((await client.getRestore(restoreId)).status).toBe('FAILED');
  });

  it("the agent's reports renew its lease while it makes no byte progress (a stalled plan load)", async () => {
    const allowed = join(dir, 'restores');
    mkdirSync(allowed, { recursive: true });
    // The agent's S3 client stalls its first GET (the plan) for 2.5 leases.
    const slow = new S3Client({ endpoint: s3.endpoint, region: 'us-east-1', forcePathStyle: true, credentials: s3.credentials });
    let stalled = false;
    slow.middlewareStack.add(
      (next, context) => async (args) => {
        if (!stalled && context.commandName === 'GetObjectCommand') {
          stalled = true;
          await sleep(2.5 * LEASE_MS);
        }
        return next(args);
      },
      { step: 'initialize', name: 'stallFirstGet' },
    );
    const poller = new RestorePoller({ hostId: 'h1', client, allowedDirs: [allowed], store: { client: slow, bucket: s3.bucket }, compressor: pool, progressIntervalMs: LEASE_MS / 10 });
    const target = join(allowed, 'slow.raw');
    const { restoreId } = await client.createRestore({ archiveId: chain[0]!.uuid, hostId: 'h1', target: { path: target } });
    let finished = false;
    const run = poller.pollOnce().finally(() => {
      finished = true;
    });
    // A waiter reads the job throughout: reading is what evaluates the lease.
    const seen = new Set<string>();
    while (!finished) {
      seen.add((await client.getRestore(restoreId)).status);
      await sleep(LEASE_MS / 5);
    }
    const outcome = await run;
    slow.destroy();
    expect(stalled).toBe(true);
    expect(outcome, outcome?.error).toMatchObject({ jobId: restoreId, ok: true });
    expect([...seen]).not.toContain('FAILED');
    expect((await client.getRestore(restoreId)).status).toBe('SUCCEEDED');
    expect(readFileSync(target).equals(chain[0]!.disks.get('vda')!)).toBe(true);
  });

  it('the embedded API refuses bad targets and unknown hosts too', async () => {
    await expect(client.createRestore({ archiveId: chain[0]!.uuid, hostId: 'h1', target: { path: 'rel' } })).rejects.toThrow(/target\.path/);
    await expect(client.createRestore({ archiveId: chain[0]!.uuid, hostId: 'h1', target: { path: '/a/../b' } })).rejects.toBeInstanceOf(UsageError);
    await expect(client.createRestore({ archiveId: chain[0]!.uuid, hostId: 'nope', target: { path: '/a' } })).rejects.toThrow(/known hosts: h1/);
  });

  it('cowstream restore --via-catalog --wait --timeout gives up when no agent takes the job', async () => {
    const started = Date.now();
    const r = await runCli(['restore', chain[0]!.uuid, '--via-catalog', '--host', 'h1', '--to', '/restore/t', '--wait', '--timeout', '1s', '--catalog', catalog.url, '--catalog-token', catalog.token], {});
    expect(r.code, r.stderr.toString()).toBe(1);
    expect(r.stderr.toString()).toMatch(/still PENDING after 1000 ms \(--timeout\)/);
    expect(Date.now() - started).toBeLessThan(20_000);
    const bad = await runCli(['restore', chain[0]!.uuid, '--via-catalog', '--host', 'h1', '--to', '/restore/t', '--wait', '--timeout', 'soon', '--catalog', catalog.url, '--catalog-token', catalog.token], {});
    expect(bad.code).toBe(2);
    expect(bad.stderr.toString()).toMatch(/--timeout must be a positive duration/);
  });
});
