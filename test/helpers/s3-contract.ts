/**
 * The store contract suite (tus-node-server style): one suite function, run
 * against every S3 peer we support. Server differences are declared by the
 * server handle (supportsAbort / supportsListUploads), never guessed here.
 */
import { randomBytes } from 'node:crypto';
import { HeadObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { StoreError } from '../../src/errors.js';
import { StoreCapabilityError, StoreNotFoundError } from '../../src/store/errors.js';
import { archiveKey } from '../../src/store/config.js';
import { S3ArchiveSink, decodeArchiveMetadata } from '../../src/store/s3-sink.js';
import { S3RangeSource } from '../../src/store/s3-source.js';
import { CANNOT_LIST_MESSAGE, listIncompleteUploads } from '../../src/store/uploads.js';
import { S3FaultProxy } from './s3-fault-proxy.js';
import type { TestS3Server } from './s3-servers.js';

const MiB = 1024 * 1024;

async function exists(client: S3Client, bucket: string, key: string): Promise<boolean> {
  try {
    await client.send(new HeadObjectCommand({ Bucket: bucket, Key: key }));
    return true;
  } catch (err) {
    if ((err as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode === 404) return false;
    throw err;
  }
}

async function writeAll(sink: S3ArchiveSink, data: Buffer, chunk = 256 * 1024): Promise<void> {
  for (let off = 0; off < data.length; off += chunk) await sink.write(data.subarray(off, off + chunk));
}

export function runS3ContractSuite(name: string, start: () => Promise<TestS3Server>): void {
  describe(`S3 store contract: ${name}`, () => {
    let server: TestS3Server;
    let client: S3Client;
    beforeAll(async () => {
      server = await start();
      client = server.client();
    });
    afterAll(async () => {
      await server?.close();
    });

    it('streams a multipart archive with metadata, then serves head + ranged reads', async () => {
      const data = randomBytes(17 * MiB + 12345);
      const key = archiveKey('pfx', 'host-1', 'a1b2c3d4-0000-4000-8000-000000000001');
      expect(key).toBe('pfx/archives/host-1/a1b2c3d4-0000-4000-8000-000000000001.cwa');
      const sink = new S3ArchiveSink({
        client,
        bucket: server.bucket,
        key,
        partSize: 5 * MiB,
        queueSize: 2,
        metadata: { uuid: 'a1b2c3d4-0000-4000-8000-000000000001', parentUuid: null, hostId: 'host-1', deviceNames: ['vda', 'vdb'] },
      });
      expect(sink.partSize).toBe(5 * MiB);
      await writeAll(sink, data);
      await sink.close();
      expect(sink.uploadId).toBeDefined(); // really went multipart (4 parts)
      expect(sink.completed?.bytes).toBe(data.length);

      const src = await S3RangeSource.open(client, server.bucket, key);
      expect(src.size).toBe(data.length);
      expect(src.name).toBe(`s3://${server.bucket}/${key}`);
      const meta = decodeArchiveMetadata(src.metadata);
      expect(meta.uuid).toBe('a1b2c3d4-0000-4000-8000-000000000001');
      expect(meta.hostId).toBe('host-1');
      expect(meta.deviceNames).toEqual(['vda', 'vdb']);
      expect(meta.parentUuid).toBeNull();
      for (const [off, len] of [
        [0, 1],
        [5 * MiB - 3, 7],
        [data.length - 100, 100],
        [1234567, 3 * MiB],
      ] as const) {
        expect((await src.read(off, len)).equals(data.subarray(off, off + len))).toBe(true);
      }
      await expect(src.read(data.length - 1, 2)).rejects.toThrow(StoreError);
      await src.close();
    });

    it('stores a small archive with a single PUT and the parent uuid', async () => {
      const data = randomBytes(300_000);
      const key = archiveKey('', 'h2', 'small-1');
      expect(key).toBe('archives/h2/small-1.cwa');
      const sink = new S3ArchiveSink({
        client,
        bucket: server.bucket,
        key,
        metadata: { uuid: 'small-1', parentUuid: 'parent-0', hostId: 'h2', deviceNames: ['disk 0/ü'] },
      });
      await writeAll(sink, data, 65536);
      await sink.close();
      expect(sink.uploadId).toBeUndefined();
      const src = await S3RangeSource.open(client, server.bucket, key);
      expect((await src.read(0, data.length)).equals(data)).toBe(true);
      const meta = decodeArchiveMetadata(src.metadata);
      expect(meta.parentUuid).toBe('parent-0');
      expect(meta.deviceNames).toEqual(['disk 0/ü']);
    });

    it('abort() leaves no object; the multipart upload is aborted where the server can', async () => {
      const key = archiveKey('abort', 'h', 'aborted-1');
      const warnings: StoreError[] = [];
      const before = await server.pendingUploads();
      const sink = new S3ArchiveSink({ client, bucket: server.bucket, key, partSize: 5 * MiB, queueSize: 1, onWarning: (w) => warnings.push(w) });
      await writeAll(sink, randomBytes(11 * MiB));
      await sink.abort(new Error('backup cancelled'));
      expect(sink.uploadId).toBeDefined(); // parts had been uploaded: abort had work to do
      expect(await exists(client, server.bucket, key)).toBe(false);
      if (server.supportsAbort) {
        expect(warnings).toEqual([]);
        expect(await server.pendingUploads()).toBe(before);
      } else {
        expect(warnings).toHaveLength(1);
        expect(warnings[0]!.message).toMatch(/could not abort multipart upload/);
        expect(String((warnings[0]!.cause as Error).message)).toMatch(/does not implement/);
        expect(await server.pendingUploads()).toBe(before + 1); // the documented leftover
      }
      await expect(sink.write(Buffer.alloc(1))).rejects.toThrow(/backup cancelled/);
    });

    it('a persistent UploadPart failure surfaces the original error and leaves no object', async () => {
      const proxy = await S3FaultProxy.start(server.endpoint);
      try {
        proxy.addRule({ op: 'UploadPart', action: { status: 500 } });
        const pc = server.client({ endpoint: proxy.endpoint, maxAttempts: 2 });
        const key = archiveKey('fail', 'h', 'failed-1');
        const warnings: StoreError[] = [];
        const before = await server.pendingUploads();
        const sink = new S3ArchiveSink({ client: pc, bucket: server.bucket, key, partSize: 5 * MiB, queueSize: 2, onWarning: (w) => warnings.push(w) });
        const err = await (async () => {
          try {
            await writeAll(sink, randomBytes(30 * MiB));
            await sink.close();
          } catch (e) {
            return e as Error;
          }
          return undefined;
        })();
        expect(err).toBeInstanceOf(StoreError);
        expect(err!.message).toMatch(/upload failed/);
        expect(String((err!.cause as { name?: string }).name)).toBe('InternalError'); // the original, not the abort's 405
        expect(proxy.injected.length).toBeGreaterThan(0);
        expect(await exists(client, server.bucket, key)).toBe(false);
        if (server.supportsAbort) {
          expect(warnings).toEqual([]);
          expect(await server.pendingUploads()).toBe(before);
        } else {
          expect(warnings.map((w) => w.message).join()).toMatch(/could not abort/);
        }
      } finally {
        await proxy.close();
      }
    });

    it('uploads list says plainly that the server cannot list multipart uploads', async () => {
      // Neither s3rver nor fauxqs implements ListMultipartUploads (measured).
      await expect(listIncompleteUploads(client, server.bucket, 'x/')).rejects.toThrow(StoreCapabilityError);
      await expect(listIncompleteUploads(client, server.bucket, 'x/')).rejects.toThrow(CANNOT_LIST_MESSAGE);
    });

    it('names a missing key or a missing bucket', async () => {
      await expect(S3RangeSource.open(client, server.bucket, 'archives/h/nope.cwa')).rejects.toThrow(StoreNotFoundError);
      await expect(S3RangeSource.open(client, server.bucket, 'archives/h/nope.cwa')).rejects.toThrow(/archives\/h\/nope\.cwa not found/);
      await expect(S3RangeSource.open(client, 'no-such-bucket', 'k')).rejects.toThrow(/bucket "no-such-bucket" does not exist/);
    });
  });
}
