/**
 * Start-up: local commands on a local .cwa load neither the S3 SDK, zod, the
 * embedded S3 server (s3rver), the embedded catalogue (dynalite, DynamoDB
 * client) nor the catalogue client's SigV4 signer (docs/startup.md). A module
 * resolve hook preloaded into the real CLI records every package it loads.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

const ROOT = join(import.meta.dirname, '..', '..');
const CLI = join(ROOT, 'bin', 'cowstream.js');
/**
 * Packages a local archive command must never load: S3 and the catalogue, and
 * zod (95 modules, ~50 ms), which only validates state files and plans that a
 * local archive never reads.
 */
const REMOTE_ONLY = /^(s3rver|dynalite|@aws-sdk\/|@smithy\/|koa|classic-level|zod$)/;

let dir: string;
let probe: string;
let archive: string;

/** Runs the CLI with the probe; returns the exit code and the packages it loaded. */
function runProbed(args: string[]): Promise<{ code: number | null; stderr: string; packages: string[] }> {
  const out = join(dir, `mods-${Math.random().toString(36).slice(2)}.txt`);
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', pathToFileURL(probe).href, CLI, ...args], {
      cwd: ROOT,
      stdio: ['ignore', 'ignore', 'pipe'],
      env: { ...process.env, PROBE_OUT: out },
    });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => {
      readFile(out, 'utf8').then(
        (text) => resolve({ code, stderr, packages: [...new Set(text.split('\n').filter(Boolean))].sort() }),
        reject,
      );
    });
  });
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cowstream-startup-'));
  probe = join(dir, 'probe.mjs');
  await writeFile(
    probe,
    `import { registerHooks } from 'node:module';
import { writeFileSync } from 'node:fs';
const seen = new Set();
registerHooks({ resolve(spec, ctx, next) { const r = next(spec, ctx); const m = /node_modules\\/((?:@[^/]+\\/)?[^/]+)/.exec(r.url); if (m) seen.add(m[1]); return r; } });
process.on('exit', () => writeFileSync(process.env.PROBE_OUT, [...seen].join('\\n') + '\\n'));
`,
  );
  const image = join(dir, 'disk.img');
  await writeFile(image, Buffer.from('a small disk for start-up checks\n'.repeat(40_000)));
  archive = join(dir, 'a.cwa');
  const c = await runProbed(['archive', 'create', archive, `disk0=${image}`]);
  expect(c.code, c.stderr).toBe(0);
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('local commands on a local .cwa load nothing of S3 or the catalogue', () => {
  it.each([
    ['archive list', () => ['archive', 'list', archive]],
    ['archive verify', () => ['archive', 'verify', archive]],
    ['verify', () => ['verify', archive]],
    ['restore', () => ['restore', archive, '--to', join(dir, 'restored.raw')]],
    ['--version', () => ['--version']],
  ])('%s', async (_name, args) => {
    const r = await runProbed(args());
    expect(r.code, r.stderr).toBe(0);
    expect(r.packages).toContain('commander'); // the probe sees packages at all
    expect(r.packages.filter((p) => REMOTE_ONLY.test(p))).toEqual([]);
  });

  it('the probe does see S3 packages when a command needs them', async () => {
    // Port 9 (discard) on loopback: nothing listens, the SDK is loaded, the command fails.
    const r = await runProbed(['uploads', 'list', '--bucket', 'backups', '--endpoint', 'http://127.0.0.1:9']);
    expect(r.code).not.toBe(0);
    expect(r.packages).toContain('@aws-sdk/client-s3');
  });
});
