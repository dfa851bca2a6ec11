/**
 * Key files (docs/security.md "Key files"): refused when group or others may
 * read them; passphrase-wrapped keys (scrypt) unwrap from an env var, a file
 * or a given source; changing the passphrase keeps the key and its fingerprint.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { chmod, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { EncryptionKeyError } from '../../../src/errors.js';
import { changeKeyPassphrase, createKeyFile, keyFingerprint, readKeyFile } from '../../../src/codec/crypto.js';
import { passphraseFromEnvironment } from '../../../src/codec/passphrase.js';

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cowstream-keyfile-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

const fixed = (p: string) => async (): Promise<string> => p;

describe('key file permissions', () => {
  it('a key file readable by group or others is refused, naming the mode and the fix', async () => {
    const p = join(dir, 'k');
    const key = randomBytes(32);
    await writeFile(p, key, { mode: 0o600 });
    expect((await readKeyFile(p)).equals(key)).toBe(true);
    for (const mode of [0o644, 0o640, 0o604, 0o660, 0o601]) {
      await chmod(p, mode);
      const err = await readKeyFile(p).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(EncryptionKeyError);
      expect((err as Error).message).toContain(`mode 0${mode.toString(8)}`);
      expect((err as Error).message).toContain(`chmod 600 ${p}`);
    }
    await chmod(p, 0o400);
    expect((await readKeyFile(p)).equals(key)).toBe(true);
  });
});

describe('passphrase-wrapped key files', () => {
  it('create --passphrase: mode 0600, no key bytes in the file, unwraps to the same fingerprint; a wrong passphrase is refused', async () => {
    const p = join(dir, 'wrapped.key');
    const info = await createKeyFile(p, { passphrase: 'correct horse' });
    expect(info.wrapped).toBe(true);
    expect((await stat(p)).mode & 0o777).toBe(0o600);
    const text = await readFile(p, 'utf8');
    expect(JSON.parse(text)).toMatchObject({ format: 'cowstream-wrapped-key', kdf: 'scrypt', N: 131072, r: 8, p: 1, fingerprint: info.fingerprint });
    const key = await readKeyFile(p, fixed('correct horse'));
    expect(keyFingerprint(key)).toBe(info.fingerprint);
    expect(text.includes(key.toString('base64'))).toBe(false);
    expect(text.includes(key.toString('hex'))).toBe(false);
    await expect(readKeyFile(p, fixed('wrong horse'))).rejects.toThrow(/wrong passphrase/);
    // Edited KDF parameters are authenticated too.
    const edited = JSON.parse(text) as { N: number };
    edited.N = 16384;
    await writeFile(p, JSON.stringify(edited), { mode: 0o600 });
    await expect(readKeyFile(p, fixed('correct horse'))).rejects.toThrow(EncryptionKeyError);
  }, 60_000);

  it('the passphrase comes from COWSTREAM_KEY_PASSPHRASE or from the file COWSTREAM_KEY_PASSPHRASE_FILE (itself private)', async () => {
    const p = join(dir, 'w.key');
    const info = await createKeyFile(p, { passphrase: 's3cret' });
    expect(keyFingerprint(await readKeyFile(p, passphraseFromEnvironment({ COWSTREAM_KEY_PASSPHRASE: 's3cret' })))).toBe(info.fingerprint);
    const pf = join(dir, 'pass');
    await writeFile(pf, 's3cret\n', { mode: 0o600 });
    expect(keyFingerprint(await readKeyFile(p, passphraseFromEnvironment({ COWSTREAM_KEY_PASSPHRASE_FILE: pf })))).toBe(info.fingerprint);
    await chmod(pf, 0o644);
    await expect(readKeyFile(p, passphraseFromEnvironment({ COWSTREAM_KEY_PASSPHRASE_FILE: pf }))).rejects.toThrow(/passphrase file .* group or others/);
    // No source and no terminal: a clear error naming the variables.
    if (!process.stdin.isTTY) await expect(readKeyFile(p, passphraseFromEnvironment({}))).rejects.toThrow(/COWSTREAM_KEY_PASSPHRASE/);
  }, 60_000);

  it('passwd changes the passphrase; the key and its fingerprint stay; --remove stores the bare key', async () => {
    const p = join(dir, 'w.key');
    const info = await createKeyFile(p, { passphrase: 'old pass' });
    const before = await readKeyFile(p, fixed('old pass'));
    const changed = await changeKeyPassphrase(p, fixed('old pass'), 'new pass');
    expect(changed.fingerprint).toBe(info.fingerprint);
    expect((await stat(p)).mode & 0o777).toBe(0o600);
    await expect(readKeyFile(p, fixed('old pass'))).rejects.toThrow(/wrong passphrase/);
    expect((await readKeyFile(p, fixed('new pass'))).equals(before)).toBe(true);
    await expect(changeKeyPassphrase(p, fixed('old pass'), 'x')).rejects.toThrow(/wrong passphrase/);
    const bare = await changeKeyPassphrase(p, fixed('new pass'), null);
    expect(bare).toMatchObject({ fingerprint: info.fingerprint, wrapped: false });
    expect((await readFile(p)).equals(before)).toBe(true);
    // And back: a raw key needs no current passphrase.
    await changeKeyPassphrase(p, fixed('unused'), 'again');
    expect((await readKeyFile(p, fixed('again'))).equals(before)).toBe(true);
  }, 120_000);
});
