/**
 * A small valid archive whose index holds 8 million zero runs (128 MB) must
 * not make `archive verify`, a restore or the indexer run out of memory: the
 * reader refuses it after reading the trailer's counts (IndexTooLargeError,
 * COWSTREAM_MAX_INDEX_ENTRIES). Each runs in a child with a 256 MiB heap;
 * loading the whole index took ~1 GB before.
 */
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeZeroRunArchive } from '../helpers/format-craft.js';

const ROOT = resolve(import.meta.dirname, '../..');
const CLI = join(ROOT, 'bin', 'cowstream.js');
const HEAP = '--max-old-space-size=256';

function node(args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((res, rej) => {
    const child = spawn(process.execPath, [HEAP, ...args], { cwd: ROOT, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', rej);
    child.on('close', (code) => res({ code, stdout, stderr }));
  });
}

describe('memory stays bounded on an archive with 8 million zero runs', () => {
  let dir: string;
  let file: string;
  let uuid: string;
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'cowstream-bounded-'));
    file = join(dir, 'runs.cwa');
    uuid = await writeZeroRunArchive(file, 8 * 1024 * 1024, 'h1');
  }, 120_000);
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('archive verify refuses it with IndexTooLargeError under a 256 MiB heap', async () => {
    const r = await node([CLI, 'archive', 'verify', file, '--json']);
    expect(r.stderr).not.toMatch(/heap out of memory/);
    expect(r.code, r.stderr).toBe(1);
    const out = JSON.parse(r.stdout) as { ok: boolean; error: { code: string; message: string } };
    expect(out.error.code).toBe('INDEX_TOO_LARGE');
    expect(out.error.message).toMatch(/8388608 zero runs .* at most 1048576 \(raise COWSTREAM_MAX_INDEX_ENTRIES/);
  }, 120_000);

  it('restore refuses it before creating the target, under a 256 MiB heap', async () => {
    const target = join(dir, 'target') + '/';
    mkdirSync(target);
    const r = await node([CLI, 'restore', file, '--to', target]);
    expect(r.stderr).not.toMatch(/heap out of memory/);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/index holds .* 8388608 zero runs/);
    expect(readdirSync(target)).toEqual([]);
  }, 120_000);

  it('the embedded indexer records it as REJECTED with the reason, under a 256 MiB heap', async () => {
    const state = join(dir, 'state');
    const r = await node(['--import', 'tsx', join(ROOT, 'test', 'helpers', 'index-child.ts'), file, state, 'h1', uuid]);
    expect(r.stderr).not.toMatch(/heap out of memory/);
    expect(r.code, r.stderr).toBe(0);
    const rec = JSON.parse(r.stdout.trim().split('\n').pop()!) as { status: string; reason: string };
    expect(rec.status).toBe('REJECTED');
    expect(rec.reason).toMatch(/8388608 zero runs/);
  }, 180_000);

  it('the limit is configuration: a lower COWSTREAM_MAX_INDEX_ENTRIES refuses a smaller index, a bad value is a clear error', async () => {
    const small = join(dir, 'small.cwa');
    await writeZeroRunArchive(small, 1000);
    const ok = await node([CLI, 'archive', 'verify', small]);
    expect(ok.code, ok.stderr).toBe(0);
    const low = await node([CLI, 'archive', 'verify', small], { COWSTREAM_MAX_INDEX_ENTRIES: '999' });
    expect(low.code).toBe(1);
    expect(low.stderr).toMatch(/1000 zero runs .* at most 999/);
    const bad = await node([CLI, 'archive', 'verify', small], { COWSTREAM_MAX_INDEX_ENTRIES: 'lots' });
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toMatch(/COWSTREAM_MAX_INDEX_ENTRIES must be a positive integer/);
  }, 120_000);
});
