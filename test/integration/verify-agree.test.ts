/**
 * `cowstream verify` and `cowstream archive verify` on the same archive file
 * check the same checksums and answer with the same JSON (one function builds
 * both: src/cli/verify-report.ts), unencrypted and encrypted, with and
 * without the key, and on a damaged archive.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { makeTempDir, runCli } from '../helpers/agent-process.js';

let tmp: { dir: string; cleanup(): Promise<void> };
let plain: string;
let enc: string;
let keyFile: string;

async function both(args: string[]): Promise<{ store: unknown; archive: unknown; codes: [number | null, number | null] }> {
  const [file, ...rest] = args;
  const s = await runCli(['verify', file!, ...rest, '--json']);
  const a = await runCli(['archive', 'verify', file!, ...rest, '--json']);
  return { store: JSON.parse(s.stdout.toString()), archive: JSON.parse(a.stdout.toString()), codes: [s.code, a.code] };
}

beforeAll(async () => {
  tmp = await makeTempDir('cowstream-verify-');
  const image = join(tmp.dir, 'd.raw');
  // Half random, half repeated: both compressible and incompressible extents.
  await writeFile(image, Buffer.concat([randomBytes(3 << 20), Buffer.alloc(3 << 20, 7)]));
  keyFile = join(tmp.dir, 'k.key');
  expect((await runCli(['key', 'create', keyFile])).code).toBe(0);
  plain = join(tmp.dir, 'plain.cwa');
  enc = join(tmp.dir, 'enc.cwa');
  const c1 = await runCli(['archive', 'create', plain, `vda=${image}`]);
  expect(c1.code, c1.stderr).toBe(0);
  const c2 = await runCli(['archive', 'create', enc, '--key', keyFile, `vda=${image}`]);
  expect(c2.code, c2.stderr).toBe(0);
}, 120_000);

afterAll(async () => tmp?.cleanup());

describe('verify and archive verify agree', () => {
  it('unencrypted: both check the plaintext checksums, same JSON', async () => {
    const r = await both([plain]);
    expect(r.codes).toEqual([0, 0]);
    expect(r.store).toEqual(r.archive);
    expect(r.store).toMatchObject({ ok: true, source: plain, plaintextChecked: true, authenticated: false });
    expect((r.store as { extentsChecked: number }).extentsChecked).toBe((r.store as { extentCount: number }).extentCount);
  });

  it('encrypted with the key: plaintext checked and authenticated by both; without it, stored checksums only by both', async () => {
    const withKey = await both([enc, '--key', keyFile]);
    expect(withKey.codes).toEqual([0, 0]);
    expect(withKey.store).toEqual(withKey.archive);
    expect(withKey.store).toMatchObject({ ok: true, plaintextChecked: true, authenticated: true });
    const noKey = await both([enc]);
    expect(noKey.codes).toEqual([0, 0]);
    expect(noKey.store).toEqual(noKey.archive);
    expect(noKey.store).toMatchObject({ ok: true, plaintextChecked: false, authenticated: false });
  });

  it('a damaged archive: both exit 1 naming the same first bad extent', async () => {
    const bytes = await readFile(plain);
    bytes[Math.floor(bytes.length / 3)]! ^= 0x55;
    const bad = join(tmp.dir, 'bad.cwa');
    await writeFile(bad, bytes);
    const r = await both([bad]);
    expect(r.codes).toEqual([1, 1]);
    expect(r.store).toEqual(r.archive);
    expect(r.store).toMatchObject({ ok: false, firstBad: { code: expect.any(String) } });
  });
});
