/**
 * The esbuild CLI bundle (scripts/bundle-cli.mjs) and bin/cowstream.js's
 * choice between it and tsx. The bundle is built into a directory of its own
 * (inside the project, so bare imports resolve from node_modules) and the bin
 * is pointed at it with COWSTREAM_BUNDLE_DIR: dist/cli stays untouched for the
 * CLIs other test files run at the same time.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';

const ROOT = join(import.meta.dirname, '..', '..');
const CLI = join(ROOT, 'bin', 'cowstream.js');
const SCRIPT = join(ROOT, 'scripts', 'bundle-cli.mjs');

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

interface Manifest {
  inputs: Record<string, { mtimeMs: number; size: number }>;
  dirs: Record<string, string[]>;
}

function run(argv: string[], env: Record<string, string> = {}): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, argv, { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
    let stdout = '';
    let stderr = '';
    const killer = setTimeout(() => child.kill('SIGKILL'), 30_000);
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(killer);
      resolve({ code, stdout, stderr });
    });
  });
}

let outdir: string;
let tmp: string;

/** The CLI with the loader's choice printed; COWSTREAM_NO_BUNDLE cleared so the caller's environment cannot decide. */
function cli(args: string[], env: Record<string, string> = {}): Promise<Run> {
  return run([CLI, ...args], { COWSTREAM_BUNDLE_DIR: outdir, COWSTREAM_DEBUG_LOADER: '1', COWSTREAM_NO_BUNDLE: '', ...env });
}

function loader(r: Run): string {
  const m = /^cowstream: loader (bundle|tsx)\b(.*)$/m.exec(r.stderr);
  if (!m) throw new Error(`no loader line (exit ${r.code}): ${r.stderr}`);
  return m[1]! + m[2]!;
}

function json<T = Record<string, unknown>>(r: Run): T {
  try {
    return JSON.parse(r.stdout) as T;
  } catch {
    throw new Error(`not JSON (exit ${r.code}): ${r.stdout}\nstderr: ${r.stderr}`);
  }
}

const manifestPath = (): string => join(outdir, 'inputs.json');
const readManifest = async (): Promise<Manifest> => JSON.parse(await readFile(manifestPath(), 'utf8')) as Manifest;

beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'cowstream-cli-bundle-'));
  outdir = join(ROOT, 'dist', `.test-cli-bundle-${process.pid}-${randomBytes(4).toString('hex')}`);
  const b = await run([SCRIPT, '--outdir', outdir]);
  expect(b.code, b.stderr).toBe(0);
  // One short line naming the entry point.
  expect(b.stdout.trim().split('\n')).toHaveLength(1);
  expect(b.stdout).toMatch(/^bundle-cli: .*main\.js \(\d+ js files, \d+ inputs, [\d.]+ s\)$/m);
});

afterAll(async () => {
  if (outdir) await rm(outdir, { recursive: true, force: true });
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

describe('CLI bundle', () => {
  it('lists every bundled source, the lazily loaded modules and the zstd worker as inputs', async () => {
    const m = await readManifest();
    const inputs = Object.keys(m.inputs);
    for (const p of ['src/cli/main.ts', 'src/cli/commands/archive.ts', 'src/cli/commands/backup-qemu.ts', 'src/codec/zstd-pool.ts', 'src/codec/zstd-worker.mjs']) {
      expect(inputs).toContain(p);
    }
    // Packages stay external: nothing from node_modules is an input.
    expect(inputs.filter((p) => p.includes('node_modules'))).toEqual([]);
    for (const [p, rec] of Object.entries(m.inputs)) {
      if (rec.mtimeMs === -1) continue; // edited while the bundle was built
      expect((await stat(join(ROOT, p))).size, p).toBe(rec.size);
    }
    expect(m.dirs['src/cli/commands']).toContain('backup.ts');
    expect(existsSync(join(outdir, 'main.js'))).toBe(true);
    expect(existsSync(join(outdir, 'zstd-worker.mjs'))).toBe(true);
  });

  it('runs archive create, list --json and verify from the bundle', async () => {
    const img = join(tmp, 'd.img');
    const data = Buffer.concat([randomBytes(300_000), Buffer.alloc(200_000), Buffer.from('bundle\n'.repeat(40_000))]);
    await writeFile(img, data);
    const cwa = join(tmp, 'a.cwa');

    const c = await cli(['archive', 'create', cwa, `d=${img}`, '--json']);
    expect(c.code, c.stderr).toBe(0);
    expect(loader(c)).toBe('bundle');
    const created = json(c);
    expect(created).toMatchObject({ ok: true, imageBytes: data.length, bytesWritten: (await stat(cwa)).size });

    const l = await cli(['archive', 'list', cwa, '--json']);
    expect(l.code, l.stderr).toBe(0);
    expect(loader(l)).toBe('bundle');
    const listed = json<{ header: { uuid: string }; devices: Array<{ name: string; size: number }> }>(l);
    expect(listed.header.uuid).toBe(created.uuid);
    expect(listed.devices).toEqual([expect.objectContaining({ name: 'd', size: data.length })]);

    // verify decompresses every extent: the zstd worker must load next to the chunks.
    const v = await cli(['archive', 'verify', cwa, '--json']);
    expect(v.code, v.stderr).toBe(0);
    expect(loader(v)).toBe('bundle');
    expect(json(v)).toMatchObject({ ok: true, plaintextChecked: true, extentsChecked: created.extentCount });
  });

  it('--help lists every command group and backup --help works', async () => {
    const h = await cli(['--help']);
    expect(h.code, h.stderr).toBe(0);
    expect(loader(h)).toBe('bundle');
    for (const cmd of ['archive', 'key', 'agent', 'backup', 'status', 'cancel', 'restore', 'verify', 'uploads', 's3', 'list', 'show', 'catalog']) {
      expect(h.stdout).toMatch(new RegExp(`^  ${cmd}\\b`, 'm'));
    }
    const b = await cli(['backup', '--help']);
    expect(b.code, b.stderr).toBe(0);
    expect(loader(b)).toBe('bundle');
    expect(b.stdout).toMatch(/--qemu <socket>/);
  });

  it('loads the QEMU pull-mode module from the bundle', async () => {
    // Reaching the QMP connect proves backup-qemu was bundled (a missing module is a usage error, exit 2).
    const r = await cli(['backup', '--qemu', join(tmp, 'no-such.sock'), '--drive', 'drive0', '--to', join(tmp, 'q.cwa')]);
    expect(loader(r)).toBe('bundle');
    expect(r.stderr).not.toMatch(/not available/);
    expect(r.stderr).toMatch(/QMP/);
    expect(r.code).toBe(1);
  });

  describe('freshness', () => {
    let original: string;
    beforeAll(async () => {
      original = await readFile(manifestPath(), 'utf8');
    });
    afterAll(async () => {
      await writeFile(manifestPath(), original);
    });

    it('uses tsx when a listed input changed, either way in time', async () => {
      // An extra input in a temporary tree: real src files' times are never touched.
      const extra = join(tmp, 'extra.ts');
      await writeFile(extra, 'export {};\n');
      const st = await stat(extra);
      const m = JSON.parse(original) as Manifest;
      m.inputs[extra] = { mtimeMs: st.mtimeMs, size: st.size };
      await writeFile(manifestPath(), JSON.stringify(m));
      expect(loader(await cli(['--version']))).toBe('bundle');

      await utimes(extra, new Date(), new Date(Date.now() + 10_000));
      const newer = await cli(['--version']);
      expect(newer.code, newer.stderr).toBe(0);
      expect(newer.stdout.trim()).toBe('0.1.0');
      expect(loader(newer)).toBe(`tsx (${extra} changed)`);

      // Older than at build time (a checkout, cp -p) is a change too.
      await utimes(extra, new Date(), new Date(st.mtimeMs - 60_000));
      expect(loader(await cli(['--version']))).toBe(`tsx (${extra} changed)`);

      await utimes(extra, new Date(), new Date(st.mtimeMs));
      await writeFile(extra, 'export const x = 1;\n');
      await utimes(extra, new Date(), new Date(st.mtimeMs));
      expect(loader(await cli(['--version']))).toBe(`tsx (${extra} changed)`);

      await rm(extra);
      expect(loader(await cli(['--version']))).toBe(`tsx (${extra} changed)`);
    });

    it('uses tsx when a source file appears beside a bundled one, not for editor files', async () => {
      const dir = join(tmp, 'srcdir');
      await rm(dir, { recursive: true, force: true });
      await mkdir(dir);
      await writeFile(join(dir, 'a.ts'), 'export {};\n');
      const m = JSON.parse(original) as Manifest;
      m.dirs[dir] = ['a.ts'];
      await writeFile(manifestPath(), JSON.stringify(m));
      expect(loader(await cli(['--version']))).toBe('bundle');

      await writeFile(join(dir, '.a.ts.swp'), 'x');
      await writeFile(join(dir, 'notes.txt'), 'x');
      expect(loader(await cli(['--version']))).toBe('bundle');

      await writeFile(join(dir, 'b.ts'), 'export {};\n');
      expect(loader(await cli(['--version']))).toBe(`tsx (files added or removed in ${dir})`);
    });

    it('uses tsx without a bundle or with COWSTREAM_NO_BUNDLE=1', async () => {
      await writeFile(manifestPath(), original);
      const forced = await cli(['--version'], { COWSTREAM_NO_BUNDLE: '1' });
      expect(forced.stdout.trim()).toBe('0.1.0');
      expect(loader(forced)).toBe('tsx (COWSTREAM_NO_BUNDLE=1)');

      const none = await cli(['--version'], { COWSTREAM_BUNDLE_DIR: tmp });
      expect(none.code, none.stderr).toBe(0);
      expect(loader(none)).toBe('tsx (no bundle)');
    });
  });
});
