import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { mkdtemp, rm, stat, writeFile, mkdir, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { EncryptionKeyError } from '../../../src/errors.js';
import { KEY_BYTES, NONCE_BYTES, TAG_BYTES, createKeyFile, keyFingerprint, open, randomNonce, readKeyFile, seal } from '../../../src/codec/crypto.js';
import { digestEquals, sha256 } from '../../../src/codec/hash.js';

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cowstream-crypto-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('hash', () => {
  it('matches the FIPS 180-2 "abc" vector and hashes parts as one stream', () => {
    expect(sha256(Buffer.from('abc')).toString('hex')).toBe('ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad');
    expect(sha256(Buffer.from('a'), Buffer.from('bc')).equals(sha256(Buffer.from('abc')))).toBe(true);
    expect(digestEquals(sha256(Buffer.from('x')), sha256(Buffer.from('x')))).toBe(true);
    expect(digestEquals(sha256(Buffer.from('x')), sha256(Buffer.from('y')))).toBe(false);
    expect(digestEquals(Buffer.alloc(3), Buffer.alloc(4))).toBe(false);
  });
});

describe('AES-256-GCM seal/open', () => {
  const key = randomBytes(KEY_BYTES);
  const aad = Buffer.from('extent header');

  it('round-trips with a 16-byte tag appended', () => {
    const nonce = randomNonce();
    expect(nonce.length).toBe(NONCE_BYTES);
    const plain = randomBytes(100_000);
    const sealed = seal(key, nonce, plain, aad);
    expect(sealed.length).toBe(plain.length + TAG_BYTES);
    expect(sealed.subarray(0, 100).equals(plain.subarray(0, 100))).toBe(false);
    expect(open(key, nonce, sealed, aad).equals(plain)).toBe(true);
    expect(open(key, nonce, seal(key, nonce, Buffer.alloc(0)), undefined).length).toBe(0);
  });

  it('wrong key, nonce, aad or any flipped byte → EncryptionKeyError naming the key fingerprint', () => {
    const nonce = randomNonce();
    const sealed = seal(key, nonce, Buffer.from('secret data'), aad);
    const other = randomBytes(KEY_BYTES);
    expect(() => open(other, nonce, sealed, aad)).toThrow(EncryptionKeyError);
    expect(() => open(other, nonce, sealed, aad)).toThrow(keyFingerprint(other));
    expect(() => open(key, randomNonce(), sealed, aad)).toThrow(EncryptionKeyError);
    expect(() => open(key, nonce, sealed, Buffer.from('other header'))).toThrow(EncryptionKeyError);
    for (let i = 0; i < sealed.length; i++) {
      const bad = Buffer.from(sealed);
      bad[i] ^= 1;
      expect(() => open(key, nonce, bad, aad)).toThrow(EncryptionKeyError);
    }
    expect(() => open(key, nonce, sealed.subarray(0, 5), aad)).toThrow(EncryptionKeyError);
  });

  it('rejects bad key and nonce sizes', () => {
    expect(() => seal(Buffer.alloc(16), randomNonce(), Buffer.from('x'))).toThrow(EncryptionKeyError);
    expect(() => seal(key, Buffer.alloc(8), Buffer.from('x'))).toThrow(EncryptionKeyError);
  });

  it('fingerprint = hex of the first 16 bytes of SHA-256(key)', () => {
    // SHA-256 of 32 zero bytes is 66687aad…0d5f2925.
    expect(keyFingerprint(Buffer.alloc(32))).toBe('66687aadf862bd776c8fc18b8e9f8e20');
    expect(keyFingerprint(key)).toMatch(/^[0-9a-f]{32}$/);
  });
});

describe('key files', () => {
  it('createKeyFile writes 32 random bytes with mode 0600 and refuses to overwrite', async () => {
    const path = join(dir, 'k.key');
    const info = await createKeyFile(path);
    const st = await stat(path);
    expect(st.size).toBe(32);
    expect(st.mode & 0o777).toBe(0o600);
    const key = await readKeyFile(path);
    expect(key.length).toBe(32);
    expect(info.fingerprint).toBe(keyFingerprint(key));
    await expect(createKeyFile(path)).rejects.toThrow(/refusing to overwrite/);
    expect((await readFile(path)).equals(key)).toBe(true);
    const second = await createKeyFile(join(dir, 'k2.key'));
    expect(second.fingerprint).not.toBe(info.fingerprint);
  });

  it('readKeyFile accepts exactly 32 bytes', async () => {
    for (const size of [0, 16, 31, 33]) {
      const p = join(dir, `bad-${size}`);
      await writeFile(p, randomBytes(size), { mode: 0o600 });
      await expect(readKeyFile(p)).rejects.toThrow(EncryptionKeyError);
      await expect(readKeyFile(p)).rejects.toThrow(`it has ${size}`);
    }
    const p64 = join(dir, 'bad-64');
    await writeFile(p64, randomBytes(64), { mode: 0o600 });
    await expect(readKeyFile(p64)).rejects.toThrow(/neither a 32-byte key nor a passphrase-wrapped key file/);
    await expect(readKeyFile(join(dir, 'missing'))).rejects.toThrow(EncryptionKeyError);
    await mkdir(join(dir, 'adir'));
    await expect(readKeyFile(join(dir, 'adir'))).rejects.toThrow(/not a regular file/);
    await expect(createKeyFile(join(dir, 'no', 'such', 'dir', 'k'))).rejects.toThrow(EncryptionKeyError);
  });
});
