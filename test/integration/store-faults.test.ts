/**
 * Upload under faults, through the fault-injecting proxy:
 *  - transient 500/503s and connection resets → the upload still succeeds (SDK retries);
 *  - everything failing → a clean failure, no object, no multipart upload left (fauxqs).
 * The slow-endpoint / RSS test is in store-backpressure.test.ts (own process).
 */
import { createHash, randomBytes } from 'node:crypto';
import { GetObjectCommand, HeadObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { StoreError } from '../../src/errors.js';
import { S3ArchiveSink } from '../../src/store/s3-sink.js';
import { S3FaultProxy } from '../helpers/s3-fault-proxy.js';
import { startFauxqs, startS3rver, type TestS3Server } from '../helpers/s3-servers.js';

const MiB = 1024 * 1024;

async function sha(client: S3Client, bucket: string, key: string): Promise<string> {
  const res = await client.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
  return createHash('sha256').update(await res.Body!.transformToByteArray()).digest('hex');
}

async function exists(client: S3Client, bucket: string, key: string): Promise<boolean> {
  try {
    await client.send(new HeadObjectCommand({ Bucket: bucket, Key: key }));
    return true;
  } catch {
    return false;
  }
}

for (const [name, start] of [
  ['s3rver', startS3rver],
  ['fauxqs', startFauxqs],
] as const) {
  describe(`S3 sink under faults (${name})`, () => {
    let server: TestS3Server;
    let proxy: S3FaultProxy;
    let direct: S3Client;
    beforeAll(async () => {
      server = await start('faults');
      proxy = await S3FaultProxy.start(server.endpoint);
      direct = server.client();
    });
    afterAll(async () => {
      await proxy?.close();
      await server?.close();
    });

    it('transient 500/503s and resets are retried: the upload succeeds intact', async () => {
      proxy.clearRules();
      proxy.addRule({ op: 'CreateMultipartUpload', nth: [1], action: { status: 503 } });
      proxy.addRule({ op: 'UploadPart', nth: [2], action: { status: 500 } });
      proxy.addRule({ op: 'UploadPart', nth: [4], action: { status: 503 } });
      proxy.addRule({ op: 'UploadPart', nth: [6], action: { reset: true } });
      proxy.addRule({ op: 'CompleteMultipartUpload', nth: [1], action: { status: 500 } });
      const client = server.client({ endpoint: proxy.endpoint, maxAttempts: 4 });
      const data = randomBytes(31 * MiB);
      const sink = new S3ArchiveSink({ client, bucket: 'faults', key: 'archives/h/transient.cwa', partSize: 5 * MiB, queueSize: 3 });
      for (let off = 0; off < data.length; off += MiB) await sink.write(data.subarray(off, off + MiB));
      await sink.close();
      expect(proxy.injected.map((f) => f.action).sort()).toEqual(['reset', 'status 500', 'status 500', 'status 503', 'status 503']);
      expect(await sha(direct, 'faults', 'archives/h/transient.cwa')).toBe(createHash('sha256').update(data).digest('hex'));
    });

    it('a persistently failing endpoint fails cleanly: original error, no object, no upload left', async () => {
      proxy.clearRules();
      const client = server.client({ endpoint: proxy.endpoint, maxAttempts: 2 });
      const before = await server.pendingUploads();
      const warnings: StoreError[] = [];
      const sink = new S3ArchiveSink({ client, bucket: 'faults', key: 'archives/h/persistent.cwa', partSize: 5 * MiB, queueSize: 2, onWarning: (w) => warnings.push(w) });
      // parts start failing after the upload exists, so there is something to abort
      proxy.addRule({ op: 'UploadPart', action: { status: 503 } });
      let err: unknown;
      try {
        for (let i = 0; i < 40; i++) await sink.write(randomBytes(MiB));
        await sink.close();
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(StoreError);
      expect(String((err as Error).message)).toMatch(/SlowDown 503/);
      expect(await exists(direct, 'faults', 'archives/h/persistent.cwa')).toBe(false);
      if (server.supportsAbort) {
        expect(await server.pendingUploads()).toBe(before);
        expect(warnings).toEqual([]);
      } else {
        expect(warnings).toHaveLength(1);
      }
    });
  });
}
