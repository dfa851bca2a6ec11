/**
 * Reader limits that are configuration, not format (docs/FORMAT.md "Reader
 * limits"): the one place their environment variables are parsed.
 */
import { ConfigError } from '../errors.js';
import { DEFAULT_MAX_INDEX_ENTRIES } from './layout.js';

export const MAX_INDEX_ENTRIES_ENV = 'COWSTREAM_MAX_INDEX_ENTRIES';

/** `COWSTREAM_MAX_INDEX_ENTRIES` (a positive integer), else DEFAULT_MAX_INDEX_ENTRIES. */
export function maxIndexEntriesFromEnv(env: NodeJS.ProcessEnv = process.env): number {
  const raw = env[MAX_INDEX_ENTRIES_ENV];
  if (raw === undefined || raw.trim() === '') return DEFAULT_MAX_INDEX_ENTRIES;
  const n = Number(raw);
  if (!/^\d+$/.test(raw.trim()) || !Number.isSafeInteger(n) || n < 1) {
    throw new ConfigError(`${MAX_INDEX_ENTRIES_ENV} must be a positive integer, got ${JSON.stringify(raw)}`);
  }
  return n;
}
