/**
 * Opaque pagination cursors: base64url(JSON(LastEvaluatedKey)) bound to the
 * query that produced them. A cursor is untrusted input, so decoding checks
 * its size, its shape (flat string attributes of the index's key schema) and
 * that it belongs to the same partition as the query — a cursor from another
 * host's listing must not page through it.
 */
import { UsageError } from '../errors.js';

const MAX_CURSOR_CHARS = 2048;

export type DynamoKey = Record<string, string>;

export function encodeCursor(key: Record<string, unknown> | undefined): string | undefined {
  if (!key) return undefined;
  return Buffer.from(JSON.stringify(key), 'utf8').toString('base64url');
}

/**
 * @param allowed attribute names the cursor may contain (table + index keys)
 * @param bound attributes whose value must equal the query's (partition keys)
 */
export function decodeCursor(cursor: string | undefined, allowed: readonly string[], bound: DynamoKey): DynamoKey | undefined {
  if (cursor === undefined || cursor === '') return undefined;
  if (cursor.length > MAX_CURSOR_CHARS || !/^[A-Za-z0-9_-]+$/.test(cursor)) throw new UsageError('invalid cursor');
  let parsed: unknown;
  try {
    parsed = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8'));
  } catch (err) {
    throw new UsageError('invalid cursor', { cause: err });
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new UsageError('invalid cursor');
  const out: DynamoKey = {};
  for (const [k, v] of Object.entries(parsed)) {
    if (!allowed.includes(k) || typeof v !== 'string' || v.length > 1024) throw new UsageError('invalid cursor');
    out[k] = v;
  }
  for (const [k, v] of Object.entries(bound)) {
    if (out[k] !== v) throw new UsageError('cursor does not belong to this query');
  }
  for (const k of allowed) if (!(k in out)) throw new UsageError('invalid cursor');
  return out;
}
