#!/usr/bin/env node
/**
 * Bundles the CLI (src/cli/main.ts) with esbuild into dist/cli/ so
 * bin/cowstream.js can skip tsx's on-the-fly transpile (~0.45 s -> ~0.2 s
 * start-up). bin/cowstream.js uses the bundle only while inputs.json says it
 * is fresh, so a missing or stale bundle just means the slower tsx path.
 *
 *   node scripts/bundle-cli.mjs [--outdir DIR] [--optional]
 *
 * --outdir   another output directory (tests). It must be inside the project:
 *            packages stay external, so bare imports in the bundle resolve from
 *            the node_modules directories above it.
 * --optional failures warn and exit 0 (npm's `prepare`: a broken bundle must
 *            not fail `npm ci`, the CLI still works through tsx).
 */
import { copyFileSync, mkdirSync, readdirSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { basename, dirname, join, relative, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseBuildArgs } from './build-args.mjs';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
/** Outputs of older builds are kept this long: a running `cowstream agent` may still lazy-load their chunks. */
const STALE_OUTPUT_MS = 24 * 3600 * 1000;
/**
 * File-system timestamps come from a coarse kernel clock that can lag
 * Date.now() by a few ms; an input whose mtime is this close to (or after)
 * the build start may have been edited while esbuild read it.
 */
const CLOCK_SLACK_MS = 50;
/** Names that can be source files; other directory entries (editor swap files) never affect the bundle. Stored in inputs.json for the bin. */
const SOURCE_NAME = /^[^.].*\.(?:[cm]?ts|tsx|[cm]?js|json)$/;

function parseArgs(argv) {
  const opts = parseBuildArgs(argv, { script: 'bundle-cli.mjs', outdir: join(ROOT, 'dist', 'cli') });
  if (relative(ROOT, opts.outdir).startsWith('..')) throw new Error(`--outdir ${opts.outdir} is outside ${ROOT}: bare imports would not resolve`);
  return opts;
}

/** Writes through a temporary name so a CLI starting concurrently never imports a half-written file. */
function writeAtomic(path, data) {
  const tmp = join(dirname(path), `.${basename(path)}.${process.pid}.tmp`);
  writeFileSync(tmp, data);
  renameSync(tmp, path);
}

function sourceNames(dir) {
  return readdirSync(dir).filter((n) => SOURCE_NAME.test(n)).sort();
}

async function bundle(opts) {
  const started = Date.now();
  const esbuild = await import('esbuild');
  mkdirSync(opts.outdir, { recursive: true });
  const result = await esbuild.build({
    absWorkingDir: ROOT,
    entryPoints: ['src/cli/main.ts'],
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: 'node24',
    splitting: true,
    packages: 'external',
    sourcemap: true,
    outdir: opts.outdir,
    metafile: true,
    write: false,
    logLevel: 'silent',
  });
  const outputs = new Set();
  // Chunks first, main.js after them: main.js names the new chunks, so it may
  // only appear once they exist. inputs.json (which makes the bundle usable) last.
  const files = [...result.outputFiles].sort((a, b) => Number(basename(a.path).startsWith('main.')) - Number(basename(b.path).startsWith('main.')));
  for (const f of files) {
    writeAtomic(f.path, f.contents);
    outputs.add(basename(f.path));
  }
  // zstd-pool starts its worker from new URL('./zstd-worker.mjs', import.meta.url),
  // which in the bundle is relative to the chunk, i.e. the output directory.
  const worker = join(opts.outdir, 'zstd-worker.mjs');
  const tmpWorker = `${worker}.${process.pid}.tmp`;
  copyFileSync(join(ROOT, 'src', 'codec', 'zstd-worker.mjs'), tmpWorker);
  renameSync(tmpWorker, worker);
  outputs.add('zstd-worker.mjs');

  // The worker is loaded at run time, not bundled: it is an input all the same.
  const bundled = Object.keys(result.metafile.inputs);
  const inputPaths = [...bundled, 'src/codec/zstd-worker.mjs', 'scripts/bundle-cli.mjs'];
  const inputs = {};
  for (const p of inputPaths) {
    const st = statSync(join(ROOT, p));
    // mtimeMs -1 never matches: an input edited during the build marks the bundle stale at once.
    inputs[p.split(sep).join('/')] = { mtimeMs: st.mtimeMs >= started - CLOCK_SLACK_MS ? -1 : st.mtimeMs, size: st.size };
  }
  // Directory listings catch a new source file that shadows an import's
  // resolution without any listed input changing.
  const dirs = {};
  for (const p of bundled) {
    const d = dirname(p).split(sep).join('/');
    if (!(d in dirs)) dirs[d] = sourceNames(join(ROOT, d));
  }
  writeAtomic(join(opts.outdir, 'inputs.json'), JSON.stringify({ version: 1, builtAt: new Date(started).toISOString(), sourceName: SOURCE_NAME.source, inputs, dirs }, null, 1) + '\n');
  outputs.add('inputs.json');

  for (const name of readdirSync(opts.outdir)) {
    if (outputs.has(name)) continue;
    const p = join(opts.outdir, name);
    try {
      if (Date.now() - statSync(p).mtimeMs > STALE_OUTPUT_MS) rmSync(p, { force: true, recursive: true });
    } catch {
      // Removed concurrently by another build: nothing left to prune.
    }
  }
  return { inputs: Object.keys(inputs).length, chunks: result.outputFiles.filter((f) => f.path.endsWith('.js')).length, ms: Date.now() - started };
}

let opts;
try {
  opts = parseArgs(process.argv.slice(2));
} catch (err) {
  process.stderr.write(`bundle-cli: ${err.message}\n`);
  process.exit(2);
}
try {
  const r = await bundle(opts);
  process.stdout.write(`bundle-cli: ${relative(ROOT, opts.outdir) || '.'}/main.js (${r.chunks} js files, ${r.inputs} inputs, ${(r.ms / 1000).toFixed(2)} s)\n`);
} catch (err) {
  const detail = err.errors?.length ? err.errors.map((e) => `${e.location ? `${e.location.file}:${e.location.line}: ` : ''}${e.text}`).join('; ') : err.message;
  if (!opts.optional) {
    process.stderr.write(`bundle-cli: failed: ${detail}\n`);
    process.exit(1);
  }
  process.stderr.write(`bundle-cli: warning: no CLI bundle (${detail}); bin/cowstream.js will use tsx\n`);
}
