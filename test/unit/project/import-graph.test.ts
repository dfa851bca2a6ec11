/**
 * The import graph follows the data path: device → cbw → codec/format →
 * store → restore → catalog, with the agent, QEMU and the CLI on top. No
 * module imports one of a later stage, nothing outside src/cli imports the
 * CLI, and there are no import cycles.
 */
import { readFileSync, readdirSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';

const ROOT = resolve(import.meta.dirname, '../../..');
const SOURCE_DIRS = ['src', 'lambda', 'infra', 'cdk'];

/** Rank of each top-level unit: a module may import only units of a lower or equal rank. */
const RANK: Record<string, number> = {
  'src/errors.ts': 0,
  'src/units.ts': 0,
  'src/names.ts': 0,
  'src/zod-issues.ts': 0,
  'src/log.ts': 0,
  'src/device': 1,
  'src/nbd': 2,
  'src/cbw': 3,
  'src/codec': 4,
  'src/format': 5,
  'src/store': 6,
  'src/restore': 7,
  'src/backup': 8,
  'src/serve': 8,
  'src/catalog': 8,
  'src/console': 8,
  'src/qemu': 9,
  'src/agent': 10,
  lambda: 11,
  infra: 11,
  'src/cli': 12,
  cdk: 13,
};

function listSources(dir: string): string[] {
  return readdirSync(join(ROOT, dir), { withFileTypes: true, recursive: true })
    .filter((e) => e.isFile() && /\.(ts|mts|mjs)$/.test(e.name) && !e.name.endsWith('.d.ts'))
    .map((e) => relative(ROOT, join(e.parentPath, e.name)));
}

/** Relative imports of a file: static (`import`/`export … from`) and, separately, dynamic. */
function importsOf(file: string): { staticDeps: string[]; dynamicDeps: string[] } {
  const text = readFileSync(join(ROOT, file), 'utf8');
  const resolveSpec = (spec: string): string => relative(ROOT, resolve(dirname(join(ROOT, file)), spec)).replace(/\.js$/, '.ts');
  const staticDeps = [...text.matchAll(/^\s*(?:import|export)\s[^;]*?from\s+'(\.[^']+)'/gms)].map((m) => resolveSpec(m[1]!));
  const dynamicDeps = [...text.matchAll(/import\(\s*'(\.[^']+)'\s*\)/g)].map((m) => resolveSpec(m[1]!));
  return { staticDeps, dynamicDeps };
}

function unitOf(file: string): string {
  const parts = file.split('/');
  if (parts[0] !== 'src') return parts[0]!;
  return parts.length === 2 ? file : `src/${parts[1]}`;
}

const files = SOURCE_DIRS.flatMap(listSources);
const graph = new Map(files.map((f) => [f, importsOf(f)]));

describe('import graph', () => {
  it('knows the rank of every unit', () => {
    const unknown = [...new Set(files.map(unitOf))].filter((u) => RANK[u] === undefined);
    expect(unknown).toEqual([]);
  });

  it('imports only from the same or an earlier stage, and never the CLI from outside it', () => {
    const backward: string[] = [];
    for (const [file, { staticDeps, dynamicDeps }] of graph) {
      for (const dep of [...staticDeps, ...dynamicDeps]) {
        const from = RANK[unitOf(file)]!;
        const to = RANK[unitOf(dep)];
        if (to === undefined || to > from) backward.push(`${file} → ${dep}`);
      }
    }
    expect(backward).toEqual([]);
  });

  it('has no import cycles (a lazy import( ) counts too)', () => {
    const cycles: string[] = [];
    const state = new Map<string, 'open' | 'done'>();
    const stack: string[] = [];
    const visit = (f: string): void => {
      state.set(f, 'open');
      stack.push(f);
      const deps = graph.get(f);
      for (const dep of [...(deps?.staticDeps ?? []), ...(deps?.dynamicDeps ?? [])]) {
        if (state.get(dep) === 'open') cycles.push([...stack.slice(stack.indexOf(dep)), dep].join(' → '));
        else if (!state.has(dep)) visit(dep);
      }
      stack.pop();
      state.set(f, 'done');
    };
    for (const f of graph.keys()) if (!state.has(f)) visit(f);
    expect(cycles).toEqual([]);
  });
});
