/**
 * SigV4 verification for the embedded S3 server. s3rver 3.7.1 accepts
 * anonymous requests and never checks V4 signatures (its authentication
 * middleware: "Signature version 4 calculation is unimplemented"), so every
 * request is verified here, in front of it, against the state directory's
 * generated keys:
 *   - an `Authorization: AWS4-HMAC-SHA256 ...` header is required (anonymous,
 *     SigV2 and presigned-URL requests are refused: cowstream never makes them);
 *   - the access key id must be ours, the scope's date must match x-amz-date,
 *     and x-amz-date must be within 15 minutes of now (S3's own skew rule);
 *   - the signature is recomputed with @smithy/signature-v4 over the method,
 *     the path exactly as sent, the query and every signed header, and
 *     compared in constant time.
 * The payload hash is signed but the body is not hashed again here (s3rver
 * does not either): on loopback only root can alter bytes in transit, and
 * every archive extent carries its own SHA-256.
 */
import { timingSafeEqual } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import { SignatureV4 } from '@smithy/signature-v4';
import { NodeSha256 } from './node-sha256.js';

export interface SigV4Keys {
  accessKeyId: string;
  secretAccessKey: string;
}

/** Why a request was refused: S3 error code, HTTP status and message. */
export interface SigV4Refusal {
  status: number;
  code: string;
  message: string;
}

/** S3 refuses requests whose x-amz-date is more than 15 minutes off. */
const MAX_SKEW_MS = 15 * 60 * 1000;
const AUTH_RE = /^AWS4-HMAC-SHA256 Credential=([^/,\s]+)\/(\d{8})\/([^/,\s]+)\/([^/,\s]+)\/aws4_request,\s*SignedHeaders=([a-z0-9;-]+),\s*Signature=([0-9a-f]{64})$/;
const PAYLOAD_RE = /^(UNSIGNED-PAYLOAD|[0-9a-f]{64})$/;

function refuse(status: number, code: string, message: string): SigV4Refusal {
  return { status, code, message };
}

/** `a=1&b&c=%2F` → { a: '1', b: '', c: '/' } (repeated keys → arrays). Form '+' is not space in S3 queries. */
function parseQuery(raw: string): Record<string, string | string[]> | null {
  const out: Record<string, string | string[]> = Object.create(null) as Record<string, string | string[]>;
  if (raw === '') return out;
  for (const pair of raw.split('&')) {
    if (pair === '') continue;
    const i = pair.indexOf('=');
    let k: string;
    let v: string;
    try {
      k = decodeURIComponent(i < 0 ? pair : pair.slice(0, i));
      v = i < 0 ? '' : decodeURIComponent(pair.slice(i + 1));
    } catch {
      return null;
    }
    const prev = out[k];
    out[k] = prev === undefined ? v : Array.isArray(prev) ? [...prev, v] : [prev, v];
  }
  return out;
}

/** `20250101T120000Z` → Date, or null. */
function parseAmzDate(text: string): Date | null {
  const m = /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$/.exec(text);
  if (!m) return null;
  const d = new Date(Date.UTC(+m[1]!, +m[2]! - 1, +m[3]!, +m[4]!, +m[5]!, +m[6]!));
  return Number.isNaN(d.getTime()) ? null : d;
}

function headerValue(req: IncomingMessage, name: string): string | undefined {
  const v = req.headers[name];
  return Array.isArray(v) ? v.join(',') : v;
}

/** Verifies one request's SigV4 header signature; null when it is good. */
export async function verifySigV4(req: IncomingMessage, keys: SigV4Keys, now: number = Date.now()): Promise<SigV4Refusal | null> {
  const auth = headerValue(req, 'authorization');
  if (auth === undefined) return refuse(403, 'AccessDenied', 'Anonymous access is not allowed: requests must be signed with SigV4');
  const url = req.url ?? '/';
  const q = url.indexOf('?');
  const path = q < 0 ? url : url.slice(0, q);
  const query = parseQuery(q < 0 ? '' : url.slice(q + 1));
  if (query === null) return refuse(400, 'InvalidArgument', 'malformed query string');
  if ('X-Amz-Signature' in query || 'Signature' in query) return refuse(403, 'AccessDenied', 'Query-string (presigned) authentication is not accepted');
  const m = AUTH_RE.exec(auth);
  if (!m) return refuse(403, 'AccessDenied', 'Only SigV4 header authentication (AWS4-HMAC-SHA256) is accepted');
  const [, accessKeyId, scopeDate, region, service, signedList, signature] = m as unknown as [string, string, string, string, string, string, string];
  if (!constantTimeEqual(accessKeyId, keys.accessKeyId)) {
    return refuse(403, 'InvalidAccessKeyId', 'The AWS Access Key Id you provided does not exist in our records.');
  }
  if (service !== 's3') return refuse(403, 'SignatureDoesNotMatch', `credential scope names service "${service}", not s3`);
  const amzDate = headerValue(req, 'x-amz-date');
  const date = amzDate !== undefined ? parseAmzDate(amzDate) : null;
  if (date === null || amzDate === undefined) return refuse(403, 'AccessDenied', 'a valid x-amz-date header is required');
  if (!amzDate.startsWith(scopeDate)) return refuse(403, 'SignatureDoesNotMatch', 'credential scope date differs from x-amz-date');
  if (Math.abs(now - date.getTime()) > MAX_SKEW_MS) return refuse(403, 'RequestTimeTooSkewed', 'The difference between the request time and the current time is too large.');
  const payload = headerValue(req, 'x-amz-content-sha256');
  if (payload === undefined || !PAYLOAD_RE.test(payload)) {
    return refuse(400, 'InvalidRequest', 'x-amz-content-sha256 must be UNSIGNED-PAYLOAD or a SHA-256 (streaming payload signing is not supported)');
  }
  const signed = signedList.split(';');
  if (!signed.includes('host') || !signed.includes('x-amz-date') || !signed.includes('x-amz-content-sha256')) {
    return refuse(403, 'AccessDenied', 'host, x-amz-date and x-amz-content-sha256 must be signed');
  }
  const headers: Record<string, string> = {};
  for (const name of signed) {
    const v = headerValue(req, name);
    if (v === undefined) return refuse(403, 'SignatureDoesNotMatch', `signed header ${name} is missing`);
    headers[name] = v;
  }
  const expected = await signerFor(keys, region).sign(
    { method: req.method ?? 'GET', protocol: 'http:', hostname: 'localhost', path, query, headers },
    { signingDate: date, signableHeaders: new Set(signed) },
  );
  const got = /Signature=([0-9a-f]{64})$/.exec(String(expected.headers.authorization))?.[1] ?? '';
  const expectedSigned = /SignedHeaders=([^,]+),/.exec(String(expected.headers.authorization))?.[1] ?? '';
  if (expectedSigned !== signedList || !constantTimeEqual(got, signature)) {
    return refuse(403, 'SignatureDoesNotMatch', 'The request signature we calculated does not match the signature you provided. Check your key and signing method.');
  }
  return null;
}

/**
 * One signer per key pair, kept while requests name the same region: the
 * signer caches its derived signing key (four HMACs per day and scope), which
 * a signer made per request would derive again for every request. Only the
 * last region is kept, so forged scopes cannot grow the cache.
 */
const signers = new WeakMap<SigV4Keys, { region: string; signer: SignatureV4 }>();

function signerFor(keys: SigV4Keys, region: string): SignatureV4 {
  const cached = signers.get(keys);
  if (cached?.region === region) return cached.signer;
  const signer = new SignatureV4({ service: 's3', region, credentials: keys, sha256: NodeSha256, uriEscapePath: false, applyChecksum: false });
  signers.set(keys, { region, signer });
  return signer;
}

function constantTimeEqual(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}
