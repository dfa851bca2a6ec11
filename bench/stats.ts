/**
 * Paired-run statistics shared by the benchmark scripts: this VM's speed
 * drifts by ±25 % over tens of seconds, so each script runs cowstream and its
 * baseline back to back several times and reports the median pair.
 */

/** Median of a non-empty list (mean of the two middle values for an even count). */
export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 === 1 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

/** The element whose key is the median (the lower middle one for an even count). */
export function medianBy<T>(xs: T[], key: (x: T) => number): T {
  return [...xs].sort((a, b) => key(a) - key(b))[(xs.length - 1) >> 1]!;
}
