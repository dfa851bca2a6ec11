/**
 * Archives cross between the two zstd backends (docs/zstd.md): an archive the
 * real CLI writes with native zstd is verified and extracted by the wasm
 * fallback, and the other way round, byte for byte.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const ROOT = join(import.meta.dirname, '..', '..');
const CLI = join(ROOT, 'bin', 'cowstream.js');
const MiB = 1024 * 1024;

function cli(backend: 'native' | 'wasm', args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, COWSTREAM_ZSTD: backend } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

let dir: string;
let image: string;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cowstream-zstd-backends-'));
  image = join(dir, 'disk.img');
  // Text (compressed extents), random (stored raw), zeros (skipped), odd tail.
  const text = Buffer.from('copy-before-write backup of block devices\n'.repeat(100_000));
  await writeFile(image, Buffer.concat([text, randomBytes(3 * MiB), Buffer.alloc(2 * MiB), text.subarray(0, 777_777)]));
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe.each([
  ['native', 'wasm'],
  ['wasm', 'native'],
] as const)('an archive written with %s zstd', (writer, reader) => {
  it(`is verified and extracted byte for byte by ${reader} zstd`, async () => {
    const cwa = join(dir, `by-${writer}.cwa`);
    const c = await cli(writer, ['archive', 'create', cwa, `disk0=${image}`, '--json']);
    expect(c.code, c.stderr).toBe(0);
    const created = JSON.parse(c.stdout) as { extentCount: number };
    const v = await cli(reader, ['archive', 'verify', cwa, '--json']);
    expect(v.code, v.stderr).toBe(0);
    expect(JSON.parse(v.stdout)).toMatchObject({ ok: true, plaintextChecked: true, extentsChecked: created.extentCount });
    const out = join(dir, `out-${writer}`);
    const x = await cli(reader, ['archive', 'extract', cwa, out, '--json']);
    expect(x.code, x.stderr).toBe(0);
    expect((await readFile(join(out, 'disk0.raw'))).equals(await readFile(image))).toBe(true);
  });
});

it('an unknown COWSTREAM_ZSTD is a clear error, not a silent default', async () => {
  const child = await new Promise<{ code: number | null; stderr: string }>((resolve, reject) => {
    const p = spawn(process.execPath, [CLI, 'archive', 'create', join(dir, 'x.cwa'), `disk0=${image}`], { cwd: ROOT, env: { ...process.env, COWSTREAM_ZSTD: 'zlib' } });
    let stderr = '';
    p.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    p.on('error', reject);
    p.on('close', (code) => resolve({ code, stderr }));
  });
  expect(child.code).not.toBe(0);
  expect(child.stderr).toMatch(/COWSTREAM_ZSTD must be 'native' or 'wasm'/);
});
