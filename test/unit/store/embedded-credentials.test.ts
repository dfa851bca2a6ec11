import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { chmodSync, chownSync, mkdtempSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { credentialsPath, loadOrCreateEmbeddedCredentials, readCatalogTokenFile, readEmbeddedCredentials } from '../../../src/store/embedded-credentials.js';
import { InsecureFileError } from '../../../src/store/private-file.js';
import { ConfigError } from '../../../src/errors.js';

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'cowstream-creds-'));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

describe('embedded credentials', () => {
  it('are created once, 0600, in a 0700 state directory; later starts read the same ones', async () => {
    const state = join(dir, 'state');
    const a = await loadOrCreateEmbeddedCredentials(state);
    expect(statSync(credentialsPath(state)).mode & 0o777).toBe(0o600);
    expect(statSync(state).mode & 0o777).toBe(0o700);
    expect(a.catalogToken.length).toBeGreaterThanOrEqual(43);
    expect(a.s3.accessKeyId).not.toBe('S3RVER');
    expect(await loadOrCreateEmbeddedCredentials(state)).toEqual(a);
  });

  it('concurrent first starts agree on one set (atomic exclusive publish)', async () => {
    const all = await Promise.all(Array.from({ length: 16 }, () => loadOrCreateEmbeddedCredentials(dir)));
    for (const c of all) expect(c).toEqual(all[0]);
  });

  it('refuse a file group or others can read, naming the fix', async () => {
    await loadOrCreateEmbeddedCredentials(dir);
    for (const mode of [0o640, 0o604, 0o660, 0o644]) {
      chmodSync(credentialsPath(dir), mode);
      await expect(readEmbeddedCredentials(dir)).rejects.toSatisfy((e: unknown) => e instanceof InsecureFileError && /chmod 600/.test((e as Error).message));
      await expect(loadOrCreateEmbeddedCredentials(dir)).rejects.toBeInstanceOf(InsecureFileError);
      await expect(readCatalogTokenFile(credentialsPath(dir))).rejects.toBeInstanceOf(InsecureFileError);
    }
  });

  it.skipIf(process.getuid?.() !== 0)('refuse a file owned by another user (a planted file)', async () => {
    await loadOrCreateEmbeddedCredentials(dir);
    chownSync(credentialsPath(dir), 65534, 65534);
    await expect(readEmbeddedCredentials(dir)).rejects.toSatisfy((e: unknown) => e instanceof InsecureFileError && /owned by uid 65534/.test((e as Error).message));
  });

  it('refuse a symbolic link, even to a good file', async () => {
    const real = join(dir, 'real');
    await loadOrCreateEmbeddedCredentials(real);
    const state = join(dir, 'state');
    await loadOrCreateEmbeddedCredentials(state);
    rmSync(credentialsPath(state));
    symlinkSync(credentialsPath(real), credentialsPath(state));
    await expect(readEmbeddedCredentials(state)).rejects.toBeInstanceOf(InsecureFileError);
    await expect(loadOrCreateEmbeddedCredentials(state)).rejects.toBeInstanceOf(InsecureFileError);
  });

  it('missing or malformed files are clear config errors', async () => {
    await expect(readEmbeddedCredentials(dir)).rejects.toSatisfy((e: unknown) => e instanceof ConfigError && /no embedded credentials/.test((e as Error).message));
    writeFileSync(credentialsPath(dir), '{"catalogToken": 1}', { mode: 0o600 });
    await expect(readEmbeddedCredentials(dir)).rejects.toBeInstanceOf(ConfigError);
  });

  it('a token file may hold credentials.json or the bare token', async () => {
    const c = await loadOrCreateEmbeddedCredentials(dir);
    expect(await readCatalogTokenFile(credentialsPath(dir))).toBe(c.catalogToken);
    const bare = join(dir, 'token');
    writeFileSync(bare, `${c.catalogToken}\n`, { mode: 0o600 });
    expect(await readCatalogTokenFile(bare)).toBe(c.catalogToken);
  });
});
