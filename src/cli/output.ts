import { UsageError } from '../errors.js';

export { formatAge, formatBytes, formatRate, parseDuration, parseSize } from '../units.js';

/** Prints a value as one JSON document on stdout (for `--json`). */
export function printJson(value: unknown): void {
  process.stdout.write(JSON.stringify(value, null, 2) + '\n');
}

/** Parses a positive integer flag, throwing UsageError naming the flag. */
export function parsePositiveInt(text: string, flag: string, max = Number.MAX_SAFE_INTEGER): number {
  if (!/^\d+$/.test(text.trim())) throw new UsageError(`${flag} must be a positive integer, got "${text}"`);
  const n = Number(text);
  if (n < 1 || n > max) throw new UsageError(`${flag} must be between 1 and ${max}, got ${n}`);
  return n;
}
