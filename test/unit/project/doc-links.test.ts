/**
 * Every reference in the docs, the help texts and the source comments
 * resolves inside the repository: markdown links (and their #anchors) and
 * `docs/….md` paths named in code.
 */
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';

const ROOT = resolve(import.meta.dirname, '../../..');

function listFiles(dir: string, pattern: RegExp): string[] {
  if (!existsSync(join(ROOT, dir))) return [];
  return readdirSync(join(ROOT, dir), { withFileTypes: true, recursive: true })
    .filter((e) => e.isFile() && pattern.test(e.name))
    .map((e) => relative(ROOT, join(e.parentPath, e.name)));
}

/** GitHub's heading anchors: lower case, punctuation dropped, spaces to dashes. */
function anchorsOf(markdown: string): Set<string> {
  const out = new Set<string>();
  let fence = false;
  for (const line of markdown.split('\n')) {
    if (line.startsWith('```')) fence = !fence;
    const m = !fence && /^#{1,6}\s+(.*)$/.exec(line);
    if (m) out.add(m[1]!.trim().toLowerCase().replace(/[^\p{L}\p{N} _-]/gu, '').replace(/ /g, '-'));
  }
  return out;
}

function brokenLinks(file: string): string[] {
  const text = readFileSync(join(ROOT, file), 'utf8').replace(/```[\s\S]*?```/g, '');
  const broken: string[] = [];
  for (const m of text.matchAll(/\]\(([^)\s]+)\)/g)) {
    const target = m[1]!;
    if (/^[a-z]+:/i.test(target)) continue; // http:, https:, mailto:
    const [path, anchor] = target.split('#') as [string, string | undefined];
    const abs = path === '' ? join(ROOT, file) : resolve(dirname(join(ROOT, file)), path);
    if (!existsSync(abs)) broken.push(`${file}: ${target} (no such file)`);
    else if (anchor && abs.endsWith('.md') && !anchorsOf(readFileSync(abs, 'utf8')).has(anchor)) {
      broken.push(`${file}: ${target} (no such heading)`);
    }
  }
  return broken;
}

describe('references resolve inside the repository', () => {
  it('markdown links in README.md and docs/', () => {
    const files = ['README.md', ...listFiles('docs', /\.md$/)];
    expect(files.length).toBeGreaterThan(5);
    expect(files.flatMap(brokenLinks)).toEqual([]);
  });

  it('docs/ paths named in source, help texts and comments', () => {
    const sources = ['src', 'lambda', 'infra', 'cdk', 'bench', 'scripts', 'bin', '.ci'].flatMap((d) => listFiles(d, /\.(ts|mts|mjs|js)$|^run$/));
    const broken: string[] = [];
    for (const file of sources) {
      const text = readFileSync(join(ROOT, file), 'utf8');
      for (const m of text.matchAll(/(?<![\w/])docs\/[\w./-]*\w/g)) {
        if (!existsSync(join(ROOT, m[0]))) broken.push(`${file}: ${m[0]}`);
      }
      for (const m of text.matchAll(/(?<![\w.])\/work\/[\w./-]+/g)) broken.push(`${file}: ${m[0]} (outside the repository)`);
    }
    expect(broken).toEqual([]);
  });
});
