/**
 * The CLI commands of the store/restore group, run in-process through
 * main() against s3rver: restore (by UUID, local file chain), verify,
 * uploads list, and clear errors for bad input. Also the embedded server's
 * event hook the catalogue indexer relies on.
 */
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DeleteObjectCommand, GetObjectCommand, PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ZstdPool } from '../../src/codec/zstd-pool.js';
import type { EmbeddedS3Event } from '../../src/store/embedded-s3.js';
import { S3ArchiveSink } from '../../src/store/s3-sink.js';
import { buildChain, type ChainStep } from '../helpers/s3-chain-fixture.js';
import { runCliInProcess } from '../helpers/cli-inprocess.js';
import { startS3rver, type TestS3Server } from '../helpers/s3-servers.js';

const devices = [{ id: 0, name: 'vda', size: 3 * 1024 * 1024 + 777 }];

const run = runCliInProcess;

describe('cowstream restore / verify / uploads (CLI)', () => {
  let server: TestS3Server;
  let client: S3Client;
  let steps: ChainStep[];
  let work: string;
  let store: string[];
  const events: EmbeddedS3Event[] = [];
  const saved = { ...process.env };

  beforeAll(async () => {
    work = mkdtempSync(join(tmpdir(), 'cowstream-cli-'));
    server = await startS3rver('cli-bucket');
    server.embedded!.onEvent((e) => events.push(e));
    client = server.client();
    const pool = new ZstdPool({ workers: 2 });
    try {
      steps = await buildChain({ client, bucket: 'cli-bucket', prefix: 'pre', hostId: 'h9', devices, incrementals: 2, compressor: pool, seed: 7 });
    } finally {
      await pool.close();
    }
    process.env.AWS_ACCESS_KEY_ID = server.embedded!.credentials.accessKeyId;
    process.env.AWS_SECRET_ACCESS_KEY = server.embedded!.credentials.secretAccessKey;
    delete process.env.AWS_PROFILE;
    delete process.env.COWSTREAM_S3_BUCKET;
    store = ['--bucket', 'cli-bucket', '--prefix', 'pre', '--endpoint', server.endpoint, '--region', 'us-east-1'];
  }, 60_000);

  afterAll(async () => {
    process.env = saved;
    await server?.close();
    rmSync(work, { recursive: true, force: true });
  });

  it('restore <uuid> --to DIR --json restores the chain byte-identically', async () => {
    const last = steps[2]!;
    const dir = join(work, 'r1') + '/'; // trailing '/' = directory, even for one device
    const r = await run(['restore', last.uuid, '--to', dir, '--parallel', '3', '--verify', '--json', ...store]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const out = JSON.parse(r.stdout) as { ok: boolean; chainLength: number; verified: boolean; devices: { path: string }[] };
    expect(out).toMatchObject({ ok: true, chainLength: 3, verified: true });
    expect(readFileSync(join(dir, 'vda.raw')).equals(last.disks.get('vda')!)).toBe(true);
    // again without --force: refused
    const again = await run(['restore', last.uuid, '--to', dir, '--json', ...store]);
    expect(again.code).toBe(1);
    expect(again.stdout).toMatch(/exists; use --force/);
  });

  it('restores a local .cwa chain (parents found next to the file)', async () => {
    const local = join(work, 'local');
    mkdirSync(local);
    for (const s of steps) {
      const res = await client.send(new GetObjectCommand({ Bucket: 'cli-bucket', Key: s.key }));
      writeFileSync(join(local, `${s.uuid}.cwa`), await res.Body!.transformToByteArray());
    }
    const target = join(work, 'from-file.img');
    const r = await run(['restore', join(local, `${steps[1]!.uuid}.cwa`), '--to', target, '--device', 'vda']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/restored archive .* \(chain of 2\)/);
    expect(readFileSync(target).equals(steps[1]!.disks.get('vda')!)).toBe(true);
  });

  it('verify checks stored checksums and reports corruption with exit code 1', async () => {
    const ok = await run(['verify', steps[0]!.uuid, '--json', ...store]);
    expect(ok.code).toBe(0);
    expect(JSON.parse(ok.stdout)).toMatchObject({ ok: true, plaintextChecked: true });
    const res = await client.send(new GetObjectCommand({ Bucket: 'cli-bucket', Key: steps[0]!.key }));
    const bytes = Buffer.from(await res.Body!.transformToByteArray());
    bytes[Math.floor(bytes.length / 3)]! ^= 0x55;
    const file = join(work, 'corrupt.cwa');
    writeFileSync(file, bytes);
    const bad = await run(['verify', file, '--json']);
    expect(bad.code).toBe(1);
    expect(JSON.parse(bad.stdout)).toMatchObject({ ok: false });
  });

  it('encrypted archives: restore and verify need the key file, and name a missing one', async () => {
    const key = Buffer.alloc(32, 0x42);
    const keyFile = join(work, 'k.key');
    writeFileSync(keyFile, key, { mode: 0o600 });
    const pool = new ZstdPool({ workers: 2 });
    let enc: ChainStep[];
    try {
      enc = await buildChain({ client, bucket: 'cli-bucket', prefix: 'pre', hostId: 'enc', devices, incrementals: 1, compressor: pool, seed: 3, encryptionKey: key });
    } finally {
      await pool.close();
    }
    const noKey = await run(['restore', enc[1]!.uuid, '--to', join(work, 'enc-nokey.img'), ...store]);
    expect(noKey.code).toBe(1);
    expect(noKey.stderr).toMatch(/archive .* is encrypted \(key fingerprint [0-9a-f]{32}\); pass --key FILE/);
    const wrongFile = join(work, 'wrong.key');
    writeFileSync(wrongFile, Buffer.alloc(32, 1), { mode: 0o600 });
    const wrong = await run(['restore', enc[1]!.uuid, '--to', join(work, 'enc-wrong.img'), '--key', wrongFile, ...store]);
    expect(wrong.stderr).toMatch(/wrong key: archive .* expects key fingerprint/);
    const r = await run(['restore', enc[1]!.uuid, '--to', join(work, 'enc.img'), '--key', keyFile, ...store]);
    expect(r.code).toBe(0);
    expect(readFileSync(join(work, 'enc.img')).equals(enc[1]!.disks.get('vda')!)).toBe(true);
    const v = await run(['verify', enc[0]!.uuid, '--key', keyFile, '--json', ...store]);
    expect(JSON.parse(v.stdout)).toMatchObject({ ok: true, plaintextChecked: true });
    events.length = 0; // the event test below counts only its own uploads
  });

  it('uploads list says the server cannot list multipart uploads', async () => {
    const r = await run(['uploads', 'list', ...store]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/this S3 server cannot list multipart uploads/);
  });

  it('bad input: unknown ref, missing bucket, bad credentials, missing flags', async () => {
    const unknown = await run(['restore', '01900000-0000-7000-8000-000000000000', '--to', join(work, 'x'), ...store]);
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toMatch(/archive 01900000-0000-7000-8000-000000000000 not found under s3:\/\/cli-bucket\/pre\/archives\//);
    const noBucket = await run(['restore', steps[0]!.uuid, '--to', join(work, 'x'), ...store.map((a) => (a === 'cli-bucket' ? 'nope-bucket' : a))]);
    expect(noBucket.stderr).toMatch(/bucket "nope-bucket" does not exist/);
    process.env.AWS_ACCESS_KEY_ID = 'NOT-A-KEY';
    try {
      const creds = await run(['restore', steps[0]!.uuid, '--to', join(work, 'x'), ...store]);
      expect(creds.code).toBe(1);
      expect(creds.stderr).toMatch(/access to .* denied .*\(InvalidAccessKeyId\).*check the AWS credentials/);
    } finally {
      process.env.AWS_ACCESS_KEY_ID = server.embedded!.credentials.accessKeyId;
    }
    const noTo = await run(['restore', steps[0]!.uuid, ...store]);
    expect(noTo.code).toBe(2);
    expect(noTo.stderr).toMatch(/--to/);
    const needBucket = await run(['restore', steps[0]!.uuid, '--to', join(work, 'x')]);
    expect(needBucket.code).toBe(2);
    expect(needBucket.stderr).toMatch(/needs an S3 bucket/);
    const badPar = await run(['restore', steps[0]!.uuid, '--to', join(work, 'x'), '--parallel', '0', ...store]);
    expect(badPar.code).toBe(2);
  });

  it('the embedded server reports created (multipart + put) and removed objects in the AWS event shape', async () => {
    events.length = 0;
    const sink = new S3ArchiveSink({ client, bucket: 'cli-bucket', key: 'pre/archives/h 1/ev.cwa', partSize: 5 * 1024 * 1024 });
    await sink.write(Buffer.alloc(6 * 1024 * 1024, 1));
    await sink.close();
    await client.send(new PutObjectCommand({ Bucket: 'cli-bucket', Key: 'pre/archives/h1/small.cwa', Body: 'x' }));
    await client.send(new DeleteObjectCommand({ Bucket: 'cli-bucket', Key: 'pre/archives/h1/small.cwa' }));
    const recs = events.flatMap((e) => e.Records).map((r) => [r.eventName, r.s3.bucket.name, r.s3.object.key]);
    expect(recs).toEqual([
      ['ObjectCreated:Post', 'cli-bucket', 'pre/archives/h+1/ev.cwa'],
      ['ObjectCreated:Put', 'cli-bucket', 'pre/archives/h1/small.cwa'],
      ['ObjectRemoved:Delete', 'cli-bucket', 'pre/archives/h1/small.cwa'],
    ]);
    expect(events.length).toBe(3);
  });
});
