/**
 * One webhook attempt: a JSON POST with node:http(s) — which never follows a
 * redirect (a 3xx is reported, not followed: the token must not travel to
 * wherever a Location header points) — bounded by a timeout that covers
 * connect, request and response.
 */
import { request as httpRequest, type IncomingMessage } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { describeError } from '../errors.js';
import type { AttemptResult } from './notify-queue.js';

/** Of a response body only the start is kept, for the log. */
const MAX_RESPONSE_SNIPPET = 512;
/** Parts of a request shorter than this are not cut out of a logged answer. */
const MIN_SECRET_CHARS = 4;

export interface WebhookTarget {
  url: URL;
  headers: Record<string, string>;
  /** Bearer token (read from the 0600 token file). */
  token?: string;
  timeoutMs: number;
}

/** What the log may say about a webhook: its origin, never the path or query (they often carry the secret, e.g. Slack URLs). */
export function webhookLabel(url: URL): string {
  return `webhook ${url.origin}`;
}

/** 408, 425, 429 and 5xx may succeed later; other 4xx will not. */
function retryable(status: number): boolean {
  return status === 408 || status === 425 || status === 429 || status >= 500;
}

export function postWebhook(t: WebhookTarget, body: string, userAgent: string, signal: AbortSignal): Promise<AttemptResult> {
  const send = t.url.protocol === 'https:' ? httpsRequest : httpRequest;
  return new Promise<AttemptResult>((resolve) => {
    let settled = false;
    const finish = (r: AttemptResult): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      signal.removeEventListener('abort', onAbort);
      req.destroy();
      resolve(r);
    };
    const req = send(t.url, {
      method: 'POST',
      agent: false,
      headers: {
        ...t.headers,
        'content-type': 'application/json',
        'content-length': Buffer.byteLength(body),
        'user-agent': userAgent,
        ...(t.token !== undefined ? { authorization: `Bearer ${t.token}` } : {}),
      },
    });
    const timer = setTimeout(() => finish({ ok: false, retry: true, error: `no answer within ${t.timeoutMs} ms` }), t.timeoutMs);
    const onAbort = (): void => finish({ ok: false, retry: false, error: `aborted: ${describeError(signal.reason)}` });
    signal.addEventListener('abort', onAbort, { once: true });
    req.on('error', (err) => finish({ ok: false, retry: true, error: describeError(err) }));
    req.on('response', (res: IncomingMessage) => {
      const status = res.statusCode ?? 0;
      // Delivered: the body of a 2xx is not needed, and waiting for its end would let
      // an endpoint that never ends it turn a delivery into a timeout and a duplicate retry.
      if (status >= 200 && status < 300) return finish({ ok: true, fields: { status } });
      const chunks: Buffer[] = [];
      let kept = 0;
      const done = (): void => {
        const snippet = withoutSecrets(Buffer.concat(chunks).toString('utf8'), t).replace(/\s+/g, ' ').trim();
        if (status >= 300 && status < 400) {
          const where = locationOrigin(res.headers.location, t.url);
          return finish({ ok: false, retry: false, error: `HTTP ${status} redirect${where ? ` to ${where}` : ''} not followed: configure the final URL`, fields: { status } });
        }
        finish({ ok: false, retry: retryable(status), error: `HTTP ${status}${snippet ? `: ${snippet}` : ''}`, fields: { status } });
      };
      res.on('data', (c: Buffer) => {
        if (kept < MAX_RESPONSE_SNIPPET) chunks.push(c.subarray(0, MAX_RESPONSE_SNIPPET - kept));
        kept += c.length;
        // A body larger than we keep is not worth waiting for: the status says it all.
        if (kept >= MAX_RESPONSE_SNIPPET) done();
      });
      res.on('end', done);
      res.on('error', done);
    });
    req.end(body);
  });
}

/**
 * The body of an error answer often echoes the request (Express's default 404
 * is "Cannot POST /path?query", proxies echo headers): before it is logged,
 * the parts of the request that carry secrets are cut out of it — the bearer
 * token, configured header values, and the URL's path segments and query values
 * (raw and decoded), the same parts webhookLabel keeps out of the log.
 */
export function withoutSecrets(text: string, t: Pick<WebhookTarget, 'url' | 'headers' | 'token'>): string {
  const secrets = new Set<string>();
  const add = (v: string | undefined): void => {
    // Shorter strings are no secret, and cutting them ("v1", "api") would only garble the message.
    if (!v || v.length < MIN_SECRET_CHARS) return;
    secrets.add(v);
    try {
      secrets.add(decodeURIComponent(v));
    } catch {
      // Not percent-encoded text: the raw form is enough.
    }
  };
  add(t.token);
  for (const v of Object.values(t.headers)) add(v);
  add(t.url.pathname === '/' ? '' : t.url.pathname);
  add(t.url.search.slice(1));
  for (const seg of t.url.pathname.split('/')) add(seg);
  for (const part of t.url.search.slice(1).split('&')) {
    const eq = part.indexOf('=');
    add(eq < 0 ? part : part.slice(eq + 1));
  }
  // Longest first, so a whole path goes before the segments inside it.
  const sorted = [...secrets].sort((a, b) => b.length - a.length);
  let out = text;
  for (const s of sorted) out = out.replaceAll(s, '[redacted]');
  // The body is cut at MAX_RESPONSE_SNIPPET bytes: a secret may begin before the cut and end after it.
  for (const s of sorted) {
    for (let k = Math.min(s.length - 1, out.length); k >= MIN_SECRET_CHARS; k--) {
      if (out.endsWith(s.slice(0, k))) return `${out.slice(0, out.length - k)}[redacted]`;
    }
  }
  return out;
}

function locationOrigin(location: string | undefined, base: URL): string | null {
  if (!location) return null;
  try {
    return new URL(location, base).origin;
  } catch {
    return null;
  }
}
