#!/usr/bin/env node
/**
 * Builds the web console (web/, Vite) into dist/web, which `catalog serve`,
 * an agent with the embedded catalogue and `cowstream console` serve.
 *
 *   node scripts/build-web.mjs [--outdir DIR] [--optional]
 *
 * --outdir   another output directory (tests build their own copy).
 * --optional failures warn and exit 0 (npm's `prepare`: a console that cannot
 *            be built must not fail `npm ci`; the catalogue still serves its API
 *            and a page saying the console is not built).
 */
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseBuildArgs } from './build-args.mjs';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');

let opts;
try {
  opts = parseBuildArgs(process.argv.slice(2), { script: 'build-web.mjs', outdir: join(ROOT, 'dist', 'web') });
} catch (err) {
  process.stderr.write(`build-web: ${err.message}\n`);
  process.exit(2);
}
const started = Date.now();
try {
  const { build } = await import('vite');
  await build({ configFile: join(ROOT, 'web', 'vite.config.ts'), logLevel: 'warn', build: { outDir: opts.outdir } });
  process.stdout.write(`build-web: ${relative(ROOT, opts.outdir) || '.'}/index.html (${((Date.now() - started) / 1000).toFixed(2)} s)\n`);
} catch (err) {
  if (!opts.optional) {
    process.stderr.write(`build-web: failed: ${err.message}\n`);
    process.exit(1);
  }
  process.stderr.write(`build-web: warning: no web console (${err.message}); the catalogue serves its API only\n`);
}
