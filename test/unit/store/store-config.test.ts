import { describe, expect, it } from 'vitest';
import { UsageError } from '../../../src/errors.js';
import {
  archiveKey,
  archivesPrefix,
  effectiveEndpoint,
  isLoopback,
  parseArchiveKey,
  parseS3Uri,
  storeConfigFromFlags,
} from '../../../src/store/config.js';
import { createS3Client } from '../../../src/store/s3-client.js';
import {
  S3_MAX_PARTS,
  S3_USER_METADATA_LIMIT,
  buildUploadParams,
  computePartSize,
  decodeArchiveMetadata,
  encodeArchiveMetadata,
} from '../../../src/store/s3-sink.js';
import { encodeEventKey } from '../../../src/store/embedded-s3.js';
import { mapS3Error } from '../../../src/store/s3-errors.js';
import { StoreAccessError, StoreCapabilityError, StoreNotFoundError } from '../../../src/store/errors.js';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
const TiB = 1024 * GiB;

describe('store keys and config', () => {
  it('builds archive keys with and without a prefix', () => {
    expect(archiveKey('', 'h1', 'u')).toBe('archives/h1/u.cwa');
    expect(archiveKey('/a/b/', 'h1', 'u')).toBe('a/b/archives/h1/u.cwa');
    expect(archivesPrefix('')).toBe('archives/');
    expect(archivesPrefix('p', 'h')).toBe('p/archives/h/');
    expect(parseArchiveKey('a/b/archives/h1/u.cwa')).toEqual({ prefix: 'a/b', hostId: 'h1', uuid: 'u' });
    expect(parseArchiveKey('archives/h1/u.cwa')).toEqual({ prefix: '', hostId: 'h1', uuid: 'u' });
    expect(parseArchiveKey('archives/u.cwa')).toBeNull();
    expect(() => archiveKey('', '../x', 'u')).toThrow(UsageError);
    expect(() => archiveKey('', 'h', 'a/b')).toThrow(UsageError);
    expect(parseS3Uri('s3://b/k/x.cwa')).toEqual({ bucket: 'b', key: 'k/x.cwa' });
    expect(parseS3Uri('b/k')).toBeNull();
  });

  it('reads flags, then COWSTREAM_S3_* env, and validates them', () => {
    expect(storeConfigFromFlags({}, {})).toBeNull();
    expect(storeConfigFromFlags({}, { COWSTREAM_S3_BUCKET: 'my-bucket', COWSTREAM_S3_PREFIX: '/x/' })).toEqual({ bucket: 'my-bucket', prefix: 'x' });
    expect(storeConfigFromFlags({ bucket: 'other', prefix: 'p', region: 'eu-west-1' }, { COWSTREAM_S3_BUCKET: 'my-bucket' })).toEqual({
      bucket: 'other',
      prefix: 'p',
      region: 'eu-west-1',
    });
    expect(() => storeConfigFromFlags({ bucket: 'Bad_Bucket' }, {})).toThrow(/invalid bucket name/);
    expect(() => storeConfigFromFlags({ bucket: 'ok-bucket', endpoint: 'not a url' }, {})).toThrow(/invalid --endpoint/);
  });

  it('honours AWS_ENDPOINT_URL_S3 and AWS_REGION; path style for custom endpoints', async () => {
    expect(effectiveEndpoint({}, { AWS_ENDPOINT_URL_S3: 'http://minio:9000' })).toBe('http://minio:9000');
    expect(effectiveEndpoint({ endpoint: 'http://x:1' }, { AWS_ENDPOINT_URL_S3: 'http://minio:9000' })).toBe('http://x:1');
    const c = createS3Client({ bucket: 'b', prefix: '' }, {}, { AWS_ENDPOINT_URL_S3: 'http://minio:9000' });
    expect(c.config.forcePathStyle).toBe(true);
    expect(await c.config.region()).toBe('us-east-1');
    const aws = createS3Client({ bucket: 'b', prefix: '' }, {}, { AWS_REGION: 'eu-central-1' });
    expect(aws.config.forcePathStyle).toBe(false);
    expect(await aws.config.region()).toBe('eu-central-1');
    c.destroy();
    aws.destroy();
  });

  it('treats only loopback endpoints as loopback (unsigned payloads there)', () => {
    for (const ep of ['http://127.0.0.1:9000', 'http://localhost:1', 'http://[::1]:80', 'http://127.1.2.3']) expect(isLoopback(ep)).toBe(true);
    for (const ep of ['http://10.0.0.1:9000', 'https://s3.eu-west-1.amazonaws.com', 'http://localhost.evil.com', 'nonsense']) expect(isLoopback(ep)).toBe(false);
  });
});

describe('part size', () => {
  it('is 8 MiB by default and never needs more than 10,000 parts', () => {
    expect(computePartSize(undefined)).toBe(8 * MiB);
    expect(computePartSize(10 * GiB)).toBe(8 * MiB);
    for (const size of [50 * GiB, 100 * GiB, 1 * TiB, 4.7 * TiB, 10 * TiB, 40 * TiB]) {
      const part = computePartSize(size);
      expect(part % MiB).toBe(0);
      // even an incompressible archive with 2 % overhead fits
      expect(Math.ceil((size * 1.02 + 64 * MiB) / part)).toBeLessThanOrEqual(S3_MAX_PARTS);
    }
    expect(computePartSize(1 * TiB)).toBeGreaterThan(100 * MiB);
    expect(() => computePartSize(60 * TiB)).toThrow(/cannot fit/);
    expect(() => computePartSize(1, 4 * MiB)).toThrow(/minimum/);
  });
});

describe('object metadata and upload options', () => {
  it('round-trips archive metadata, encoding non-ASCII safely', () => {
    const rec = encodeArchiveMetadata({ uuid: 'u1', parentUuid: 'p1', hostId: 'höst', deviceNames: ['vda', 'disk,1'] });
    for (const v of Object.values(rec)) expect(v).toMatch(/^[\x20-\x7e]*$/);
    expect(decodeArchiveMetadata(rec)).toEqual({ uuid: 'u1', parentUuid: 'p1', hostId: 'höst', deviceNames: ['vda', 'disk,1'] });
  });

  it('truncates the device list to stay under the 2 KB user-metadata limit', () => {
    const names = Array.from({ length: 255 }, (_, i) => `device-with-a-long-name-${i}`);
    const rec = encodeArchiveMetadata({ uuid: 'u', hostId: 'h', deviceNames: names });
    const total = Object.entries(rec).reduce((n, [k, v]) => n + Buffer.byteLength(k) + Buffer.byteLength(v), 0);
    expect(total).toBeLessThanOrEqual(S3_USER_METADATA_LIMIT);
    const back = decodeArchiveMetadata(rec);
    expect(back.devicesTruncated).toBe(true);
    expect(back.deviceNames!.length).toBeGreaterThan(10);
    expect(names.slice(0, back.deviceNames!.length)).toEqual(back.deviceNames);
    expect(rec['cowstream-device-count']).toBe('255');
  });

  it('maps SSE, storage class, checksums and Object Lock to request parameters', () => {
    const until = new Date('2030-01-01T00:00:00Z');
    const p = buildUploadParams({
      client: undefined as never,
      bucket: 'b',
      key: 'k',
      sse: { mode: 'aws:kms', kmsKeyId: 'arn:aws:kms:eu-west-1:1:key/x' },
      storageClass: 'STANDARD_IA',
      checksumAlgorithm: 'CRC32C',
      objectLock: { mode: 'COMPLIANCE', retainUntil: until },
    });
    expect(p).toMatchObject({
      ServerSideEncryption: 'aws:kms',
      SSEKMSKeyId: 'arn:aws:kms:eu-west-1:1:key/x',
      StorageClass: 'STANDARD_IA',
      ChecksumAlgorithm: 'CRC32C',
      ObjectLockMode: 'COMPLIANCE',
      ObjectLockRetainUntilDate: until,
    });
    expect(buildUploadParams({ client: undefined as never, bucket: 'b', key: 'k', sse: { mode: 'AES256' } })).not.toHaveProperty('SSEKMSKeyId');
  });
});

describe('errors and events', () => {
  it('maps S3 errors to typed errors naming the bucket/key', () => {
    const sdk = (name: string, status: number) => Object.assign(new Error(name), { name, $metadata: { httpStatusCode: status } });
    expect(mapS3Error(sdk('NoSuchBucket', 404), 'GetObject', { bucket: 'b', key: 'k' })).toBeInstanceOf(StoreNotFoundError);
    expect(mapS3Error(sdk('NoSuchBucket', 404), 'GetObject', { bucket: 'b', key: 'k' }).message).toMatch(/bucket "b" does not exist/);
    expect(mapS3Error(sdk('NoSuchKey', 404), 'GetObject', { bucket: 'b', key: 'k' }).message).toMatch(/s3:\/\/b\/k not found/);
    expect(mapS3Error(sdk('SignatureDoesNotMatch', 403), 'GetObject', { bucket: 'b' })).toBeInstanceOf(StoreAccessError);
    expect(mapS3Error(sdk('NotImplemented', 501), 'X', { bucket: 'b' })).toBeInstanceOf(StoreCapabilityError);
    expect(mapS3Error(Object.assign(new Error('connect'), { code: 'ECONNREFUSED' }), 'X', { bucket: 'b', endpoint: 'http://h:1' }).message).toMatch(
      /cannot reach the S3 endpoint at http:\/\/h:1/,
    );
  });

  it('encodes event keys like AWS (space → +, slash kept)', () => {
    expect(encodeEventKey('p/archives/h 1/ü.cwa')).toBe('p/archives/h+1/%C3%BC.cwa');
    expect(decodeURIComponent(encodeEventKey('a b/c+d').replace(/\+/g, ' '))).toBe('a b/c+d');
  });
});
