/**
 * Persistent S3 failure, through the real agent:
 *
 *   agent (store → S3FaultProxy → fauxqs, which implements multipart abort)
 *   full backup OK → writes through NBD (src/nbd/client.ts) → every
 *   UploadPart fails persistently → incremental backup fails cleanly:
 *     - status "error" with a message naming the S3 failure,
 *     - no object under archives/ for it (HeadObject + ListObjectsV2),
 *     - no multipart upload left (fauxqs' own state),
 *     - GET /disks still reports the dirty bytes (bits reclaimed, not lost);
 *   heal the proxy → more writes → incremental OK, parent = the full →
 *   restore the chain (full + incremental) from S3 → byte-identical to the disk.
 *
 * The archive must be larger than the S3 sink's minimum part size (8 MiB),
 * otherwise lib-storage sends one PutObject and there is no UploadPart to
 * fail: so the disk is ~12 MiB and the first writes cover 10 MiB of random data.
 */
import { mkdir, readFile } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { HeadObjectCommand, ListObjectsV2Command, type S3Client } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startAgent, type Agent } from '../../src/agent/agent.js';
import { parseAgentConfig } from '../../src/agent/config.js';
import { AgentClient } from '../../src/agent/control-client.js';
import { silentLogger } from '../../src/agent/log.js';
import type { BackupStatus, FileDiskStatus } from '../../src/agent/backup-request.js';
import { ZstdPool } from '../../src/codec/zstd-pool.js';
import { CLUSTER_SIZE } from '../../src/format/constants.js';
import { NbdClient } from '../../src/nbd/client.js';
import { restoreArchive } from '../../src/restore/engine.js';
import { buildRestorePlan, sourceOpener, type ArchiveContext } from '../../src/restore/locate.js';
import { archiveKey, archivesPrefix } from '../../src/store/config.js';
import { makeDisk, makeTempDir } from '../helpers/agent-process.js';
import { firstDiff } from '../helpers/agent-archive.js';
import { S3FaultProxy } from '../helpers/s3-fault-proxy.js';
import { startFauxqs, type TestS3Server } from '../helpers/s3-servers.js';

const MiB = 1024 * 1024;
const SIZE = 12 * MiB + 3 * 4096 + 123; // odd: the partial last cluster is exercised
const BUCKET = 'persist-fail';
const PREFIX = 'site';
const HOST = 'fail-host';
const CREDS = { AWS_ACCESS_KEY_ID: 'S3RVER', AWS_SECRET_ACCESS_KEY: 'S3RVER' } as const;

let tmp: { dir: string; cleanup(): Promise<void> };
let server: TestS3Server;
let proxy: S3FaultProxy;
let direct: S3Client;
let agent: Agent;
let control: AgentClient;
let pool: ZstdPool;
let diskPath: string;
const savedEnv = new Map(Object.keys(CREDS).map((k) => [k, process.env[k]]));

beforeAll(async () => {
  // The agent's store config has no credentials field: the SDK default chain (env) supplies them.
  Object.assign(process.env, CREDS);
  tmp = await makeTempDir('cowstream-s3-failure-');
  diskPath = join(tmp.dir, 'vda.raw');
  await makeDisk(diskPath, SIZE, 4242);
  server = await startFauxqs(BUCKET);
  proxy = await S3FaultProxy.start(server.endpoint);
  direct = server.client();
  agent = await startAgent(
    parseAgentConfig({
      hostId: HOST,
      stateDir: join(tmp.dir, 'state'),
      disks: [{ name: 'vda', path: diskPath }],
      nbd: { listen: '127.0.0.1:0' },
      store: { bucket: BUCKET, prefix: PREFIX, region: 'us-east-1', endpoint: proxy.endpoint, forcePathStyle: true },
    }),
    { log: silentLogger },
  );
  control = new AgentClient(agent.controlSocket);
  pool = new ZstdPool({ workers: 1 });
});

afterAll(async () => {
  await agent?.stop();
  await pool?.close();
  await proxy?.close();
  await server?.close();
  await tmp?.cleanup();
  for (const [k, v] of savedEnv) {
    if (v === undefined) delete process.env[k];
    else process.env[k] = v;
  }
});

async function exists(key: string): Promise<boolean> {
  try {
    await direct.send(new HeadObjectCommand({ Bucket: BUCKET, Key: key }));
    return true;
  } catch (err) {
    if ((err as { name?: string }).name === 'NotFound' || (err as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode === 404) return false;
    throw err;
  }
}

async function archiveKeys(): Promise<string[]> {
  const res = await direct.send(new ListObjectsV2Command({ Bucket: BUCKET, Prefix: archivesPrefix(PREFIX) }));
  return (res.Contents ?? []).map((o) => o.Key!).sort();
}

async function backup(mode: 'full' | 'incremental'): Promise<BackupStatus> {
  const st = await control.startBackup({ mode, target: 's3' });
  expect(st.mode).toBe(mode);
  return control.waitForBackup(st.uuid, undefined, 25);
}

/** Writes through the agent's NBD export, like a guest would. */
async function nbdWrite(writes: { offset: number; data: Buffer }[]): Promise<void> {
  const c = await NbdClient.connect({ host: agent.nbdAddress!.host, port: agent.nbdAddress!.port }, { exportName: 'vda' });
  try {
    await Promise.all(writes.map((w) => c.write(w.offset, w.data)));
  } finally {
    await c.close();
  }
}

async function vdaStatus(): Promise<FileDiskStatus> {
  const d = (await control.disks()).find((x) => x.name === 'vda');
  expect(d?.kind).toBe('file');
  return d as FileDiskStatus;
}

describe('persistent S3 failure during an incremental (agent → fault proxy → fauxqs)', () => {
  it('fails cleanly, leaves nothing behind, keeps the dirty bits; the next incremental has every change', async () => {
    // 1. Full backup through the (healthy) proxy.
    const full = await backup('full');
    expect(full.status, full.error ?? '').toBe('done');
    expect(await archiveKeys()).toEqual([archiveKey(PREFIX, HOST, full.uuid)]);
    const fullImage = await readFile(diskPath);
    expect((await vdaStatus()).bitmap.dirtyBytes).toBe(0);

    // 2. Guest writes: 10 MiB of random data (→ a multipart archive), in 1 MiB requests.
    const first = 1 * MiB + 4096;
    await nbdWrite(Array.from({ length: 10 }, (_, i) => ({ offset: first + i * MiB, data: randomBytes(MiB) })));
    const dirtyBefore = (await vdaStatus()).bitmap.dirtyBytes!;
    // [1 MiB + 4 KiB, 11 MiB + 4 KiB) touches 161 clusters.
    expect(dirtyBefore).toBe((Math.ceil((first + 10 * MiB) / CLUSTER_SIZE) - Math.floor(first / CLUSTER_SIZE)) * CLUSTER_SIZE);

    // 3. Every UploadPart fails from now on (after the SDK's retries too).
    const creates = proxy.count('CreateMultipartUpload');
    const aborts = proxy.count('AbortMultipartUpload');
    proxy.addRule({ op: 'UploadPart', action: { status: 500 } });
    const failed = await backup('incremental');
    expect(failed.status).toBe('error');
    expect(failed.error).toMatch(/upload failed \(s3:\/\/persist-fail\/site\/archives\/fail-host\/.*InternalError 500/);
    expect(failed.parentUuid).toBe(full.uuid);
    // The multipart upload really existed, parts really failed, and it was aborted.
    expect(proxy.count('CreateMultipartUpload')).toBe(creates + 1);
    expect(proxy.injected.filter((f) => f.op === 'UploadPart').length).toBeGreaterThan(1); // retried
    expect(proxy.count('AbortMultipartUpload')).toBeGreaterThan(aborts);
    // Nothing is visible: no object, no pending multipart upload.
    expect(await exists(archiveKey(PREFIX, HOST, failed.uuid))).toBe(false);
    expect(await archiveKeys()).toEqual([archiveKey(PREFIX, HOST, full.uuid)]);
    expect(await server.pendingUploads()).toBe(0);
    // The dirty bits were reclaimed: the changes are still pending for the next incremental.
    const afterFail = await vdaStatus();
    expect(afterFail.bitmap.state).toBe('valid');
    expect(afterFail.bitmap.dirtyBytes).toBe(dirtyBefore);
    expect(afterFail.inBackup).toBe(false);
    expect(afterFail.lastBackup?.uuid).toBe(full.uuid);

    // 4. Heal, write a little more (incl. the partial last cluster), back up again.
    proxy.clearRules();
    await nbdWrite([
      { offset: 4096, data: randomBytes(8192) },
      { offset: 5 * MiB + 100, data: randomBytes(3000) }, // overlaps part of the failed backup's changes
      { offset: SIZE - 200, data: randomBytes(200) },
    ]);
    await agent.disks[0]!.device.flush(); // no writes happen during the next backup: the file is its snapshot
    const inc = await backup('incremental');
    expect(inc.status, inc.error ?? '').toBe('done');
    expect(inc.parentUuid).toBe(full.uuid);
    expect(inc.total).toBeGreaterThanOrEqual(dirtyBefore); // carries the failed backup's changes too
    const image = await readFile(diskPath);
    expect(firstDiff(image, fullImage)).toBeGreaterThanOrEqual(0); // the chain matters
    expect(await archiveKeys()).toEqual([archiveKey(PREFIX, HOST, full.uuid), archiveKey(PREFIX, HOST, inc.uuid)].sort());
    expect(await server.pendingUploads()).toBe(0);

    // 5. Restore full + incremental from S3 (direct, healthy path) and compare byte for byte.
    const ctx: ArchiveContext = { store: server.storeConfig(PREFIX), client: direct };
    const plan = await buildRestorePlan(inc.uuid, ctx);
    expect(plan.chain.map((a) => a.uuid)).toEqual([inc.uuid, full.uuid]);
    const out = join(tmp.dir, 'restore');
    await mkdir(out);
    const res = await restoreArchive({ plan, openSource: sourceOpener(ctx), target: out, compressor: pool, parallel: 4 });
    expect(res.chainLength).toBe(2);
    const restored = await readFile(join(out, 'vda.raw'));
    expect(restored.length).toBe(SIZE);
    const diff = firstDiff(restored, image);
    expect(diff, `restored chain differs from the disk at byte ${diff}`).toBe(-1);
  });
});
