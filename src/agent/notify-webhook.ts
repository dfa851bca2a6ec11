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
      const chunks: Buffer[] = [];
      let kept = 0;
      const done = (): void => {
        const snippet = Buffer.concat(chunks).toString('utf8').replace(/\s+/g, ' ').trim();
        if (status >= 200 && status < 300) return finish({ ok: true, fields: { status } });
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

function locationOrigin(location: string | undefined, base: URL): string | null {
  if (!location) return null;
  try {
    return new URL(location, base).origin;
  } catch {
    return null;
  }
}
