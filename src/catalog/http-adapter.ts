/**
 * node:http ⇄ API Gateway HTTP API payload 2.0, so the embedded catalogue
 * runs the very handler Lambda runs. Only what the handler reads is filled
 * in; the body is capped because API Gateway caps it too.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { randomUUID } from 'node:crypto';
import type { ApiEvent, ApiHandler } from './api.js';

const MAX_BODY_BYTES = 1024 * 1024;

class BodyTooLarge extends Error {}

async function readBody(req: IncomingMessage): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let total = 0;
  for await (const chunk of req) {
    total += (chunk as Buffer).length;
    if (total > MAX_BODY_BYTES) throw new BodyTooLarge();
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks);
}

export function toApiEvent(req: IncomingMessage, body: Buffer): ApiEvent {
  const url = new URL(req.url ?? '/', 'http://localhost');
  const headers: Record<string, string> = {};
  for (const [k, v] of Object.entries(req.headers)) if (v !== undefined) headers[k] = Array.isArray(v) ? v.join(',') : v;
  const query: Record<string, string> = {};
  // API Gateway joins repeated parameters with commas.
  url.searchParams.forEach((v, k) => {
    query[k] = query[k] === undefined ? v : `${query[k]},${v}`;
  });
  const method = (req.method ?? 'GET').toUpperCase();
  const now = new Date();
  return {
    version: '2.0',
    routeKey: '$default',
    rawPath: url.pathname,
    rawQueryString: url.search.replace(/^\?/, ''),
    headers,
    ...(Object.keys(query).length > 0 ? { queryStringParameters: query } : {}),
    requestContext: {
      accountId: 'embedded',
      apiId: 'embedded',
      domainName: headers.host ?? 'localhost',
      domainPrefix: 'embedded',
      http: { method, path: url.pathname, protocol: `HTTP/${req.httpVersion}`, sourceIp: req.socket.remoteAddress ?? '', userAgent: headers['user-agent'] ?? '' },
      requestId: randomUUID(),
      routeKey: '$default',
      stage: '$default',
      time: now.toUTCString(),
      timeEpoch: now.getTime(),
    },
    ...(body.length > 0 ? { body: body.toString('base64'), isBase64Encoded: true } : { isBase64Encoded: false }),
  };
}

export function httpListener(handler: ApiHandler): (req: IncomingMessage, res: ServerResponse) => void {
  return (req, res) => {
    void (async () => {
      let status = 500;
      let headers: Record<string, string> = { 'content-type': 'application/json' };
      let body = JSON.stringify({ error: { code: 'INTERNAL', message: 'internal error' } });
      try {
        const result = await handler(toApiEvent(req, await readBody(req)));
        status = result.statusCode ?? 200;
        headers = { ...headers, ...(result.headers as Record<string, string> | undefined) };
        body = result.isBase64Encoded ? Buffer.from(result.body ?? '', 'base64').toString('utf8') : (result.body ?? '');
      } catch (err) {
        if (err instanceof BodyTooLarge) {
          status = 413;
          body = JSON.stringify({ error: { code: 'USAGE', message: `body larger than ${MAX_BODY_BYTES} bytes` } });
        }
      }
      res.writeHead(status, headers);
      res.end(body);
    })();
  };
}
