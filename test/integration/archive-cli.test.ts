/**
 * End-to-end: the real CLI (`node bin/cowstream.js archive ...`) on real files.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import { mkdtemp, open, readFile, readdir, rm, stat, writeFile, mkdir, symlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';

const ROOT = join(import.meta.dirname, '..', '..');
const CLI = join(ROOT, 'bin', 'cowstream.js');
const MiB = 1024 * 1024;

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function run(args: string[], stdoutFile?: string): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    const killer = setTimeout(() => child.kill('SIGKILL'), 60_000);
    if (stdoutFile) child.stdout.pipe(createWriteStream(stdoutFile));
    else child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(killer);
      resolve({ code, stdout, stderr });
    });
  });
}

function json<T = Record<string, unknown>>(r: Run): T {
  try {
    return JSON.parse(r.stdout) as T;
  } catch {
    throw new Error(`not JSON (exit ${r.code}): ${r.stdout}\nstderr: ${r.stderr}`);
  }
}

let dir: string;
let disk0: string;
let disk1: string;
let conf: string;
let key: string;
let archive: string;

/** disk0: odd size, text + random + a 6 MiB hole + random tail; disk1: one partial cluster of random data. */
async function makeImages(): Promise<void> {
  disk0 = join(dir, 'disk0.img');
  disk1 = join(dir, 'disk1.img');
  const fh = await open(disk0, 'w');
  const text = Buffer.from('copy-before-write backup of block devices\n'.repeat(30_000));
  await fh.write(text, 0, text.length, 0);
  await fh.write(randomBytes(700_000), 0, 700_000, 2 * MiB);
  // 4 KiB-aligned zero blocks inside an otherwise non-zero cluster.
  const mixed = randomBytes(65536);
  mixed.fill(0, 8192, 16384);
  await fh.write(mixed, 0, mixed.length, 3 * MiB);
  await fh.write(randomBytes(123_457), 0, 123_457, 10 * MiB);
  await fh.close();
  await writeFile(disk1, randomBytes(40_000));
  conf = join(dir, 'vm-100.conf');
  await writeFile(conf, 'cores: 2\nmemory: 2048\nscsi0: disk0\n');
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cowstream-archive-cli-'));
  await makeImages();
  archive = join(dir, 'a.cwa');
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('cowstream archive CLI', () => {
  it('create never follows a symlink planted at <archive>.partial, nor truncates its target', async () => {
    const victim = join(dir, 'victim.txt');
    await writeFile(victim, 'precious');
    const target = join(dir, 'planted.cwa');
    await symlink(victim, `${target}.partial`);
    const c = await run(['archive', 'create', target, `disk1=${disk1}`]);
    expect(c.code).not.toBe(0);
    expect(c.stderr).toMatch(/planted\.cwa\.partial already exists/);
    expect(await readFile(victim, 'utf8')).toBe('precious');
  });

  it('create → list → verify → extract round trip (sparse output, configs, --json)', async () => {
    const c = await run(['archive', 'create', archive, '--config-file', conf, '--host-id', 'pve1', '--json', `disk0=${disk0}`, `disk1=${disk1}`]);
    expect(c.code, c.stderr).toBe(0);
    const created = json(c);
    const size0 = (await stat(disk0)).size;
    expect(created).toMatchObject({ ok: true, imageBytes: size0 + 40_000, bytesWritten: (await stat(archive)).size });
    expect(created.zeroBytes as number).toBeGreaterThan(6 * MiB);

    const l = await run(['archive', 'list', archive, '--json']);
    expect(l.code, l.stderr).toBe(0);
    const listed = json<{ header: Record<string, unknown>; devices: Array<Record<string, unknown>>; configs: unknown[]; totals: Record<string, number> }>(l);
    expect(listed.header).toMatchObject({ hostId: 'pve1', encryption: 'none', parentUuid: null, uuid: created.uuid, version: 2 });
    expect(listed.devices).toEqual([
      expect.objectContaining({ id: 0, name: 'disk0', size: size0, absentClusters: 0 }),
      expect.objectContaining({ id: 1, name: 'disk1', size: 40_000, dataClusters: 1, zeroClusters: 0 }),
    ]);
    expect(listed.configs).toEqual([{ name: 'vm-100.conf', size: (await stat(conf)).size }]);
    expect(listed.totals.compressionRatio).toBeGreaterThan(1);
    expect(listed.totals.logicalBytes).toBe(size0 + 40_000);

    const v = await run(['archive', 'verify', archive, '--json']);
    expect(v.code, v.stderr).toBe(0);
    expect(json(v)).toMatchObject({ ok: true, plaintextChecked: true, extentsChecked: created.extentCount });

    const out = join(dir, 'out');
    const x = await run(['archive', 'extract', archive, out, '--json']);
    expect(x.code, x.stderr).toBe(0);
    expect(json(x)).toMatchObject({ ok: true, dir: out });
    // Every non-zero 4 KiB block is written once, whichever worker decoded it.
    const written = json<{ devices: Array<{ bytesWritten: number }> }>(x).devices.reduce((n, d) => n + d.bytesWritten, 0);
    expect(written).toBe(created.dataBytes);
    expect((await readFile(join(out, 'disk0.raw'))).equals(await readFile(disk0))).toBe(true);
    expect((await readFile(join(out, 'disk1.raw'))).equals(await readFile(disk1))).toBe(true);
    expect(await readFile(join(out, 'vm-100.conf'), 'utf8')).toBe(await readFile(conf, 'utf8'));
    // Archives and everything extracted are for their owner only.
    for (const f of [archive, join(out, 'disk0.raw'), join(out, 'disk1.raw'), join(out, 'vm-100.conf')]) expect((await stat(f)).mode & 0o777, f).toBe(0o600);
    // Sparse: the 6+ MiB of zeros are holes, not allocated blocks.
    const st = await stat(join(out, 'disk0.raw'));
    expect(st.size).toBe(size0);
    expect(st.blocks * 512).toBeLessThan(size0 - 5 * MiB);

    // A non-empty target directory is refused (usage error, exit 2).
    const again = await run(['archive', 'extract', archive, out]);
    expect(again.code).toBe(2);
    expect(again.stderr).toMatch(/non-empty directory/);
  });

  it('extract counts every written byte once, with extents decoded concurrently', async () => {
    // 24 MiB of compressible data with zero 4 KiB blocks: several 4 MiB extents per device.
    const big = join(dir, 'big.img');
    const img = Buffer.alloc(24 * MiB);
    for (let off = 0; off < img.length; off += 4096) if ((off / 4096) % 5 !== 0) img.write(`block ${off} `.repeat(300), off, 4096, 'latin1');
    await writeFile(big, img);
    const archivePath = join(dir, 'big.cwa');
    const c = await run(['archive', 'create', archivePath, '--json', `big=${big}`]);
    expect(c.code, c.stderr).toBe(0);
    const created = json<{ dataBytes: number; extentCount: number }>(c);
    expect(created.extentCount).toBeGreaterThan(4);
    const x = await run(['archive', 'extract', archivePath, join(dir, 'big-out'), '--json']);
    expect(x.code, x.stderr).toBe(0);
    expect(json<{ devices: Array<{ bytesWritten: number }> }>(x).devices[0]!.bytesWritten).toBe(created.dataBytes);
    expect((await readFile(join(dir, 'big-out', 'big.raw'))).equals(img)).toBe(true);
  });

  it('create, extract and verify show progress on a pipe only with --progress, never with --json', async () => {
    const a = join(dir, 'progress.cwa');
    const size = (await stat(disk0)).size;
    const line = (label: string): RegExp => new RegExp(`^${label} \\[.*\\] 100% \\| [\\d.]+ [KMG]?i?B/[\\d.]+ [KMG]?i?B \\| (-|[\\d.]+ [KMG]?i?B/s) \\| ETA 0s$`, 'm');
    // Forced on a pipe: bytes done/total, rate and ETA, ending at 100 %.
    const c = await run(['archive', 'create', a, '--progress', `disk0=${disk0}`]);
    expect(c.code, c.stderr).toBe(0);
    expect(c.stderr).toMatch(line('archive'));
    expect(c.stderr).toContain(`/${(size / MiB).toFixed(1)} MiB |`);
    const out = join(dir, 'progress-out');
    const x = await run(['archive', 'extract', a, out, '--progress']);
    expect(x.code, x.stderr).toBe(0);
    expect(x.stderr).toMatch(line('extract'));
    const v = await run(['archive', 'verify', a, '--progress']);
    expect(v.code, v.stderr).toBe(0);
    expect(v.stderr).toMatch(line('verify'));

    // stderr is not a terminal here: no bar without --progress, and none with --json even when forced.
    const quiet = [
      await run(['archive', 'create', join(dir, 'quiet.cwa'), `disk0=${disk0}`]),
      await run(['archive', 'create', join(dir, 'quiet-json.cwa'), '--json', '--progress', `disk0=${disk0}`]),
      await run(['archive', 'extract', a, join(dir, 'quiet-out')]),
      await run(['archive', 'extract', a, join(dir, 'quiet-json-out'), '--json', '--progress']),
      await run(['archive', 'verify', a]),
      await run(['archive', 'verify', a, '--json', '--progress']),
    ];
    for (const r of quiet) {
      expect(r.code, r.stderr).toBe(0);
      expect(r.stderr).toBe('');
    }
  });

  it('writes the archive to stdout with "-"', async () => {
    const piped = join(dir, 'piped.cwa');
    const c = await run(['archive', 'create', '-', `disk1=${disk1}`, '--json'], piped);
    expect(c.code, c.stderr).toBe(0);
    // The summary goes to stderr so stdout carries only the archive.
    expect(JSON.parse(c.stderr)).toMatchObject({ ok: true, path: '-' });
    const v = await run(['archive', 'verify', piped, '--json']);
    expect(v.code, v.stderr).toBe(0);
    expect(json(v).ok).toBe(true);
  });

  it('encrypts with --key; wrong key fails naming the expected fingerprint', async () => {
    key = join(dir, 'k.key');
    const k = await run(['key', 'create', key, '--json']);
    expect(k.code, k.stderr).toBe(0);
    const fp = json(k).fingerprint as string;
    expect(((await stat(key)).mode & 0o777).toString(8)).toBe('600');
    const enc = join(dir, 'enc.cwa');
    const c = await run(['archive', 'create', enc, '--key', key, `disk1=${disk1}`, `disk0=${disk0}`]);
    expect(c.code, c.stderr).toBe(0);
    expect(json(await run(['archive', 'list', enc, '--json'])).header).toMatchObject({ encryption: 'aes-256-gcm', keyFingerprint: fp });
    // Without the key, verify still checks stored checksums.
    const v = await run(['archive', 'verify', enc, '--json']);
    expect(v.code, v.stderr).toBe(0);
    expect(json(v)).toMatchObject({ ok: true, plaintextChecked: false });

    const wrong = join(dir, 'wrong.key');
    await writeFile(wrong, randomBytes(32), { mode: 0o600 });
    const bad = await run(['archive', 'extract', enc, join(dir, 'enc-out-bad'), '--key', wrong, '--json']);
    expect(bad.code).toBe(1);
    expect(json<{ error: { code: string; message: string } }>(bad).error).toMatchObject({ code: 'KEY' });
    expect(bad.stdout).toContain(fp);
    await expect(stat(join(dir, 'enc-out-bad'))).rejects.toThrow(); // nothing created
    const none = await run(['archive', 'extract', enc, join(dir, 'enc-out-none')]);
    expect(none.code).toBe(1);
    expect(none.stderr).toContain(`key fingerprint ${fp}`);
    await expect(stat(join(dir, 'enc-out-none'))).rejects.toThrow();

    const good = await run(['archive', 'extract', enc, join(dir, 'enc-out'), '--key', key]);
    expect(good.code, good.stderr).toBe(0);
    expect((await readFile(join(dir, 'enc-out', 'disk0.raw'))).equals(await readFile(disk0))).toBe(true);
  });

  it('verify reports the first bad extent by offset and exits 1', async () => {
    const bytes = await readFile(archive);
    // Flip a byte well inside the first extent (just past the header region).
    const headerEnd = bytes.indexOf(Buffer.from('vm-100.conf')) + 200;
    const at = headerEnd + 1000;
    const bad = Buffer.from(bytes);
    bad[at] ^= 0xff;
    const badPath = join(dir, 'bad.cwa');
    await writeFile(badPath, bad);
    const v = await run(['archive', 'verify', badPath, '--json']);
    expect(v.code).toBe(1);
    const r = json<{ ok: boolean; firstBad: { offset: number; length: number; seq: number } }>(v);
    expect(r.ok).toBe(false);
    expect(r.firstBad.seq).toBe(0);
    expect(r.firstBad.offset).toBeLessThanOrEqual(at);
    expect(r.firstBad.offset + r.firstBad.length).toBeGreaterThan(at);
    const human = await run(['archive', 'verify', badPath]);
    expect(human.code).toBe(1);
    expect(human.stdout).toContain(`at offset ${r.firstBad.offset}`);
    // Extracting into an existing empty directory is fine (and shows the human output).
    const empty = join(dir, 'empty');
    await mkdir(empty);
    const x = await run(['archive', 'extract', archive, empty]);
    expect(x.code, x.stderr).toBe(0);
    expect(x.stdout).toContain('disk0.raw');
    expect((await readdir(empty)).sort()).toEqual(['disk0.raw', 'disk1.raw', 'vm-100.conf']);

    // A cut archive has no footer: a clear error, exit 1.
    const cut = join(dir, 'cut.cwa');
    await writeFile(cut, bytes.subarray(0, bytes.length - 10));
    const t = await run(['archive', 'verify', cut, '--json']);
    expect(t.code).toBe(1);
    expect(json<{ error: { code: string } }>(t).error.code).toBe('TRUNCATED');
  });

  it('bad usage exits 2 with a clear message', async () => {
    const out = join(dir, 'never.cwa');
    // The full validation matrix is unit-tested (test/unit/cli/archive-args.test.ts);
    // these check that the real process maps UsageError/commander errors to exit 2.
    const cases: Array<[string[], RegExp]> = [
      [['archive', 'create', out, `disk0=${disk0}`, '--level', '0'], /--level must be between 1 and 19/],
      [['archive', 'create', out, `a=${disk0}`, `a=${disk1}`], /duplicate device name "a"/],
      [['archive', 'create', out, `a=${join(dir, 'missing.img')}`], /not found/],
      [['archive', 'create', out, `a=${disk1}`, '--bogus'], /unknown option/],
    ];
    const results = await Promise.all(cases.map(([args]) => run(args)));
    results.forEach((r, i) => {
      expect(r.code, `${cases[i][0].join(' ')}: ${r.stderr}`).toBe(2);
      expect(r.stderr).toMatch(cases[i][1]);
    });
    await expect(stat(out)).rejects.toThrow();
    await expect(stat(`${out}.partial`)).rejects.toThrow();
    // --json error output parses too.
    const j = await run(['archive', 'create', out, 'nodevice', '--json']);
    expect(j.code).toBe(2);
    expect(json<{ ok: boolean; error: { code: string } }>(j)).toMatchObject({ ok: false, error: { code: 'USAGE' } });
  });

});
