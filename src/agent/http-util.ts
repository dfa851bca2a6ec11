import type { IncomingMessage, ServerResponse } from 'node:http';
import type { z } from 'zod';
import { firstIssuePath, formatZodIssues } from '../zod-issues.js';
import {
  ConflictError,
  CowstreamError,
  ForbiddenError,
  NotFoundError,
  UsageError,
  describeError,
} from '../errors.js';

/** The control API refuses bodies above this size (bounded memory per request). */
export const MAX_BODY_BYTES = 1024 * 1024;

/** 405 carries the allowed methods so the client can say what it should have sent. */
export class MethodNotAllowedError extends UsageError {
  override readonly code: string = 'METHOD_NOT_ALLOWED';
  readonly allow: string[];
  constructor(method: string, path: string, allow: string[]) {
    super(`method ${method} is not allowed on ${path} (allowed: ${allow.join(', ')})`);
    this.allow = allow;
  }
}

/** A bad control-API body; `field` names the offending field path (sent back as `error.field`). */
export class BadRequestError extends UsageError {
  override readonly code: string = 'BAD_REQUEST';
  readonly field: string;
  constructor(field: string, message: string) {
    super(message);
    this.field = field;
  }
}

/** Validates a control-API body with `schema`; BadRequestError naming the first bad field. */
export function parseRequestBody<T>(schema: z.ZodType<T>, body: unknown, what: string): T {
  if (body === undefined) throw new BadRequestError('(body)', `(body): a JSON body is required for ${what}`);
  const r = schema.safeParse(body);
  if (!r.success) throw new BadRequestError(firstIssuePath(r.error.issues), `invalid ${what}: ${formatZodIssues(r.error.issues)}`);
  return r.data;
}

/**
 * The request target as a URL. Node's parser lets through targets that URL
 * rejects ("GET http://[ HTTP/1.1"), and a throw in a request listener is an
 * uncaught exception that ends the agent: this one is a UsageError (400).
 */
export function requestUrl(req: IncomingMessage): URL {
  try {
    return new URL(req.url ?? '/', 'http://agent');
  } catch (err) {
    throw new UsageError(`malformed request target ${JSON.stringify((req.url ?? '').slice(0, 100))}`, { cause: err });
  }
}

/** An error status for any thrown value: the error hierarchy maps onto HTTP codes. */
export function statusForError(err: unknown): number {
  if (err instanceof MethodNotAllowedError) return 405;
  if (err instanceof UsageError) return 400;
  if (err instanceof NotFoundError) return 404;
  if (err instanceof ConflictError) return 409;
  if (err instanceof ForbiddenError) return 403;
  return 500;
}

export function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const text = JSON.stringify(body) + '\n';
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), ...headers });
  res.end(text);
}

/** A text body (e.g. the Prometheus exposition format) with its content type. */
export function sendText(res: ServerResponse, status: number, contentType: string, text: string): void {
  res.writeHead(status, { 'content-type': contentType, 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

export function sendError(res: ServerResponse, err: unknown): void {
  const status = statusForError(err);
  const code = err instanceof CowstreamError ? err.code : 'INTERNAL';
  const headers: Record<string, string> = err instanceof MethodNotAllowedError ? { allow: err.allow.join(', ') } : {};
  const field = (err as { field?: unknown }).field;
  sendJson(res, status, { error: { code, message: describeError(err), ...(typeof field === 'string' ? { field } : {}) } }, headers);
}

/** Reads a JSON body (empty body → undefined); 400 on bad JSON, 413-as-400 when too large. */
export async function readJsonBody(req: IncomingMessage): Promise<unknown> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > MAX_BODY_BYTES) throw new UsageError(`request body larger than ${MAX_BODY_BYTES} bytes`);
    chunks.push(chunk as Buffer);
  }
  const text = Buffer.concat(chunks).toString('utf8');
  if (text.trim() === '') return undefined;
  try {
    return JSON.parse(text) as unknown;
  } catch (err) {
    throw new UsageError(`request body is not valid JSON: ${(err as Error).message}`, { cause: err });
  }
}
