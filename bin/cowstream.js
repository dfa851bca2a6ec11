#!/usr/bin/env node
// Runs the CLI from the esbuild bundle in dist/cli (scripts/bundle-cli.mjs, run
// by npm's `prepare` and `npm run build`) when it was built from the sources as
// they are now: tsx's on-the-fly transpile roughly doubles start-up. Otherwise
// (no bundle, a source changed since, COWSTREAM_NO_BUNDLE=1) it runs src/
// through tsx as before, so `npm ci` alone is enough and an edit in src/ is
// never masked by a stale bundle.
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { dirname, join, resolve } from 'node:path';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');

// The project runs on the Node 24 that `npm ci` installs (the `node` dev
// dependency, docs/runtime.md). Started directly by an older system node
// (`./bin/cowstream.js` outside npm), it hands over to that Node instead of
// running on a runtime below package.json's engines.
const [major, minor] = process.versions.node.split('.').map(Number);
if (major < 22 || (major === 22 && minor < 15)) {
  const projectNode = join(root, 'node_modules', '.bin', 'node');
  if (statSync(projectNode, { throwIfNoEntry: false }) && process.env.COWSTREAM_REEXEC !== '1') {
    const { spawn } = await import('node:child_process');
    const child = spawn(projectNode, process.argv.slice(1), { stdio: 'inherit', env: { ...process.env, COWSTREAM_REEXEC: '1' } });
    for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) process.on(sig, () => child.kill(sig));
    child.on('exit', (code, signal) => {
      if (signal) {
        process.removeAllListeners(signal);
        process.kill(process.pid, signal);
      }
      else process.exit(code ?? 1);
    });
    await new Promise(() => {});
  }
}
// Tests point this at a bundle they built elsewhere, leaving dist/cli alone
// for the CLIs other tests run at the same time.
const bundleDir = resolve(root, process.env.COWSTREAM_BUNDLE_DIR || join('dist', 'cli'));

/** Why the bundle cannot be used, or null when it can. */
function staleReason() {
  if (process.env.COWSTREAM_NO_BUNDLE === '1') return 'COWSTREAM_NO_BUNDLE=1';
  let manifest;
  try {
    manifest = JSON.parse(readFileSync(join(bundleDir, 'inputs.json'), 'utf8'));
  } catch {
    return 'no bundle';
  }
  if (manifest?.version !== 1 || !statSync(join(bundleDir, 'main.js'), { throwIfNoEntry: false })) return 'incomplete bundle';
  // Any change of mtime or size counts, not only "newer": a checkout or
  // `cp -p` can give an edited file an older time than the bundle.
  for (const [path, built] of Object.entries(manifest.inputs)) {
    const st = statSync(resolve(root, path), { throwIfNoEntry: false });
    if (!st || st.mtimeMs !== built.mtimeMs || st.size !== built.size) return `${path} changed`;
  }
  // A new source file beside a bundled one could change how an import
  // resolves without touching any listed input.
  const sourceName = new RegExp(manifest.sourceName);
  for (const [dir, built] of Object.entries(manifest.dirs)) {
    let names;
    try {
      names = readdirSync(resolve(root, dir)).filter((n) => sourceName.test(n)).sort();
    } catch {
      return `${dir} missing`;
    }
    if (names.length !== built.length || names.some((n, i) => n !== built[i])) return `files added or removed in ${dir}`;
  }
  return null;
}

const reason = staleReason();
const debug = process.env.COWSTREAM_DEBUG_LOADER === '1';
let mod;
if (reason === null) {
  if (debug) process.stderr.write('cowstream: loader bundle\n');
  // Stack traces then name src/ files; only on request, as it costs start-up time.
  if (process.env.COWSTREAM_DEBUG) process.setSourceMapsEnabled(true);
  mod = await import(pathToFileURL(join(bundleDir, 'main.js')).href);
} else {
  if (debug) process.stderr.write(`cowstream: loader tsx (${reason})\n`);
  const { register } = await import('tsx/esm/api');
  register();
  mod = await import(pathToFileURL(join(root, 'src', 'cli', 'main.ts')).href);
}
await mod.main(process.argv);
