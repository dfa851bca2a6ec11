/**
 * Peak RSS of the real CLI stays under the bound its configuration gives
 * (docs/memory.md), and twice the disk makes no difference: `archive create`
 * (writerMemoryBound) and a local `restore` (restoreMemoryBound) of a disk
 * and of one twice its size. Each child reports its own peak
 * (process.resourceUsage().maxRSS, all threads) through a preloaded module.
 */
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ZstdPool } from '../../src/codec/zstd-pool.js';
import { MAX_EXTENT_DATA } from '../../src/format/constants.js';
import { DEFAULT_IN_FLIGHT_EXTENTS, writerMemoryBound } from '../../src/format/writer.js';
import { DEFAULT_PARALLEL } from '../../src/restore/engine.js';
import { decodeSlots, restoreMemoryBound } from '../../src/restore/memory.js';

const ROOT = resolve(import.meta.dirname, '../..');
const CLI = join(ROOT, 'bin', 'cowstream.js');
const MiB = 1024 * 1024;
/** Disk sizes: the second is twice the first. Large enough for GC-driven growth to show (it did: +24–50 MiB per doubling). */
const SMALL = 256 * MiB;
/** Doubling the disk may move the peak by this much at most (measurement noise, not growth). */
const SAME = 16 * MiB;

let dir: string;
let reporter: string;

/**
 * A disk image like a filesystem with free space: 48 MiB data regions of
 * compressible text (each 64 KiB cluster different), 16 MiB holes between.
 */
async function makeImage(path: string, size: number): Promise<void> {
  const words = ['block', 'device', 'extent', 'cluster', 'archive', 'restore', 'sector', 'inode', '\n', ' '];
  const base = Buffer.alloc(MiB);
  let seed = 12345;
  for (let i = 0; i < base.length; ) {
    seed = (seed * 1103515245 + 12345) >>> 0;
    i += base.write(words[seed % words.length]!, i);
  }
  const fh = await open(path, 'w');
  try {
    await fh.truncate(size);
    for (let off = 0; off < size; off += MiB) {
      if (off % (64 * MiB) >= 48 * MiB) continue;
      for (let c = 0; c < MiB; c += 64 * 1024) base.writeUInt32LE(off + c, c);
      await fh.write(base, 0, MiB, off);
    }
  } finally {
    await fh.close();
  }
}

/** Runs the CLI; returns its peak RSS in bytes (the largest of the processes it ran in). */
function peakRss(args: string[]): Promise<number> {
  const out = join(dir, `rss-${Math.random().toString(36).slice(2)}.txt`);
  return new Promise((res, rej) => {
    const child = spawn(process.execPath, [CLI, ...args], {
      cwd: ROOT,
      stdio: ['ignore', 'ignore', 'pipe'],
      // NODE_OPTIONS reaches the Node the CLI may hand over to (bin/cowstream.js).
      env: { ...process.env, NODE_OPTIONS: `--import=${reporter}`, RSS_OUT: out },
    });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', rej);
    child.on('close', (code) => {
      if (code !== 0) return rej(new Error(`cowstream ${args.join(' ')} exited ${code}: ${stderr}`));
      const kib = readFileSync(out, 'utf8').split('\n').filter(Boolean).map(Number);
      res(Math.max(...kib) * 1024);
    });
  });
}

const mib = (n: number): string => `${(n / MiB).toFixed(0)} MiB`;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'cowstream-rss-'));
  reporter = join(dir, 'report-rss.mjs');
  writeFileSync(reporter, `import { appendFileSync } from 'node:fs';\nprocess.on('exit', () => appendFileSync(process.env.RSS_OUT, process.resourceUsage().maxRSS + '\\n'));\n`);
  await makeImage(join(dir, 'small.raw'), SMALL);
  await makeImage(join(dir, 'large.raw'), 2 * SMALL);
}, 120_000);

afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('peak RSS is set by configuration, not by the disk size', () => {
  const pool = new ZstdPool();

  it('archive create: under writerMemoryBound, the same for a disk twice as large', async () => {
    const bound = writerMemoryBound({ poolBytes: pool.memoryBound(MAX_EXTENT_DATA, true, DEFAULT_IN_FLIGHT_EXTENTS + 1) });
    const small = await peakRss(['archive', 'create', join(dir, 'small.cwa'), `disk0=${join(dir, 'small.raw')}`]);
    const large = await peakRss(['archive', 'create', join(dir, 'large.cwa'), `disk0=${join(dir, 'large.raw')}`]);
    const what = `small ${mib(small)}, large ${mib(large)}, bound ${mib(bound)}`;
    expect(small, what).toBeLessThanOrEqual(bound);
    expect(large, what).toBeLessThanOrEqual(bound);
    expect(large - small, what).toBeLessThanOrEqual(SAME);
  }, 300_000);

  // Restores the archives the test above made.
  it('local restore: under restoreMemoryBound, the same for a disk twice as large', async () => {
    const bound = restoreMemoryBound({ parallel: DEFAULT_PARALLEL, poolBytes: pool.memoryBound(MAX_EXTENT_DATA, false, decodeSlots(DEFAULT_PARALLEL, pool)) });
    const small = await peakRss(['restore', join(dir, 'small.cwa'), '--to', join(dir, 'small.out')]);
    const large = await peakRss(['restore', join(dir, 'large.cwa'), '--to', join(dir, 'large.out')]);
    const what = `small ${mib(small)}, large ${mib(large)}, bound ${mib(bound)}`;
    expect(small, what).toBeLessThanOrEqual(bound);
    expect(large, what).toBeLessThanOrEqual(bound);
    expect(large - small, what).toBeLessThanOrEqual(SAME);
    expect(spawnSync('cmp', ['-s', join(dir, 'large.out'), join(dir, 'large.raw')]).status, 'restored image differs').toBe(0);
  }, 300_000);
});
