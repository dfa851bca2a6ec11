/**
 * The console's server side: the static build served next to the embedded
 * catalogue's API (only files that were in the build, with a strict CSP),
 * and `cowstream console`'s loopback proxy — which demands its per-run token,
 * refuses foreign Host names (DNS rebinding), forwards only the catalogue
 * API, adds the catalogue's bearer token or a SigV4 signature checked here
 * with an independent signer, and never forwards what the browser sent.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { mkdir, symlink, truncate, writeFile } from 'node:fs/promises';
import { createServer, request, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { SignatureV4 } from '@smithy/signature-v4';
import { startEmbeddedCatalog, type EmbeddedCatalog } from '../../src/catalog/embedded.js';
import { NodeSha256 } from '../../src/store/node-sha256.js';
import { ConsoleBuildError, loadConsoleAssets, MAX_CONSOLE_BYTES, type ConsoleAssets } from '../../src/console/assets.js';
import { startConsoleServer, type ConsoleServer } from '../../src/console/server.js';
import { startEmbeddedS3, type EmbeddedS3 } from '../../src/store/embedded-s3.js';
import { CLI, makeTempDir } from '../helpers/agent-process.js';

interface Reply {
  status: number;
  headers: IncomingHttpHeaders;
  body: string;
}

function httpCall(port: number, path: string, opts: { method?: string; headers?: Record<string, string>; body?: string | Buffer } = {}): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path, method: opts.method ?? 'GET', headers: { host: `127.0.0.1:${port}`, ...opts.headers } }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString('utf8') }));
    });
    req.on('error', reject);
    req.end(opts.body);
  });
}

interface Seen {
  method: string;
  url: string;
  headers: IncomingHttpHeaders;
  body: string;
}

let tmp: { dir: string; cleanup(): Promise<void> };
let build: string;
let assets: ConsoleAssets;
let s3: EmbeddedS3;
let cat: EmbeddedCatalog;
let upstream: Server;
let upstreamUrl: string;
const seen: Seen[] = [];

beforeAll(async () => {
  tmp = await makeTempDir('cowstream-console-srv-');
  build = join(tmp.dir, 'web');
  await mkdir(join(build, 'assets'), { recursive: true });
  await writeFile(join(build, 'index.html'), '<!doctype html><title>console</title><script type="module" src="./assets/app-1a2b.js"></script>');
  await writeFile(join(build, 'assets', 'app-1a2b.js'), 'console.log("app");');
  await writeFile(join(tmp.dir, 'secret.txt'), 'not for the web');
  await symlink(join(tmp.dir, 'secret.txt'), join(build, 'assets', 'leak.js'));
  assets = loadConsoleAssets(build);

  s3 = await startEmbeddedS3({ dir: join(tmp.dir, 's3') });
  cat = await startEmbeddedCatalog({ stateDir: join(tmp.dir, 'state'), s3, logger: 'quiet', console: assets });

  upstream = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      seen.push({ method: req.method!, url: req.url!, headers: req.headers, body: Buffer.concat(chunks).toString('utf8') });
      if (req.url!.includes('html')) {
        res.writeHead(502, { 'content-type': 'text/html' });
        res.end('<script>alert(1)</script>');
      } else {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ items: [], echo: req.url }));
      }
    });
  });
  await new Promise<void>((r) => upstream.listen(0, '127.0.0.1', () => r()));
  upstreamUrl = `http://127.0.0.1:${(upstream.address() as AddressInfo).port}`;
});

afterAll(async () => {
  await cat?.close();
  await s3?.close();
  await new Promise((r) => upstream?.close(r));
  await tmp?.cleanup();
});

describe('console assets next to the embedded catalogue API', () => {
  it('serves the build at / with the console CSP, hashed assets as immutable, and the API beside it', async () => {
    const page = await httpCall(cat.port, '/');
    expect(page.status).toBe(200);
    expect(page.headers['content-type']).toBe('text/html; charset=utf-8');
    expect(page.body).toContain('<title>console</title>');
    expect(page.headers['content-security-policy']).toMatch(/default-src 'none'; script-src 'self'.*connect-src 'self'.*frame-ancestors 'none'/);
    expect(page.headers['x-frame-options']).toBe('DENY');
    const js = await httpCall(cat.port, '/assets/app-1a2b.js');
    expect(js.headers['content-type']).toBe('text/javascript; charset=utf-8');
    expect(js.headers['cache-control']).toContain('immutable');
    const again = await httpCall(cat.port, '/', { headers: { 'if-none-match': page.headers.etag! } });
    expect(again.status).toBe(304);
    const head = await httpCall(cat.port, '/index.html', { method: 'HEAD' });
    expect(head.status).toBe(200);
    expect(head.body).toBe('');
    // The API beside the page keeps its bearer token.
    expect((await httpCall(cat.port, '/hosts')).status).toBe(401);
    const api = await httpCall(cat.port, '/hosts', { headers: { authorization: `Bearer ${cat.token}` } });
    expect(api.status).toBe(200);
    expect(JSON.parse(api.body)).toEqual({ items: [] });
  });

  it('never serves a file that was not a regular file of the build (symlinks, traversal)', async () => {
    for (const path of ['/assets/leak.js', '/../secret.txt', '/assets/../../secret.txt', '/%2e%2e/secret.txt', '/assets/%2e%2e/%2e%2e/secret.txt']) {
      // What is not a file of the build goes to the API: 401 without the token, 404 with it.
      expect((await httpCall(cat.port, path)).body, path).not.toContain('not for the web');
      const r = await httpCall(cat.port, path, { headers: { authorization: `Bearer ${cat.token}` } });
      expect(r.body, path).not.toContain('not for the web');
      expect(r.status, path).toBe(404);
      expect(r.headers['content-type'], path).toBe('application/json');
    }
  });

  it('without a build, / says how to build it; a directory too large to be a build is refused', async () => {
    const none = loadConsoleAssets(join(tmp.dir, 'nothing'));
    expect(none.dir).toBeNull();
    expect(none.files.get('/')!.body.toString()).toContain('npm run build:web');
    const big = join(tmp.dir, 'big');
    await mkdir(big);
    await writeFile(join(big, 'index.html'), '<!doctype html>');
    await writeFile(join(big, 'huge.js'), '');
    await truncate(join(big, 'huge.js'), MAX_CONSOLE_BYTES + 1); // sparse: the size is refused before anything is read
    expect(() => loadConsoleAssets(big)).toThrow(ConsoleBuildError);
  });
});

describe('cowstream console: the loopback proxy', () => {
  let srv: ConsoleServer;
  const catalogToken = 'catalogue-token-abcdefghijklmnop';
  beforeAll(async () => {
    srv = await startConsoleServer({ catalogUrl: `${upstreamUrl}/prod`, catalogToken, assets });
  });
  afterAll(async () => srv?.close());
  const auth = (): Record<string, string> => ({ authorization: `Bearer ${srv.token}` });

  it('prints a page URL whose fragment holds a fresh random token', async () => {
    expect(srv.pageUrl).toBe(`${srv.url}/#token=${srv.token}`);
    expect(srv.token).toMatch(/^[A-Za-z0-9_-]{43}$/);
    const other = await startConsoleServer({ catalogUrl: upstreamUrl, assets });
    expect(other.token).not.toBe(srv.token);
    await other.close();
  });

  it('refuses API calls without the run token or with a wrong one, before reaching the catalogue', async () => {
    const port = Number(new URL(srv.url).port);
    const before = seen.length;
    for (const headers of [{}, { authorization: 'Bearer wrong' }, { authorization: `Bearer ${srv.token}x` }, { authorization: srv.token }, { cookie: `token=${srv.token}` }] as Array<Record<string, string>>) {
      const r = await httpCall(port, '/hosts', { headers });
      expect(r.status, JSON.stringify(headers)).toBe(401);
      expect(r.headers['www-authenticate']).toBe('Bearer');
    }
    expect(seen.length).toBe(before);
    // The page itself holds no data and needs no token.
    expect((await httpCall(port, '/')).status).toBe(200);
  });

  it('refuses a foreign Host name (a DNS-rebinding page), even with the token', async () => {
    const port = Number(new URL(srv.url).port);
    for (const host of [`evil.example:${port}`, 'evil.example', `127.0.0.1:${port + 1}`]) {
      const r = await httpCall(port, '/hosts', { headers: { ...auth(), host } });
      expect(r.status, host).toBe(421);
      expect((await httpCall(port, '/', { headers: { host } })).status, host).toBe(421);
    }
    expect((await httpCall(port, '/hosts', { headers: { ...auth(), host: `localhost:${port}` } })).status).toBe(200);
  });

  it('forwards only the catalogue API, with the catalogue token and nothing the browser sent', async () => {
    const port = Number(new URL(srv.url).port);
    seen.length = 0;
    const r = await httpCall(port, '/archives?host=h1&limit=5', { headers: { ...auth(), cookie: 'session=1', 'x-forwarded-for': '1.2.3.4' } });
    expect(r.status).toBe(200);
    expect(JSON.parse(r.body).echo).toBe('/prod/archives?host=h1&limit=5');
    expect(seen[0]!.headers.authorization).toBe(`Bearer ${catalogToken}`);
    expect(seen[0]!.headers.cookie).toBeUndefined();
    expect(seen[0]!.headers['x-forwarded-for']).toBeUndefined();

    const post = await httpCall(port, '/restores', { method: 'POST', headers: { ...auth(), 'content-type': 'application/json' }, body: '{"archiveId":"x"}' });
    expect(post.status).toBe(200);
    expect(seen[1]).toMatchObject({ method: 'POST', url: '/prod/restores', body: '{"archiveId":"x"}' });

    const n = seen.length;
    for (const [method, path, status] of [
      ['GET', '/', 200],
      ['GET', '/admin', 404],
      ['GET', '/prod/hosts', 404],
      ['GET', '/hostsx', 404],
      ['GET', '/hosts/%2e%2e/%2e%2e/admin', 404],
      ['PUT', '/archives/x', 405],
      ['PATCH', '/hosts', 405],
    ] as const) {
      expect((await httpCall(port, path, { method, headers: auth() })).status, `${method} ${path}`).toBe(status);
    }
    expect(seen.length).toBe(n);
    const big = await httpCall(port, '/restores', { method: 'POST', headers: auth(), body: Buffer.alloc(64 * 1024 + 1, 0x20) });
    expect(big.status).toBe(413);
    expect(seen.length).toBe(n);
  });

  it('relabels a non-JSON answer as text so the page can never render it', async () => {
    const port = Number(new URL(srv.url).port);
    const r = await httpCall(port, '/hosts/html', { headers: auth() });
    expect(r.status).toBe(502);
    expect(r.headers['content-type']).toBe('text/plain; charset=utf-8');
    expect(r.headers['x-content-type-options']).toBe('nosniff');
  });

  it('AWS mode: signs each call with SigV4 (verified independently) and never sends a bearer token', async () => {
    const credentials = { accessKeyId: 'AKIDCONSOLETEST', secretAccessKey: 'console-secret-key' };
    const signed = await startConsoleServer({ catalogUrl: `${upstreamUrl}/prod`, sign: 'always', region: 'eu-west-1', credentials, catalogToken, assets });
    try {
      const port = Number(new URL(signed.url).port);
      seen.length = 0;
      const body = '{"archiveId":"0191d0a8-0000-7000-8000-000000000000","hostId":"h1","target":{"path":"/r/x.raw"}}';
      const r = await httpCall(port, '/restores?x=1', { method: 'POST', headers: { authorization: `Bearer ${signed.token}` }, body });
      expect(r.status).toBe(200);
      const got = seen[0]!;
      const authz = String(got.headers.authorization);
      expect(authz).toMatch(/^AWS4-HMAC-SHA256 Credential=AKIDCONSOLETEST\/\d{8}\/eu-west-1\/execute-api\/aws4_request, SignedHeaders=[^,]+, Signature=[0-9a-f]{64}$/);
      expect(authz).not.toContain(catalogToken);
      // Recompute the signature from what arrived, with the headers the request says it signed.
      const signedNames = /SignedHeaders=([^,]+)/.exec(authz)![1]!.split(';');
      const headers: Record<string, string> = {};
      for (const n of signedNames) headers[n] = String(got.headers[n]);
      const amzDate = String(got.headers['x-amz-date']);
      const signingDate = new Date(`${amzDate.slice(0, 4)}-${amzDate.slice(4, 6)}-${amzDate.slice(6, 8)}T${amzDate.slice(9, 11)}:${amzDate.slice(11, 13)}:${amzDate.slice(13, 15)}Z`);
      const url = new URL(got.url, upstreamUrl);
      const verifier = new SignatureV4({ service: 'execute-api', region: 'eu-west-1', credentials, sha256: NodeSha256 });
      const expected = await verifier.sign(
        { method: got.method, protocol: 'http:', hostname: url.hostname, port: Number(url.port), path: url.pathname, query: { x: '1' }, headers, body: got.body },
        { signingDate },
      );
      expect(authz).toBe(expected.headers.authorization);
      expect(got.body).toBe(body);
    } finally {
      await signed.close();
    }
  });

  it('reaches a real embedded catalogue', async () => {
    const real = await startConsoleServer({ catalogUrl: cat.url, assets, catalogToken: cat.token });
    try {
      const r = await httpCall(Number(new URL(real.url).port), '/archives?limit=3', { headers: { authorization: `Bearer ${real.token}` } });
      expect(r.status).toBe(200);
      expect(JSON.parse(r.body)).toEqual({ items: [] });
      const bad = await httpCall(Number(new URL(real.url).port), '/archives?limit=x', { headers: { authorization: `Bearer ${real.token}` } });
      expect(bad.status).toBe(400);
      expect(JSON.parse(bad.body).error.message).toContain('limit');
    } finally {
      await real.close();
    }
  });

  it('`cowstream console --json` prints the page URL, serves it, and stops on SIGTERM', async () => {
    const child = spawn(process.execPath, [CLI, 'console', '--catalog', cat.url, '--catalog-token', cat.token, '--json'], { stdio: ['ignore', 'pipe', 'pipe'] });
    try {
      let out = '';
      await new Promise<void>((resolve, reject) => {
        child.stdout.on('data', (c: Buffer) => {
          out += c.toString();
          if (out.includes('}')) resolve();
        });
        child.once('exit', (code) => reject(new Error(`exited ${code}`)));
      });
      const { url } = JSON.parse(out) as { url: string };
      const m = /^http:\/\/127\.0\.0\.1:(\d+)\/#token=([A-Za-z0-9_-]+)$/.exec(url);
      expect(m).not.toBeNull();
      const port = Number(m![1]);
      expect((await httpCall(port, '/hosts')).status).toBe(401);
      expect((await httpCall(port, '/hosts', { headers: { authorization: `Bearer ${m![2]}` } })).status).toBe(200);
      const exited = new Promise<number | null>((r) => child.once('exit', r));
      child.kill('SIGTERM');
      expect(await exited).toBe(0);
    } finally {
      child.kill('SIGKILL');
    }
  });
});
