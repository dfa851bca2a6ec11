/**
 * Someone who can write the bucket but has no key rewrites an encrypted
 * archive and recomputes every SHA-256. With the key, `archive verify`,
 * `archive extract`, `restore` from a local file and `restore` from S3 all
 * refuse it, naming what failed, and leave no target behind; a restore plan
 * altered in the store is refused too. The key is passphrase-wrapped
 * (`key create --passphrase`, `key passwd`), as an operator would keep it.
 */
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readKeyFile } from '../../src/codec/crypto.js';
import { ZstdPool } from '../../src/codec/zstd-pool.js';
import { CLUSTER_SIZE } from '../../src/format/constants.js';
import { AuthenticationError } from '../../src/format/errors.js';
import { restoreArchive } from '../../src/restore/engine.js';
import { buildRestorePlan, sourceOpener } from '../../src/restore/locate.js';
import { dropLastExtent, layoutOf, resealAll } from '../helpers/format-tamper.js';
import { runCliInProcess } from '../helpers/cli-inprocess.js';
import { startS3rver, type TestS3Server } from '../helpers/s3-servers.js';

const run = runCliInProcess;

describe('archives altered without the key fail every keyed read path', () => {
  let server: TestS3Server;
  let client: S3Client;
  let work: string;
  let store: string[];
  let keyFile: string;
  let fingerprint: string;
  let good: Buffer;
  let uuid: string;
  let disk0: Buffer;
  const saved = { ...process.env };

  beforeAll(async () => {
    work = mkdtempSync(join(tmpdir(), 'cowstream-auth-'));
    server = await startS3rver('auth-bucket');
    client = server.client();
    // The embedded S3 server's generated keys (it refuses any other).
    const keys = server.storeConfig().credentials!;
    process.env.AWS_ACCESS_KEY_ID = keys.accessKeyId;
    process.env.AWS_SECRET_ACCESS_KEY = keys.secretAccessKey;
    delete process.env.AWS_PROFILE;
    delete process.env.COWSTREAM_S3_BUCKET;
    store = ['--bucket', 'auth-bucket', '--prefix', 'pre', '--endpoint', server.endpoint, '--region', 'us-east-1'];
    disk0 = Buffer.alloc(80 * CLUSTER_SIZE);
    for (let c = 0; c < 80; c++) if (c % 7 !== 3) disk0.write(`cluster ${c} of disk0 `.repeat(50), c * CLUSTER_SIZE);
    writeFileSync(join(work, 'disk0.img'), disk0);
    writeFileSync(join(work, 'disk1.img'), Buffer.alloc(5000, 7));
    writeFileSync(join(work, 'vm.conf'), 'memory=2048\n');

    // A passphrase-wrapped key, whose passphrase is then changed.
    keyFile = join(work, 'archive.key');
    process.env.COWSTREAM_KEY_PASSPHRASE = 'first passphrase';
    const created = await run(['key', 'create', keyFile, '--passphrase', '--json']);
    expect(created.code, created.stderr).toBe(0);
    fingerprint = (JSON.parse(created.stdout) as { fingerprint: string }).fingerprint;
    const newPass = join(work, 'new-pass');
    writeFileSync(newPass, 'second passphrase\n', { mode: 0o600 });
    const changed = await run(['key', 'passwd', keyFile, '--new-passphrase-file', newPass, '--json']);
    expect(changed.code, changed.stderr).toBe(0);
    expect(JSON.parse(changed.stdout)).toMatchObject({ fingerprint, passphrase: true });
    process.env.COWSTREAM_KEY_PASSPHRASE = 'second passphrase';

    const archive = join(work, 'good.cwa');
    const c = await run([
      'archive', 'create', archive, `disk0=${join(work, 'disk0.img')}`, `disk1=${join(work, 'disk1.img')}`,
      '--config-file', join(work, 'vm.conf'), '--key', keyFile, '--host-id', 'h1', '--json',
    ]);
    expect(c.code, c.stderr).toBe(0);
    uuid = (JSON.parse(c.stdout) as { uuid: string }).uuid;
    good = readFileSync(archive);
  }, 120_000);

  afterAll(async () => {
    process.env = saved;
    await server?.close();
    rmSync(work, { recursive: true, force: true });
  });

  const s3Key = (): string => `pre/archives/h1/${uuid}.cwa`;
  const put = async (bytes: Buffer): Promise<void> => {
    await client.send(new PutObjectCommand({ Bucket: 'auth-bucket', Key: s3Key(), Body: bytes }));
  };

  it('the passphrase-wrapped key keeps its fingerprint across passwd; the intact archive passes every path', async () => {
    expect(fingerprint).toMatch(/^[0-9a-f]{32}$/);
    expect(good.readUInt16LE(8)).toBe(2);
    const v = await run(['archive', 'verify', join(work, 'good.cwa'), '--key', keyFile, '--json']);
    expect(v.code, v.stdout + v.stderr).toBe(0);
    expect(JSON.parse(v.stdout)).toMatchObject({ ok: true, authenticated: true, plaintextChecked: true });
    const x = await run(['archive', 'extract', join(work, 'good.cwa'), join(work, 'x-good'), '--key', keyFile]);
    expect(x.code, x.stderr).toBe(0);
    expect(readFileSync(join(work, 'x-good', 'vm.conf'), 'utf8')).toBe('memory=2048\n');
    await put(good);
    const r = await run(['restore', uuid, '--to', join(work, 'r-good') + '/', '--key', keyFile, ...store]);
    expect(r.code, r.stderr).toBe(0);
    expect(readFileSync(join(work, 'r-good', 'disk0.raw')).equals(disk0)).toBe(true);
  }, 60_000);

  const variants: [string, () => Promise<Buffer>, RegExp][] = [
    [
      'device renamed',
      async () => {
        const bad = Buffer.from(good);
        bad.write('disk9', bad.indexOf('disk1'), 'ascii');
        return resealAll(bad, await layoutOf(good));
      },
      /header: authentication failed/,
    ],
    ['extent dropped (its clusters become zero runs)', async () => dropLastExtent(good), /index \(trailer and footer\): authentication failed/],
    [
      'config replaced',
      async () => {
        const bad = Buffer.from(good);
        const at = bad.indexOf('vm.conf') + 'vm.conf'.length;
        bad[at + 20] ^= 0x01;
        return resealAll(bad, await layoutOf(good));
      },
      /header: authentication failed/,
    ],
  ];

  for (const [name, make, expected] of variants) {
    it(`${name}: archive verify, extract, file restore and S3 restore all refuse it`, async () => {
      const bad = await make();
      const file = join(work, `bad-${name.split(' ')[0]}.cwa`);
      writeFileSync(file, bad);
      // Consistent to anyone without the key.
      const nokey = await run(['archive', 'verify', file, '--json']);
      expect(nokey.code, nokey.stdout).toBe(0);

      const v = await run(['archive', 'verify', file, '--key', keyFile]);
      expect(v.code).toBe(1);
      expect(v.stderr).toMatch(expected);

      const dir = join(work, `x-${name.split(' ')[0]}`);
      const x = await run(['archive', 'extract', file, dir, '--key', keyFile]);
      expect(x.code).toBe(1);
      expect(x.stderr).toMatch(expected);
      expect(existsSync(dir) ? readdirSync(dir) : []).toEqual([]);

      const target = join(work, `r-${name.split(' ')[0]}`) + '/';
      mkdirSync(target);
      const rf = await run(['restore', file, '--to', target, '--key', keyFile]);
      expect(rf.code).toBe(1);
      expect(rf.stderr).toMatch(expected);
      expect(readdirSync(target)).toEqual([]);

      await put(bad);
      const rs = await run(['restore', uuid, '--to', target, '--key', keyFile, ...store]);
      expect(rs.code).toBe(1);
      expect(rs.stderr).toMatch(expected);
      expect(readdirSync(target)).toEqual([]);
    }, 60_000);
  }

  it('a restore plan altered in the store (an extent turned into a zero run) is refused before the target is touched', async () => {
    await put(good);
    const ctx = { store: null, client };
    const plan = await buildRestorePlan(join(work, 'good.cwa'), ctx);
    const range = plan.ranges[0]!;
    const ex = range.extents.pop()!;
    for (const [pi, , first, count] of ex.runs) plan.devices[pi]!.zeroRuns.push([first, count]);
    if (range.extents.length === 0) plan.ranges.shift();
    const key = await readKeyFile(keyFile);
    const pool = new ZstdPool({ workers: 1 });
    const target = join(work, 'plan-target') + '/';
    mkdirSync(target);
    try {
      const err = await restoreArchive({ plan, openSource: sourceOpener(ctx), target, key, compressor: pool }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(AuthenticationError);
      expect((err as Error).message).toMatch(/restore plan .* does not match the authenticated indexes/);
      expect(readdirSync(target)).toEqual([]);
    } finally {
      await pool.close();
    }
  }, 60_000);
});
