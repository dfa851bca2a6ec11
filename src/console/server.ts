/**
 * `cowstream console`: the web console on loopback, with the catalogue API
 * proxied behind it. For an API Gateway catalogue the proxy signs each call
 * with the user's AWS credentials (SigV4, as the CLI does), so no AWS
 * credential ever reaches the browser; for an embedded catalogue it adds the
 * catalogue's bearer token.
 *
 * Other local users can reach a loopback port too, so the proxy itself
 * demands a random per-run token (`Authorization: Bearer`), handed to the
 * page in the URL fragment (fragments never reach a server or its logs). The
 * Host header must name the loopback address: a DNS-rebinding page on a
 * foreign name is refused before the token is even looked at.
 */
import { randomBytes } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { AwsCredentialIdentity, AwsCredentialIdentityProvider } from '@smithy/types';
import { CatalogError, UsageError, describeError } from '../errors.js';
import { MAX_BODY_BYTES } from '../catalog/api.js';
import { tokenDigest, tokenMatches } from '../catalog/bearer-auth.js';
import { catalogEndpoint, defaultAwsCredentials, signRequest } from '../catalog/client.js';
import { loadConsoleAssets, serveConsoleAsset, type ConsoleAssets } from './assets.js';

/** The catalogue API's top-level resources (src/catalog/api.ts); nothing else is forwarded. */
const API_PATH = /^\/(?:archives|restores|hosts)(?:\/[^/]+)*$/;
const API_METHODS = new Set(['GET', 'POST', 'DELETE']);
/** A page of 500 archives is ~0.5 MiB of JSON; a larger answer is not the catalogue's. */
const MAX_UPSTREAM_BYTES = 8 * 1024 * 1024;
const UPSTREAM_TIMEOUT_MS = 30_000;

export interface ConsoleServerOptions {
  /** The catalogue API's base URL (embedded `http://127.0.0.1:PORT` or an execute-api URL with its stage). */
  catalogUrl: string;
  /** Bearer token of an embedded catalogue; never sent to a signed (AWS) catalogue. */
  catalogToken?: string;
  /** 'auto' (default): sign only execute-api URLs, like CatalogClient. */
  sign?: 'auto' | 'always' | 'never';
  region?: string;
  credentials?: AwsCredentialIdentity | AwsCredentialIdentityProvider;
  /** Loopback port, 0 (default) = ephemeral. */
  port?: number;
  assets?: ConsoleAssets;
  /** The per-run token; random when absent (tests pass their own). */
  token?: string;
}

export interface ConsoleServer {
  /** http://127.0.0.1:PORT */
  readonly url: string;
  /** The URL to open: the page with the per-run token in its fragment. */
  readonly pageUrl: string;
  readonly token: string;
  close(): Promise<void>;
}

/** Constant-time check of `Authorization: Bearer <token>` against the token's digest (so lengths never leak). */
function bearerMatches(header: string | undefined, expectedDigest: Buffer): boolean {
  const m = /^Bearer ([^\s]+)$/.exec(header ?? '');
  return m !== null && tokenMatches(m[1]!, expectedDigest);
}

function sendJson(res: ServerResponse, status: number, body: unknown, extra: Record<string, string> = {}): void {
  res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store', 'x-content-type-options': 'nosniff', ...extra });
  res.end(JSON.stringify(body));
}

const sendError = (res: ServerResponse, status: number, code: string, message: string, extra?: Record<string, string>): void =>
  sendJson(res, status, { error: { code, message } }, extra);

class TooLarge extends Error {}

async function readCapped(chunks: AsyncIterable<Uint8Array> | Iterable<Uint8Array>, max: number): Promise<Buffer> {
  const parts: Buffer[] = [];
  let total = 0;
  for await (const c of chunks) {
    total += c.length;
    if (total > max) throw new TooLarge();
    parts.push(Buffer.from(c));
  }
  return Buffer.concat(parts);
}

export async function startConsoleServer(opts: ConsoleServerOptions): Promise<ConsoleServer> {
  const { baseUrl, region } = catalogEndpoint({ url: opts.catalogUrl, sign: opts.sign, region: opts.region });
  let credentials = opts.credentials;
  const resolveCredentials = async (): Promise<AwsCredentialIdentity | AwsCredentialIdentityProvider> => (credentials ??= await defaultAwsCredentials());
  const token = opts.token ?? randomBytes(32).toString('base64url');
  const tokenSha = tokenDigest(token);
  const assets = opts.assets ?? loadConsoleAssets();
  let allowedHosts = new Set<string>();

  const proxy = async (req: IncomingMessage, res: ServerResponse, path: string, search: string): Promise<void> => {
    const method = req.method ?? 'GET';
    if (!API_METHODS.has(method)) return sendError(res, 405, 'METHOD_NOT_ALLOWED', `${method} is not allowed on ${path}`);
    let body: Buffer;
    try {
      body = await readCapped(req, MAX_BODY_BYTES);
    } catch (err) {
      if (err instanceof TooLarge) return sendError(res, 413, 'USAGE', `body larger than ${MAX_BODY_BYTES} bytes`);
      throw err;
    }
    const url = new URL(baseUrl + path + search);
    const payload = body.length > 0 ? body.toString('utf8') : undefined;
    // Only these headers reach the catalogue: nothing the browser sent (cookies, the run token) is forwarded.
    let headers: Record<string, string> = { accept: 'application/json', ...(payload !== undefined ? { 'content-type': 'application/json' } : {}) };
    if (region !== null) {
      headers = await signRequest({ method, url, headers, body: payload }, region, await resolveCredentials());
      delete headers.host; // fetch sets Host itself
    } else if (opts.catalogToken) {
      headers.authorization = `Bearer ${opts.catalogToken}`;
    }
    let upstream: Response;
    let text: Buffer;
    try {
      upstream = await fetch(url, { method, headers, body: payload, redirect: 'manual', signal: AbortSignal.timeout(UPSTREAM_TIMEOUT_MS) });
      text = await readCapped(upstream.body ?? [], MAX_UPSTREAM_BYTES);
    } catch (err) {
      const why = err instanceof TooLarge ? `answered more than ${MAX_UPSTREAM_BYTES} bytes` : describeError(new CatalogError('unreachable', { cause: err }));
      return sendError(res, 502, 'BAD_GATEWAY', `catalogue ${url.origin}: ${why}`);
    }
    const type = upstream.headers.get('content-type') ?? '';
    // The page only ever parses JSON; anything else (an HTML error page of a load balancer) is relabelled so it is never rendered.
    res.writeHead(upstream.status, {
      'content-type': type.startsWith('application/json') ? 'application/json' : 'text/plain; charset=utf-8',
      'cache-control': 'no-store',
      'x-content-type-options': 'nosniff',
    });
    res.end(text);
  };

  const listener = (req: IncomingMessage, res: ServerResponse): void => {
    void (async () => {
      if (!allowedHosts.has(req.headers.host ?? '')) return sendError(res, 421, 'MISDIRECTED', 'this console answers only on its loopback address');
      if (serveConsoleAsset(assets, req, res)) return;
      const url = new URL(req.url ?? '/', 'http://localhost');
      if (!API_PATH.test(url.pathname)) return sendError(res, 404, 'NOT_FOUND', `no route ${req.method} ${url.pathname}`);
      if (!bearerMatches(req.headers.authorization, tokenSha)) {
        return sendError(res, 401, 'UNAUTHORIZED', 'the console token is missing or wrong: open the link cowstream console printed', { 'www-authenticate': 'Bearer' });
      }
      await proxy(req, res, url.pathname, url.search);
    })().catch((err: unknown) => {
      if (!res.headersSent) sendError(res, 500, 'INTERNAL', describeError(err));
      else res.destroy();
    });
  };

  const server: Server = createServer(listener);
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err) => reject(new UsageError(`console cannot listen on 127.0.0.1:${opts.port ?? 0}: ${err.message}`, { cause: err })));
    server.listen(opts.port ?? 0, '127.0.0.1', () => resolve());
  });
  const port = (server.address() as AddressInfo).port;
  allowedHosts = new Set([`127.0.0.1:${port}`, `localhost:${port}`]);
  const url = `http://127.0.0.1:${port}`;
  return {
    url,
    pageUrl: `${url}/#token=${token}`,
    token,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
