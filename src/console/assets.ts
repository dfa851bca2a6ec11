/**
 * The built web console (dist/web, made by `npm run build:web`) served as
 * static files. Assets hold no catalogue data, so they are served without
 * authentication; every data call the page makes carries the bearer token.
 *
 * The whole build is read into memory once: it is small (bounded below), and
 * a request can then only ever name a file that was in the build — no path
 * from a request touches the file system (no `..`, no symlink races).
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { createHash } from 'node:crypto';
import { existsSync, lstatSync, readdirSync, readFileSync } from 'node:fs';
import { dirname, extname, join, relative, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import { CowstreamError } from '../errors.js';

/** A console build is ~150 KiB; anything far larger is not one. */
export const MAX_CONSOLE_BYTES = 16 * 1024 * 1024;
const MAX_CONSOLE_FILES = 500;

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.ico': 'image/x-icon',
  '.json': 'application/json',
  '.txt': 'text/plain; charset=utf-8',
  '.map': 'application/json',
};

/**
 * The page may load only its own scripts and styles and talk only to its own
 * origin; nothing may frame it (clickjacking a Delete button).
 */
const CONSOLE_CSP =
  "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self'; connect-src 'self'; " +
  "base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

const CONSOLE_SECURITY_HEADERS: Readonly<Record<string, string>> = {
  'content-security-policy': CONSOLE_CSP,
  'x-content-type-options': 'nosniff',
  'x-frame-options': 'DENY',
  'referrer-policy': 'no-referrer',
  'cross-origin-opener-policy': 'same-origin',
  'cross-origin-resource-policy': 'same-origin',
};

export class ConsoleBuildError extends CowstreamError {
  override readonly code: string = 'CONSOLE_BUILD';
}

interface Asset {
  body: Buffer;
  type: string;
  etag: string;
  /** Vite names assets by content hash: they never change under one name. */
  immutable: boolean;
}

export interface ConsoleAssets {
  /** Where the build was read from; null when there was none. */
  readonly dir: string | null;
  readonly files: ReadonlyMap<string, Asset>;
}

/** The package root: the nearest ancestor of this module with a package.json (works from src/, dist/src/ and the dist/cli bundle). */
function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(join(dir, 'package.json'))) return dir;
    const up = dirname(dir);
    if (up === dir) throw new ConsoleBuildError('cannot find the cowstream package root');
    dir = up;
  }
}

function defaultConsoleDir(): string {
  return join(packageRoot(), 'dist', 'web');
}

const NOT_BUILT_PAGE = Buffer.from(
  '<!doctype html><meta charset="utf-8"><title>cowstream console</title>' +
    '<p>The cowstream console is not built. Run <code>npm run build:web</code> (or <code>npm ci</code>) in the cowstream directory.</p>\n',
);

/** Reads a console build into memory. A missing build gives a placeholder page, never an error. */
export function loadConsoleAssets(dir: string = defaultConsoleDir()): ConsoleAssets {
  if (!existsSync(join(dir, 'index.html'))) {
    const etag = `"${createHash('sha256').update(NOT_BUILT_PAGE).digest('hex').slice(0, 16)}"`;
    return { dir: null, files: new Map([['/', { body: NOT_BUILT_PAGE, type: TYPES['.html']!, etag, immutable: false }]]) };
  }
  const files = new Map<string, Asset>();
  let total = 0;
  const walk = (d: string): void => {
    for (const name of readdirSync(d).sort()) {
      const p = join(d, name);
      const st = lstatSync(p);
      if (st.isDirectory()) walk(p);
      if (!st.isFile()) continue; // symlinks and devices are never part of a build
      const type = TYPES[extname(name)];
      if (!type || name.endsWith('.map')) continue;
      total += st.size;
      if (files.size >= MAX_CONSOLE_FILES || total > MAX_CONSOLE_BYTES) {
        throw new ConsoleBuildError(`${dir} is not a console build: more than ${MAX_CONSOLE_FILES} files or ${MAX_CONSOLE_BYTES} bytes`);
      }
      const body = readFileSync(p);
      const rel = '/' + relative(dir, p).split(sep).join('/');
      files.set(rel, {
        body,
        type,
        etag: `"${createHash('sha256').update(body).digest('hex').slice(0, 16)}"`,
        immutable: rel.startsWith('/assets/'),
      });
    }
  };
  walk(dir);
  files.set('/', files.get('/index.html')!);
  return { dir, files };
}

/**
 * Serves GET/HEAD of a console file and returns true, or returns false when
 * the request is not for one (the caller routes it to the API).
 */
export function serveConsoleAsset(assets: ConsoleAssets, req: IncomingMessage, res: ServerResponse): boolean {
  const method = req.method ?? 'GET';
  if (method !== 'GET' && method !== 'HEAD') return false;
  let path: string;
  try {
    path = new URL(req.url ?? '/', 'http://localhost').pathname;
  } catch {
    return false;
  }
  const asset = assets.files.get(path);
  if (!asset) return false;
  const headers: Record<string, string> = {
    ...CONSOLE_SECURITY_HEADERS,
    'content-type': asset.type,
    etag: asset.etag,
    'cache-control': asset.immutable ? 'public, max-age=31536000, immutable' : 'no-cache',
  };
  if (req.headers['if-none-match'] === asset.etag) {
    res.writeHead(304, headers);
    res.end();
    return true;
  }
  res.writeHead(200, { ...headers, 'content-length': String(asset.body.length) });
  res.end(method === 'HEAD' ? undefined : asset.body);
  return true;
}

type Listener = (req: IncomingMessage, res: ServerResponse) => void;

/** Console files first, everything else to `next` (the API, with its authentication). */
export function withConsole(assets: ConsoleAssets, next: Listener): Listener {
  return (req, res) => {
    if (!serveConsoleAsset(assets, req, res)) next(req, res);
  };
}
