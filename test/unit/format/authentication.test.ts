/**
 * Format v2 (docs/FORMAT.md "Version 2"): someone who can write the bucket
 * but has no key edits an encrypted archive and recomputes every SHA-256.
 * With the key, every such change must fail at open or verify, naming the
 * part; v1 archives stay readable.
 */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { CowstreamError, EncryptionKeyError } from '../../../src/errors.js';
import { CLUSTER_SIZE } from '../../../src/format/constants.js';
import { AuthenticationError } from '../../../src/format/errors.js';
import { FOOTER_SIZE, FORMAT_VERSION } from '../../../src/format/layout.js';
import { BufferRangeSource } from '../../../src/format/memory.js';
import { openArchive } from '../../../src/format/reader.js';
import { TestZstdCompressor } from '../../helpers/format-compressor.js';
import { buildArchive } from '../../helpers/format-fixtures.js';
import { dropLastExtent, layoutOf, resealAll } from '../../helpers/format-tamper.js';

const compressor = new TestZstdCompressor();
const KEY = Buffer.alloc(32, 0x42);

function images(): { id: number; name: string; data: Buffer }[] {
  const a = Buffer.alloc(80 * CLUSTER_SIZE);
  for (let c = 0; c < 80; c++) {
    if (c % 9 === 4) continue;
    a.write(`cluster ${c % 3} says hello`, c * CLUSTER_SIZE + ((c * 4096) % CLUSTER_SIZE));
  }
  const b = Buffer.alloc(5000);
  b.write('tail data', 4100);
  return [
    { id: 1, name: 'disk-a', data: a },
    { id: 2, name: 'disk-b', data: b },
  ];
}

async function encrypted(configs = [{ name: 'vm.conf', data: Buffer.from('memory=1024\n') }]): Promise<Buffer> {
  return (await buildArchive(images(), { compressor, encryptionKey: KEY, configs, seed: 3 })).bytes;
}

/** Opens with the key and verifies; returns the error (thrown or reported), or null when all is well. */
async function withKey(bytes: Buffer): Promise<{ code: string; message: string } | null> {
  try {
    const r = await openArchive(new BufferRangeSource(bytes, 'tampered.cwa'), { key: KEY, compressor });
    const v = await r.verify();
    return v.ok ? null : { code: v.firstBad!.code, message: v.firstBad!.message };
  } catch (err) {
    expect(err).toBeInstanceOf(CowstreamError);
    return { code: (err as CowstreamError).code, message: (err as Error).message };
  }
}

describe('format v2: changes made without the key fail with the key', () => {
  it('writes v2; the intact archive opens authenticated and its config decrypts', async () => {
    const bytes = await encrypted();
    expect(FORMAT_VERSION).toBe(2);
    expect(bytes.readUInt16LE(8)).toBe(2);
    const r = await openArchive(new BufferRangeSource(bytes), { key: KEY, compressor });
    expect(r.authenticated).toBe(true);
    expect(r.header.configs[0]!.data.toString()).toBe('memory=1024\n');
    expect(await r.verify()).toMatchObject({ ok: true, plaintextChecked: true, authenticated: true });
    // The config plaintext is not in the file.
    expect(bytes.includes(Buffer.from('memory=1024'))).toBe(false);
    // Without the key, the config is sealed and nothing is authenticated.
    const nokey = await openArchive(new BufferRangeSource(bytes), { compressor });
    expect(nokey.authenticated).toBe(false);
    expect(nokey.header.configsSealed).toBe(true);
  });

  it('every byte flipped, with every SHA-256 recomputed, fails with the key', async () => {
    const good = await encrypted();
    const layout = await layoutOf(good);
    expect(layout.extents.length).toBeGreaterThanOrEqual(2);
    const undetected: number[] = [];
    const codes = new Map<string, number>();
    for (let i = 0; i < good.length; i++) {
      const bad = Buffer.from(good);
      bad[i] ^= 0xff;
      resealAll(bad, layout);
      // A flipped SHA-256 byte is simply recomputed: nothing changed.
      if (bad.equals(good)) continue;
      const out = await withKey(bad);
      if (out === null) undetected.push(i);
      else codes.set(out.code, (codes.get(out.code) ?? 0) + 1);
    }
    expect(undetected.slice(0, 20), `${undetected.length} undetected; size ${good.length}; layout ${JSON.stringify(layout)}`).toEqual([]);
    // Many are caught only by a key-dependent tag (the rest by layout and field checks).
    expect(codes.get('AUTH') ?? 0, JSON.stringify([...codes])).toBeGreaterThan(good.length / 4);
  }, 120_000);

  it('a renamed device fails: header authentication', async () => {
    const good = await encrypted();
    const bad = Buffer.from(good);
    const at = bad.indexOf('disk-b');
    bad.write('disk-c', at, 'ascii');
    const out = await withKey(resealAll(bad, await layoutOf(good)));
    expect(out?.code).toBe('AUTH');
    expect(out?.message).toMatch(/tampered\.cwa: header: authentication failed/);
  });

  it('a dropped extent (its clusters turned into zero runs) fails: index authentication', async () => {
    const good = await encrypted();
    const bad = await dropLastExtent(good);
    // Consistent without the key: it opens and verifies.
    const nokey = await openArchive(new BufferRangeSource(bad), { compressor });
    expect((await nokey.verify()).ok).toBe(true);
    const out = await withKey(bad);
    expect(out?.code).toBe('AUTH');
    expect(out?.message).toMatch(/index \(trailer and footer\): authentication failed/);
  });

  it('a replaced config fails: header authentication, and a config from another archive does not open', async () => {
    const good = await encrypted();
    const other = await encrypted();
    const la = await layoutOf(good);
    // Same name and length: the sealed blob of another archive made with the same key.
    const at = good.indexOf('vm.conf') + 'vm.conf'.length;
    const len = good.readUInt32LE(at - 'vm.conf'.length - 4);
    const otherAt = other.indexOf('vm.conf') + 'vm.conf'.length;
    const bad = Buffer.from(good);
    other.copy(bad, at, otherAt, otherAt + len);
    const out = await withKey(resealAll(bad, la));
    expect(out?.code).toBe('AUTH');
    expect(out?.message).toMatch(/header: authentication failed/);
  });

  it('a trailer swapped between two archives made with the same key fails: index authentication', async () => {
    const a = await encrypted();
    const b = await encrypted();
    const la = await layoutOf(a);
    const lb = await layoutOf(b);
    expect(lb.trailerLength).toBe(la.trailerLength);
    const bad = Buffer.from(a);
    b.copy(bad, la.trailerOffset, lb.trailerOffset, lb.trailerOffset + lb.trailerLength);
    // Without the key the swap is consistent (same layout): only the key catches it.
    const resealed = resealAll(bad, la);
    const nokey = await openArchive(new BufferRangeSource(resealed), { compressor });
    expect((await nokey.verify()).ok).toBe(true);
    const out = await withKey(resealed);
    expect(out?.code).toBe('AUTH');
    expect(out?.message).toMatch(/index \(trailer and footer\)/);
  });

  it('a footer total rewritten fails: index authentication', async () => {
    const good = await encrypted();
    const bad = Buffer.from(good);
    const f = bad.length - FOOTER_SIZE;
    // Shift bytes between dataBytes and zeroBytes: their sum (checked) is unchanged.
    bad.writeBigUInt64LE(bad.readBigUInt64LE(f + 88) - 1n, f + 88);
    bad.writeBigUInt64LE(bad.readBigUInt64LE(f + 96) + 1n, f + 96);
    const out = await withKey(resealAll(bad, await layoutOf(good)));
    expect(out?.code).toBe('AUTH');
  });

  it('a key given for an unencrypted archive is refused: it could have been made by anyone', async () => {
    const plain = (await buildArchive(images(), { compressor, seed: 3 })).bytes;
    await expect(openArchive(new BufferRangeSource(plain), { key: KEY })).rejects.toThrow(EncryptionKeyError);
    await expect(openArchive(new BufferRangeSource(plain), { key: KEY })).rejects.toThrow(/not encrypted/);
  });

  it('AuthenticationError is a ChecksumError', () => {
    expect(new AuthenticationError('x').code).toBe('AUTH');
  });
});

describe('format v1 archives stay readable', () => {
  const dir = new URL('../../fixtures/', import.meta.url);
  const key = readFileSync(new URL('v1.key', dir));
  /** The images the fixtures were made from (deterministic). */
  const disk0 = (): Buffer => {
    const b = Buffer.alloc(300 * 1024);
    for (let i = 0; i < b.length; i++) if ((i >> 12) % 3 !== 1) b[i] = (i * 7 + (i >> 9)) & 255;
    return b;
  };
  const disk1 = (): Buffer => {
    const c = Buffer.alloc(200000);
    c.write('hello v1 fixture', 70000);
    return c;
  };

  for (const [file, k] of [
    ['v1-encrypted.cwa', key],
    ['v1-plain.cwa', undefined],
  ] as const) {
    it(`${file}: opens, verifies and decodes to the original images and config`, async () => {
      const bytes = readFileSync(new URL(file, dir));
      expect(bytes.readUInt16LE(8)).toBe(1);
      const r = await openArchive(new BufferRangeSource(bytes), { compressor, ...(k ? { key: k } : {}) });
      expect(r.header.version).toBe(1);
      expect(r.authenticated).toBe(false);
      expect(r.header.configs[0]).toMatchObject({ name: 'vm.conf' });
      expect(r.header.configs[0]!.data.toString()).toBe('name: fixture-vm\nmemory: 1024\n');
      expect(await r.verify()).toMatchObject({ ok: true, plaintextChecked: true, authenticated: false });
      const imgs = new Map([
        [0, disk0()],
        [1, disk1()],
      ]);
      const ids = new Map(r.header.devices.map((d) => [d.id, d.name === 'disk0' ? 0 : 1]));
      let checked = 0;
      for await (const c of r.clusters()) {
        const img = imgs.get(ids.get(c.deviceId)!)!;
        expect(c.data.equals(img.subarray(c.cluster * CLUSTER_SIZE, c.cluster * CLUSTER_SIZE + c.data.length))).toBe(true);
        checked++;
      }
      expect(checked).toBeGreaterThan(0);
    });
  }
});
