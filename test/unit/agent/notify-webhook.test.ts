/**
 * postWebhook against a real HTTP server that echoes what it was sent in its
 * error body, as Express's default 404 page ("Cannot POST /path") and many
 * proxies do: the body is logged, so it must not carry the secrets of the
 * request (the URL path and query, the bearer token, configured header values).
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { postWebhook } from '../../../src/agent/notify-webhook.js';

let server: Server;
let port: number;

beforeAll(async () => {
  server = createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      // A 2xx whose body never ends: the status is the answer.
      if (req.url === '/slow-ok') {
        res.writeHead(200, { 'content-type': 'text/plain' });
        res.write('accepted, still thinking');
        return undefined;
      }
      res.writeHead(404, { 'content-type': 'text/html' });
      // A body whose first 512 bytes (what is kept) end inside the token.
      if (req.url?.startsWith('/long/')) return res.end(`${'x'.repeat(500)}${req.headers.authorization ?? ''}`);
      return res.end(`<pre>Cannot POST ${req.url}</pre> auth=${req.headers.authorization ?? ''} key=${req.headers['x-api-key'] ?? ''}`);
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  port = (server.address() as AddressInfo).port;
});
afterAll(async () => {
  server.closeAllConnections();
  await new Promise<void>((r) => server.close(() => r()));
});

describe('postWebhook', () => {
  it('logs an error body without the URL path and query, the bearer token or header values it echoes', async () => {
    const url = new URL(`http://127.0.0.1:${port}/hooks/T0/B0/PathSecret42?sig=QuerySecret43`);
    const r = await postWebhook(
      { url, headers: { 'x-api-key': 'HeaderSecret44' }, token: 'TokenSecret45', timeoutMs: 5_000 },
      '{}',
      'test',
      new AbortController().signal,
    );
    expect(r.ok).toBe(false);
    if (r.ok) return;
    expect(r.error).toMatch(/^HTTP 404/);
    expect(r.error).toContain('Cannot POST'); // the body is still useful
    for (const secret of ['PathSecret42', 'QuerySecret43', 'TokenSecret45', 'HeaderSecret44']) expect(r.error).not.toContain(secret);
  });

  it('a 2xx is a success at once, even when its body never ends (no timeout, no retry, no duplicate)', async () => {
    const r = await postWebhook({ url: new URL(`http://127.0.0.1:${port}/slow-ok`), headers: {}, timeoutMs: 1_000 }, '{}', 'test', new AbortController().signal);
    expect(r).toEqual({ ok: true, fields: { status: 200 } });
  });

  it('cuts a token that straddles the end of the kept part of the body', async () => {
    const token = 'TokenSecret46abcdefghijklmnop';
    const r = await postWebhook({ url: new URL(`http://127.0.0.1:${port}/long/`), headers: {}, token, timeoutMs: 5_000 }, '{}', 'test', new AbortController().signal);
    expect(r.ok).toBe(false);
    if (r.ok) return;
    expect(r.error).toContain('xxxx');
    expect(r.error).not.toContain('TokenSec');
    expect(r.error).not.toContain('Bearer Tok');
  });
});
