/**
 * The embedded catalogue's authentication layer: every request must carry
 * `Authorization: Bearer <catalogToken>` (the state directory's generated
 * token, src/store/embedded-credentials.ts), else 401 before any route
 * handler runs. In AWS, API Gateway's IAM authorizer plays this role.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage, RequestListener, ServerResponse } from 'node:http';

const BEARER_RE = /^Bearer ([A-Za-z0-9._~+/=-]{1,512})$/;

/** The SHA-256 of a token, computed once and compared against with tokenMatches. */
export function tokenDigest(token: string): Buffer {
  return createHash('sha256').update(token, 'utf8').digest();
}

/** Constant-time comparison of equal-length digests: neither length nor content leaks through timing. */
export function tokenMatches(given: string, expectedDigest: Buffer): boolean {
  return timingSafeEqual(tokenDigest(given), expectedDigest);
}

function unauthorized(res: ServerResponse, message: string): void {
  res.writeHead(401, { 'content-type': 'application/json', 'www-authenticate': 'Bearer realm="cowstream-catalog"', connection: 'close' });
  res.end(JSON.stringify({ error: { code: 'UNAUTHORIZED', message } }));
}

/** Wraps a node:http listener so only requests bearing `token` reach it. */
export function requireBearerToken(token: string, next: RequestListener): RequestListener {
  if (token.length < 16) throw new RangeError('catalogue token too short');
  const expected = tokenDigest(token);
  return (req: IncomingMessage, res: ServerResponse) => {
    const m = BEARER_RE.exec(req.headers.authorization ?? '');
    if (!m) {
      unauthorized(res, 'authentication required: send Authorization: Bearer <catalogToken> (cowstream: --catalog-token, COWSTREAM_CATALOG_TOKEN or --state <dir>)');
      return;
    }
    if (!tokenMatches(m[1]!, expected)) {
      unauthorized(res, 'invalid catalogue token');
      return;
    }
    next(req, res);
  };
}
