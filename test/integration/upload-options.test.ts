/**
 * What archive uploads send, seen by a recording proxy in front of a real
 * S3 peer (fauxqs): a checksum header on every UploadPart by default, the
 * storage class / SSE / Object Lock options on CreateMultipartUpload, and
 * no checksum at all when switched off by config or environment.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { GetObjectCommand } from '@aws-sdk/client-s3';
import type { StoreConfig } from '../../src/store/config.js';
import { createS3Client } from '../../src/store/s3-client.js';
import { S3ArchiveSink } from '../../src/store/s3-sink.js';
import { parseUploadOptions, resolveChecksumPolicy, sinkUploadOptions, type UploadOptions } from '../../src/store/upload-options.js';
import { parseAgentConfig } from '../../src/agent/config.js';
import { uploadOptionsFromFlags } from '../../src/cli/upload-flags.js';
import { ConfigError, UsageError } from '../../src/errors.js';
import { S3FaultProxy, type RecordedRequest } from '../helpers/s3-fault-proxy.js';
import { startFauxqs, type TestS3Server } from '../helpers/s3-servers.js';

const MiB = 1024 * 1024;
const PART = 5 * MiB;

let server: TestS3Server;
let proxy: S3FaultProxy;

beforeAll(async () => {
  server = await startFauxqs('uploads');
  proxy = await S3FaultProxy.start(server.endpoint);
});
afterAll(async () => {
  await proxy?.close();
  await server?.close();
});

/** CRC32C (Castagnoli), bitwise: independent of the SDK's implementation. */
function crc32c(buf: Buffer): string {
  let crc = 0xffffffff;
  for (const b of buf) {
    crc ^= b;
    for (let k = 0; k < 8; k++) crc = crc & 1 ? (crc >>> 1) ^ 0x82f63b78 : crc >>> 1;
  }
  const out = Buffer.alloc(4);
  out.writeUInt32BE((crc ^ 0xffffffff) >>> 0);
  return out.toString('base64');
}

/** Uploads `data` through the proxy; returns the requests the proxy saw for this key. */
async function upload(key: string, data: Buffer, cfg: Partial<StoreConfig>, upload: UploadOptions | undefined, env: NodeJS.ProcessEnv = {}): Promise<RecordedRequest[]> {
  const store: StoreConfig = { ...server.storeConfig('', proxy.endpoint), ...cfg };
  const client = createS3Client(store, { maxAttempts: 1 }, env);
  const from = proxy.requests.length;
  try {
    const sink = new S3ArchiveSink({ client, bucket: server.bucket, key, partSize: PART, ...sinkUploadOptions(upload, resolveChecksumPolicy(store, env)) });
    for (let off = 0; off < data.length; off += MiB) await sink.write(data.subarray(off, off + MiB));
    await sink.close();
    const got = await client.send(new GetObjectCommand({ Bucket: server.bucket, Key: key }));
    expect(Buffer.from(await got.Body!.transformToByteArray()).equals(data)).toBe(true);
  } finally {
    client.destroy();
  }
  return proxy.requests.slice(from).filter((r) => decodeURIComponent(r.url).includes(key));
}

const checksumHeaders = (r: RecordedRequest): string[] => Object.keys(r.headers).filter((h) => h.startsWith('x-amz-checksum-') || h === 'x-amz-sdk-checksum-algorithm');

describe('archive uploads', () => {
  it('by default every UploadPart carries a correct CRC32C, and CreateMultipartUpload the options asked for', async () => {
    const data = randomBytes(3 * PART + 12345);
    const opts = parseUploadOptions({
      storageClass: 'STANDARD_IA',
      sse: { mode: 'aws:kms', kmsKeyId: 'alias/backups' },
      objectLock: { mode: 'GOVERNANCE', retainUntil: '30d' },
    });
    const before = Date.now();
    const reqs = await upload('archives/h/default.cwa', data, {}, opts);
    const create = reqs.filter((r) => r.op === 'CreateMultipartUpload');
    const parts = reqs.filter((r) => r.op === 'UploadPart');
    expect(create).toHaveLength(1);
    expect(parts).toHaveLength(4);
    const h = create[0]!.headers;
    expect(h['x-amz-checksum-algorithm']).toBe('CRC32C');
    expect(h['x-amz-storage-class']).toBe('STANDARD_IA');
    expect(h['x-amz-server-side-encryption']).toBe('aws:kms');
    expect(h['x-amz-server-side-encryption-aws-kms-key-id']).toBe('alias/backups');
    expect(h['x-amz-object-lock-mode']).toBe('GOVERNANCE');
    const until = Date.parse(String(h['x-amz-object-lock-retain-until-date']));
    expect(until).toBeGreaterThanOrEqual(before + 30 * 86_400_000 - 1000);
    expect(until).toBeLessThanOrEqual(Date.now() + 30 * 86_400_000 + 1000);
    for (const p of parts) {
      const n = Number(new URL(p.url, 'http://x').searchParams.get('partNumber'));
      expect(p.headers['x-amz-checksum-crc32c'], `part ${n}`).toBe(crc32c(data.subarray((n - 1) * PART, n * PART)));
    }
  });

  it('the algorithm can be chosen (SHA256 on every part)', async () => {
    const reqs = await upload('archives/h/sha.cwa', randomBytes(2 * PART + 1), {}, parseUploadOptions({ checksumAlgorithm: 'SHA256' }));
    const parts = reqs.filter((r) => r.op === 'UploadPart');
    expect(parts).toHaveLength(3);
    for (const p of parts) expect(p.headers['x-amz-checksum-sha256']).toMatch(/^[A-Za-z0-9+/]{43}=$/);
  });

  it('WHEN_REQUIRED (config fields or AWS_*_CHECKSUM_* variables) sends no checksum header at all', async () => {
    const def = await upload('archives/h/get-default.cwa', randomBytes(PART + 1), {}, undefined);
    expect(def.find((r) => r.op === 'GetObject')!.headers['x-amz-checksum-mode']).toBe('ENABLED');
    for (const [cfg, env] of [
      [{ requestChecksumCalculation: 'WHEN_REQUIRED' as const, responseChecksumValidation: 'WHEN_REQUIRED' as const }, {}],
      [{}, { AWS_REQUEST_CHECKSUM_CALCULATION: 'when_required', AWS_RESPONSE_CHECKSUM_VALIDATION: 'WHEN_REQUIRED' }],
    ] as const) {
      const reqs = await upload(`archives/h/off-${Object.keys(env).length}.cwa`, randomBytes(2 * PART + 7), cfg, undefined, env);
      expect(reqs.filter((r) => r.op === 'UploadPart')).toHaveLength(3);
      for (const r of reqs) expect(checksumHeaders(r), `${r.op}`).toEqual([]);
    }
  });
});

describe('upload option validation', () => {
  it('unknown values are refused with the accepted ones', () => {
    expect(() => parseUploadOptions({ storageClass: 'COLD' })).toThrow(/upload\.storageClass: expected one of STANDARD, STANDARD_IA/);
    expect(() => parseUploadOptions({ sse: { mode: 'aws:kmss' } })).toThrow(UsageError);
    expect(() => parseUploadOptions({ objectLock: { mode: 'FOREVER', retainUntil: '30d' } })).toThrow(/GOVERNANCE or COMPLIANCE/);
    expect(() => parseUploadOptions({ objectLock: { mode: 'COMPLIANCE', retainUntil: 'next year' } })).toThrow(/ISO 8601/);
    expect(() => parseUploadOptions({ checksumAlgorithm: 'MD5' })).toThrow(/CRC32C, CRC32, SHA256/);
    expect(() => sinkUploadOptions(parseUploadOptions({ objectLock: { mode: 'COMPLIANCE', retainUntil: '2001-01-01T00:00:00Z' } }), resolveChecksumPolicy({}, {}))).toThrow(/in the past/);
    expect(() => resolveChecksumPolicy({}, { AWS_REQUEST_CHECKSUM_CALCULATION: 'sometimes' })).toThrow(/AWS_REQUEST_CHECKSUM_CALCULATION="sometimes": expected WHEN_SUPPORTED or WHEN_REQUIRED/);
    expect(() => resolveChecksumPolicy({}, { AWS_RESPONSE_CHECKSUM_VALIDATION: 'no' })).toThrow(UsageError);
  });

  it('CLI flags name the flag; the agent config names the field', () => {
    expect(() => uploadOptionsFromFlags({ storageClass: 'cold' })).toThrow(/--storage-class: expected one of/);
    expect(() => uploadOptionsFromFlags({ sseKmsKeyId: 'k' })).toThrow(/--sse-kms-key-id needs --sse aws:kms/);
    expect(() => uploadOptionsFromFlags({ objectLockMode: 'GOVERNANCE' })).toThrow(/needs both/);
    expect(uploadOptionsFromFlags({ sse: 'aws:kms', sseKmsKeyId: 'k', objectLockMode: 'COMPLIANCE', objectLockRetainUntil: '7d', checksumAlgorithm: 'CRC32' })).toEqual({
      sse: { mode: 'aws:kms', kmsKeyId: 'k' },
      objectLock: { mode: 'COMPLIANCE', retainUntil: '7d' },
      checksumAlgorithm: 'CRC32',
    });
    const base = { hostId: 'h', stateDir: '/tmp/x', disks: [{ name: 'vda', path: process.execPath }] };
    const bad = (store: unknown): unknown => {
      try {
        parseAgentConfig({ ...base, store: { bucket: 'bkt', ...(store as object) } });
        return null;
      } catch (err) {
        return err;
      }
    };
    expect(bad({ upload: { storageClass: 'COLD' } })).toSatisfy((e: unknown) => e instanceof ConfigError && /store\.upload\.storageClass/.test((e as Error).message));
    expect(bad({ requestChecksumCalculation: 'ALWAYS' })).toSatisfy((e: unknown) => e instanceof ConfigError && /store\.requestChecksumCalculation/.test((e as Error).message));
    expect(bad({ upload: { sse: { mode: 'AES256' }, checksumAlgorithm: 'CRC32C' }, responseChecksumValidation: 'WHEN_REQUIRED' })).toBeNull();
  });
});

describe('the agent applies store.upload to its backups', () => {
  it('an agent backup to a configured bucket carries the options and a checksum on every part', async () => {
    const { startAgent } = await import('../../src/agent/agent.js');
    const { AgentClient } = await import('../../src/agent/control-client.js');
    const { silentLogger } = await import('../../src/agent/log.js');
    const { makeDisk, makeTempDir } = await import('../helpers/agent-process.js');
    const tmp = await makeTempDir('cowstream-upload-opts-');
    const saved = { id: process.env.AWS_ACCESS_KEY_ID, secret: process.env.AWS_SECRET_ACCESS_KEY };
    // The agent's store config has no credentials field: the SDK chain (env) supplies them (fauxqs accepts any).
    process.env.AWS_ACCESS_KEY_ID = 'AKIAUPLOADTEST';
    process.env.AWS_SECRET_ACCESS_KEY = 'upload-test-secret';
    const from = proxy.requests.length;
    const disk = join(tmp.dir, 'vda.raw');
    await makeDisk(disk, 24 * MiB, 77);
    const agent = await startAgent(
      parseAgentConfig({
        hostId: 'opts-host',
        stateDir: join(tmp.dir, 'state'),
        disks: [{ name: 'vda', path: disk }],
        nbd: { listen: '127.0.0.1:0' },
        store: { bucket: server.bucket, prefix: 'p', region: 'us-east-1', endpoint: proxy.endpoint, upload: { storageClass: 'GLACIER_IR', sse: { mode: 'AES256' } } },
      }),
      { log: silentLogger },
    );
    try {
      const control = new AgentClient(agent.controlSocket);
      const st = await control.startBackup({ mode: 'full', target: 's3', compressionLevel: 1 });
      const done = await control.waitForBackup(st.uuid, undefined, 25);
      expect(done.status, String(done.error)).toBe('done');
      const mine = proxy.requests.slice(from).filter((r) => r.url.includes(st.uuid));
      const create = mine.filter((r) => r.op === 'CreateMultipartUpload');
      const parts = mine.filter((r) => r.op === 'UploadPart');
      expect(create).toHaveLength(1);
      expect(create[0]!.headers).toMatchObject({ 'x-amz-storage-class': 'GLACIER_IR', 'x-amz-server-side-encryption': 'AES256', 'x-amz-checksum-algorithm': 'CRC32C' });
      expect(parts.length).toBeGreaterThanOrEqual(2);
      for (const p of parts) expect(p.headers['x-amz-checksum-crc32c']).toMatch(/^[A-Za-z0-9+/]{6}==$/);
    } finally {
      await agent.stop();
      await tmp.cleanup();
      for (const [k, v] of [['AWS_ACCESS_KEY_ID', saved.id], ['AWS_SECRET_ACCESS_KEY', saved.secret]] as const) {
        if (v === undefined) delete process.env[k];
        else process.env[k] = v;
      }
    }
  }, 60_000);
});
