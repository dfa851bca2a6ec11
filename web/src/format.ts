import { formatBytes } from '../../src/cli/output.js';
import type { ArchiveRecord } from './api.js';

export { formatBytes };

/**
 * The last 8 hex digits: archive ids are UUIDv7, whose leading digits are a
 * timestamp shared by every backup of the same hour.
 */
export function short(uuid: string | null | undefined): string {
  return uuid ? uuid.slice(-8) : '—';
}

/** "2026-12-01 14:03" in the viewer's time zone; the exact UTC instant is in the title. */
export function when(iso: string | undefined): string {
  if (!iso) return '—';
  const d = new Date(iso);
  const p = (n: number): string => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

/** A coarse age: "45 s", "12 min", "5 h 20 min", "3 d 4 h". */
export function age(ms: number): string {
  const s = Math.max(0, Math.floor(ms / 1000));
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min`;
  const hrs = Math.floor(m / 60);
  if (hrs < 48) return `${hrs} h${m % 60 ? ` ${m % 60} min` : ''}`;
  const d = Math.floor(hrs / 24);
  return `${d} d${hrs % 24 ? ` ${hrs % 24} h` : ''}`;
}

/** Axis labels in one unit, small enough that neighbouring labels differ, with the decimals the step needs. */
export function bytesTicks(values: number[]): string[] {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  const max = Math.max(...values.map(Math.abs), 1);
  const step = values.length > 1 ? Math.abs(values[1]! - values[0]!) : max;
  let i = Math.min(units.length - 1, Math.floor(Math.log(max) / Math.log(1024)));
  while (i > 0 && step / 1024 ** i < 0.01) i--;
  const div = 1024 ** i;
  const decimals = i === 0 ? 0 : Math.max(0, Math.min(2, Math.ceil(-Math.log10(step / div || 1))));
  return values.map((v) => `${(v / div).toFixed(decimals)} ${units[i]}`);
}

export type Freshness = 'fresh' | 'late' | 'stale' | 'none';

/** Within the threshold: fresh; up to twice it: late; beyond, or never: stale / none. */
export function freshness(ageMs: number | null, thresholdHours: number): Freshness {
  if (ageMs === null) return 'none';
  const t = thresholdHours * 3_600_000;
  return ageMs <= t ? 'fresh' : ageMs <= 2 * t ? 'late' : 'stale';
}

export const kind = (a: ArchiveRecord): 'full' | 'incremental' => (a.parentUuid === null ? 'full' : 'incremental');

/** The bytes an archive stands for: data plus the zero runs it records. */
export const logicalBytes = (a: ArchiveRecord): number => a.dataBytes + a.zeroBytes;

export function ratio(a: ArchiveRecord): string {
  return a.compressionRatio > 0 ? `${a.compressionRatio.toFixed(2)}×` : '—';
}

const THRESHOLD_KEY = 'cowstream.console.freshHours';
export const DEFAULT_FRESH_HOURS = 26;

export function freshnessThreshold(): number {
  const v = Number(localStorage.getItem(THRESHOLD_KEY));
  return Number.isFinite(v) && v > 0 ? v : DEFAULT_FRESH_HOURS;
}

export function setFreshnessThreshold(hours: number): void {
  localStorage.setItem(THRESHOLD_KEY, String(hours));
}
