import { UsageError } from '../errors.js';

/** Prints a value as one JSON document on stdout (for `--json`). */
export function printJson(value: unknown): void {
  process.stdout.write(JSON.stringify(value, null, 2) + '\n');
}

const SIZE_UNITS: Record<string, number> = { '': 1, B: 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3, T: 1024 ** 4 };

/** Parses sizes like `50M`, `1G`, `4096`, `8MiB`. Throws UsageError on anything else. */
export function parseSize(text: string, what = 'size'): number {
  const m = /^(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?$/i.exec(text.trim());
  if (!m) throw new UsageError(`invalid ${what} "${text}": expected a number with an optional K, M, G or T suffix`);
  const value = Number(m[1]) * SIZE_UNITS[m[2]!.toUpperCase()]!;
  if (!Number.isFinite(value) || value < 0) throw new UsageError(`invalid ${what} "${text}"`);
  return Math.floor(value);
}

/** Parses a positive integer flag, throwing UsageError naming the flag. */
export function parsePositiveInt(text: string, flag: string, max = Number.MAX_SAFE_INTEGER): number {
  if (!/^\d+$/.test(text.trim())) throw new UsageError(`${flag} must be a positive integer, got "${text}"`);
  const n = Number(text);
  if (n < 1 || n > max) throw new UsageError(`${flag} must be between 1 and ${max}, got ${n}`);
  return n;
}

const DURATION_UNITS: Record<string, number> = { ms: 1, s: 1000, '': 1000, m: 60_000, h: 3_600_000 };

/** Parses durations like `90` (seconds), `90s`, `5m`, `2h`, `500ms` into milliseconds; UsageError naming the flag otherwise. */
export function parseDuration(text: string, flag: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*(ms|s|m|h)?$/i.exec(text.trim());
  const ms = m ? Number(m[1]) * DURATION_UNITS[(m[2] ?? '').toLowerCase()]! : NaN;
  if (!Number.isFinite(ms) || ms <= 0) throw new UsageError(`${flag} must be a positive duration such as 90s, 5m or 2h, got "${text}"`);
  return Math.ceil(ms);
}

/** Human-readable bytes, e.g. 1.5 GiB. */
export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${i === 0 ? v : v.toFixed(1)} ${units[i]}`;
}
