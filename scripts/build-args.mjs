/**
 * The command line of the build scripts (bundle-cli.mjs, build-web.mjs):
 * `[--outdir DIR] [--optional]`. Throws on anything else, naming the script
 * in the usage line.
 */
import { resolve } from 'node:path';

/** `script` names the script in the usage message; `outdir` is the default output directory. */
export function parseBuildArgs(argv, { script, outdir }) {
  const opts = { outdir, optional: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--optional') opts.optional = true;
    else if (a === '--outdir' && i + 1 < argv.length) opts.outdir = resolve(argv[++i]);
    else if (a.startsWith('--outdir=')) opts.outdir = resolve(a.slice('--outdir='.length));
    else throw new Error(`unknown argument ${a} (usage: ${script} [--outdir DIR] [--optional])`);
  }
  return opts;
}
