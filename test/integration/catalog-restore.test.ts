/**
 * Restores through the catalogue: request → the poller claims, loads the
 * plan from S3, restores with the shared engine, reports progress and
 * completes. Real s3rver + dynalite; and the security refusals.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, symlinkSync, existsSync, writeFileSync } from 'node:fs';
import { spawn } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GetObjectCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import { ZstdPool } from '../../src/codec/zstd-pool.js';
import { CLUSTER_SIZE } from '../../src/format/constants.js';
import { startEmbeddedS3, type EmbeddedS3 } from '../../src/store/embedded-s3.js';
import { startEmbeddedCatalog, type EmbeddedCatalog } from '../../src/catalog/embedded.js';
import { CatalogClient } from '../../src/catalog/client.js';
import { RestorePoller, checkRestoreTarget } from '../../src/agent/restore-poller.js';
import { runRestoreViaCatalog } from '../../src/cli/commands/restore-via-catalog.js';
import { ForbiddenError, RestoreError } from '../../src/errors.js';
import { buildChain, type ChainStep } from '../helpers/s3-chain-fixture.js';

let dir: string;
let s3: EmbeddedS3;
let catalog: EmbeddedCatalog;
let client: CatalogClient;
let pool: ZstdPool;
let chain: ChainStep[];
let allowed: string;
let exported: string;

function poller(extra: Partial<ConstructorParameters<typeof RestorePoller>[0]> = {}): RestorePoller {
  return new RestorePoller({
    hostId: 'h1',
    client,
    allowedDirs: [allowed],
    forbiddenPaths: [exported],
    store: { client: catalog.s3Client, bucket: s3.bucket },
    compressor: pool,
    progressIntervalMs: 50,
    ...extra,
  });
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'cowstream-catalog-restore-'));
  allowed = join(dir, 'restores');
  mkdirSync(allowed);
  exported = join(allowed, 'exported-disk.raw');
  writeFileSync(exported, Buffer.alloc(4096, 7));
  s3 = await startEmbeddedS3({ dir: join(dir, 's3') });
  catalog = await startEmbeddedCatalog({ stateDir: dir, s3, logger: 'quiet' });
  client = new CatalogClient({ url: catalog.url, token: catalog.token });
  pool = new ZstdPool({ workers: 2 });
  chain = await buildChain({
    client: catalog.s3Client,
    bucket: s3.bucket,
    prefix: '',
    hostId: 'h1',
    devices: [
      { id: 0, name: 'vda', size: 20 * CLUSTER_SIZE + 4096 },
      { id: 1, name: 'vdb', size: 6 * CLUSTER_SIZE },
    ],
    incrementals: 2,
    compressor: pool,
    seed: 7,
  });
  await catalog.idle();
});

afterAll(async () => {
  await catalog?.close();
  await s3?.close();
  await pool?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('restore through the catalogue', () => {
  it('the poller restores the requested archive byte-identically and the CLI follows it', async () => {
    const mid = chain[1]!; // restore an older point in time, not just the newest
    const target = join(allowed, 'out1');
    const p = poller({ pollIntervalMs: 50 });
    p.start();
    try {
      const job = await runRestoreViaCatalog({ ref: mid.uuid, host: 'h1', to: target, wait: true, catalog: catalog.url, catalogToken: catalog.token, json: false, pollMs: 50, timeoutMs: 30_000 });
      expect(job.status).toBe('SUCCEEDED');
      expect(job.progress.bytesDone).toBe(job.progress.bytesTotal);
      expect(job.progress.bytesTotal).toBe(26 * CLUSTER_SIZE + 4096);
    } finally {
      await p.stop();
    }
    for (const [name, data] of mid.disks) expect(readFileSync(join(target, `${name}.raw`)).equals(data), name).toBe(true);
  });

  it('restores one device of the newest archive', async () => {
    const last = chain[chain.length - 1]!;
    const target = join(allowed, 'only-vdb.raw');
    const { restoreId } = await client.createRestore({ archiveId: last.uuid, hostId: 'h1', devices: ['vdb'], target: { path: target } });
    const outcome = await poller().pollOnce();
    expect(outcome).toMatchObject({ jobId: restoreId, ok: true });
    expect(readFileSync(target).equals(last.disks.get('vdb')!)).toBe(true);
    expect((await client.getRestore(restoreId)).status).toBe('SUCCEEDED');
  });

  it('refuses targets outside allowedDirs, through symlinks or "..", and exported disks — marked FAILED with the reason', async () => {
    const last = chain[chain.length - 1]!;
    const outside = join(dir, 'outside');
    mkdirSync(outside);
    symlinkSync(outside, join(allowed, 'escape'));
    const cases: Array<{ path: string; devices?: string[]; reason: RegExp }> = [
      { path: join(outside, 'x'), reason: /outside the allowed directories/ },
      { path: join(allowed, 'escape', 'x'), reason: /outside the allowed directories/ },
      { path: '/etc/cowstream-should-never-exist', reason: /outside the allowed directories/ },
      { path: exported, devices: ['vda'], reason: /exported disk/ },
    ];
    for (const c of cases) {
      const { restoreId } = await client.createRestore({ archiveId: last.uuid, hostId: 'h1', target: { path: c.path }, ...(c.devices ? { devices: c.devices } : {}) });
      const outcome = await poller().pollOnce();
      expect(outcome?.jobId).toBe(restoreId);
      expect(outcome?.ok, c.path).toBe(false);
      const job = await client.getRestore(restoreId);
      expect(job.status).toBe('FAILED');
      expect(job.error, c.path).toMatch(c.reason);
    }
    // The catalogue already refuses a ".." target at request time (400 naming target.path).
    await expect(client.createRestore({ archiveId: last.uuid, hostId: 'h1', target: { path: `${allowed}/../outside/y` } })).rejects.toThrow(/target\.path/);
    expect(existsSync(join(outside, 'x'))).toBe(false);
    expect(existsSync(join(outside, 'y'))).toBe(false);
    expect(readFileSync(exported).equals(Buffer.alloc(4096, 7))).toBe(true);
    // The CLI reports a failed job as a RestoreError.
    const p = poller({ pollIntervalMs: 50 });
    p.start();
    try {
      await expect(
        runRestoreViaCatalog({ ref: last.uuid, host: 'h1', to: join(outside, 'z'), wait: true, catalog: catalog.url, catalogToken: catalog.token, json: true, pollMs: 50, timeoutMs: 30_000 }),
      ).rejects.toBeInstanceOf(RestoreError);
    } finally {
      await p.stop();
    }
  });

  it('checkRestoreTarget: an empty allow-list refuses everything; relative paths are refused', async () => {
    await expect(checkRestoreTarget(join(allowed, 'a'), ['vda'], [], [])).rejects.toBeInstanceOf(ForbiddenError);
    await expect(checkRestoreTarget('relative/path', ['vda'], [allowed], [])).rejects.toBeInstanceOf(ForbiddenError);
    await expect(checkRestoreTarget(`${allowed}/../outside/y`, ['vda'], [allowed], [])).rejects.toThrow(/"\.\." segment/);
    await expect(checkRestoreTarget(join(allowed, 'ok'), ['vda', 'vdb'], [allowed], [])).resolves.toEqual([join(allowed, 'ok', 'vda.raw'), join(allowed, 'ok', 'vdb.raw')]);
  });

  it('a symlink flipping in and out of a target component under load never gets a file written outside', async () => {
    const last = chain[chain.length - 1]!;
    const outside = join(dir, 'outside-flip');
    mkdirSync(outside);
    const flipDir = join(allowed, 'flipzone');
    mkdirSync(flipDir);
    mkdirSync(join(flipDir, 'real'));
    symlinkSync(outside, join(flipDir, 'link'));
    // Another process renames a directory and a symlink to `flip` in turn, as fast as it can.
    const flipper = spawn('sh', ['-c', 'cd "$0" && while :; do mv -T link flip; mv -T flip link; mv -T real flip; mv -T flip real; done 2>/dev/null', flipDir], { stdio: 'ignore' });
    const outcomes: boolean[] = [];
    try {
      for (let i = 0; i < 40; i++) {
        const target = join(flipDir, 'flip', `out-${i}.raw`);
        await client.createRestore({ archiveId: last.uuid, hostId: 'h1', devices: ['vdb'], target: { path: target } });
        const outcome = await poller().pollOnce();
        outcomes.push(outcome?.ok === true);
      }
    } finally {
      flipper.kill('SIGKILL');
    }
    expect(readdirSync(outside)).toEqual([]);
    // Every restore that succeeded wrote its file into the real directory, mode 0600.
    const written = readdirSync(join(flipDir, existsSync(join(flipDir, 'real')) ? 'real' : 'flip'));
    expect(written.length).toBe(outcomes.filter(Boolean).length);
    for (const f of written) expect(statSync(join(flipDir, existsSync(join(flipDir, 'real')) ? 'real' : 'flip', f)).mode & 0o777).toBe(0o600);
  }, 120_000);

  it('refuses a plan that would read local files instead of archives', async () => {
    const last = chain[chain.length - 1]!;
    const { restoreId } = await client.createRestore({ archiveId: last.uuid, hostId: 'h1', target: { path: join(allowed, 'evil') } });
    const job = await client.getRestore(restoreId);
    // A compromised catalogue rewrites the plan to read /etc/passwd as an "archive".
    const planObj = await catalog.s3Client.send(new GetObjectCommand({ Bucket: s3.bucket, Key: job.planKey }));
    const plan = JSON.parse(await planObj.Body!.transformToString());
    plan.chain[0].locator = { kind: 'file', path: '/etc/passwd' };
    await catalog.s3Client.send(new PutObjectCommand({ Bucket: s3.bucket, Key: job.planKey, Body: JSON.stringify(plan) }));
    const outcome = await poller().pollOnce();
    expect(outcome).toMatchObject({ jobId: restoreId, ok: false });
    expect((await client.getRestore(restoreId)).error).toMatch(/local file/);
    expect(existsSync(join(allowed, 'evil'))).toBe(false);
  });
});
