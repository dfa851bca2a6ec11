/**
 * Sizes and rates: the one place that parses and prints them.
 *
 * Parsing follows IEC 80000-13: a bare or `i`-marked prefix is binary
 * (`10M` = `10MiB` = 10 × 2^20), a prefix followed by a plain `B` is decimal
 * (`10MB` = 10 × 10^6), as disk vendors and S3 pricing use it. Printing is
 * always binary (`KiB`, `MiB/s`), so every command shows one unit system.
 */
import { UsageError } from './errors.js';

const PREFIX_EXPONENT: Record<string, number> = { '': 0, K: 1, M: 2, G: 3, T: 4, P: 5 };
const BINARY_UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'] as const;

/** A size that does not parse; thrown by parseSize. */
export class InvalidSizeError extends UsageError {
  override readonly code: string = 'INVALID_SIZE';
}

/**
 * Parses `4096`, `4096B`, `50K`, `50KiB` (binary), `50KB` (decimal), `1.5G`.
 * Returns whole bytes (rounded down). `what` names the setting in the error.
 */
export function parseSize(text: string, what = 'size'): number {
  const m = /^(\d+(?:\.\d+)?)\s*(?:([KMGTP])(i?)(B?)|(B?))$/i.exec(text.trim());
  if (!m) {
    throw new InvalidSizeError(
      `invalid ${what} "${text}": expected a number of bytes with an optional unit (K, M, G, T, P; ` +
        `KiB… binary, KB… decimal)`,
    );
  }
  const prefix = (m[2] ?? '').toUpperCase();
  const decimal = prefix !== '' && m[3] === '' && m[4] !== '';
  const base = decimal ? 1000 : 1024;
  const value = Number(m[1]) * base ** PREFIX_EXPONENT[prefix]!;
  if (!Number.isSafeInteger(Math.floor(value))) throw new InvalidSizeError(`invalid ${what} "${text}": too large`);
  return Math.floor(value);
}

/** Human-readable bytes in binary units, e.g. `1.5 GiB`. */
export function formatBytes(n: number): string {
  let v = n;
  let i = 0;
  while (Math.abs(v) >= 1024 && i < BINARY_UNITS.length - 1) {
    v /= 1024;
    i++;
  }
  return `${i === 0 ? v : v.toFixed(1)} ${BINARY_UNITS[i]}`;
}

/** A throughput in binary units, e.g. `312.4 MiB/s`; `-` when no time passed. */
export function formatRate(bytes: number, seconds: number): string {
  if (!(seconds > 0)) return '-';
  return `${formatBytes(bytes / seconds)}/s`;
}

const DURATION_UNITS: Record<string, number> = { ms: 1, s: 1000, '': 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** Parses durations like `90` (seconds), `90s`, `5m`, `2h`, `1d`, `500ms` into milliseconds; UsageError naming the setting otherwise. */
export function parseDuration(text: string, what: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?$/i.exec(text.trim());
  const ms = m ? Number(m[1]) * DURATION_UNITS[(m[2] ?? '').toLowerCase()]! : NaN;
  if (!Number.isFinite(ms) || ms <= 0) throw new UsageError(`${what} must be a positive duration such as 90s, 5m, 2h or 1d, got "${text}"`);
  return Math.ceil(ms);
}

/** An age or duration in seconds as its two largest units, e.g. `3h 12m`, `2d 1h`, `45s`. */
export function formatAge(seconds: number): string {
  const units: Array<[string, number]> = [['d', 86_400], ['h', 3600], ['m', 60], ['s', 1]];
  const parts: string[] = [];
  let left = Math.max(0, Math.round(seconds));
  for (const [u, n] of units) {
    if (left >= n || (u === 's' && parts.length === 0)) parts.push(`${Math.floor(left / n)}${u}`);
    left %= n;
    if (parts.length === 2) break;
  }
  return parts.join(' ');
}
