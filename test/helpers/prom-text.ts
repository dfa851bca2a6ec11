/**
 * A strict reader of the Prometheus text exposition format 0.0.4, for tests:
 * every line must be a HELP, a TYPE or a sample of a metric whose TYPE came
 * first; label names and escapes, values, duplicate series and histogram
 * buckets (cumulative, +Inf = _count) are checked. Throws on the first
 * violation, naming the line.
 */

export type PromType = 'counter' | 'gauge' | 'histogram' | 'summary' | 'untyped';

export interface PromSample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

export interface PromText {
  types: Map<string, PromType>;
  help: Map<string, string>;
  samples: PromSample[];
  /** The value of the one series with exactly these labels; undefined when absent. */
  get(name: string, labels?: Record<string, string>): number | undefined;
}

const NAME = '[a-zA-Z_:][a-zA-Z0-9_:]*';
const LABEL = '[a-zA-Z_][a-zA-Z0-9_]*';
const VALUE = '[+-]?(?:Inf|NaN|[0-9]*\\.?[0-9]+(?:[eE][+-]?[0-9]+)?)';
const SAMPLE_RE = new RegExp(`^(${NAME})(?:\\{(.*)\\})? (${VALUE})(?: (-?[0-9]+))?$`);
const LABEL_RE = new RegExp(`^(${LABEL})="((?:[^"\\\\\\n]|\\\\[\\\\"n])*)"`);
const TYPES = new Set(['counter', 'gauge', 'histogram', 'summary', 'untyped']);

function parseLabels(text: string, line: string): Record<string, string> {
  const labels: Record<string, string> = {};
  let rest = text;
  while (rest.length > 0) {
    const m = LABEL_RE.exec(rest);
    if (!m) throw new Error(`bad label set in line: ${line}`);
    const [all, k, v] = m as unknown as [string, string, string];
    if (k in labels) throw new Error(`label ${k} twice in line: ${line}`);
    labels[k] = v.replace(/\\n/g, '\n').replace(/\\"/g, '"').replace(/\\\\/g, '\\');
    rest = rest.slice(all.length);
    if (rest.startsWith(',')) rest = rest.slice(1);
    else if (rest.length > 0) throw new Error(`bad label separator in line: ${line}`);
  }
  return labels;
}

function parseValue(v: string): number {
  if (/Inf$/.test(v)) return v.startsWith('-') ? -Infinity : Infinity;
  return Number(v);
}

/** The metric a sample belongs to: histograms and summaries expose suffixed series. */
function familyOf(name: string, types: Map<string, PromType>): string | undefined {
  if (types.has(name)) return name;
  for (const suffix of ['_bucket', '_sum', '_count']) {
    if (!name.endsWith(suffix)) continue;
    const base = name.slice(0, -suffix.length);
    const t = types.get(base);
    if (t === 'histogram' || (t === 'summary' && suffix !== '_bucket')) return base;
  }
  return undefined;
}

const key = (name: string, labels: Record<string, string>): string => `${name}{${Object.entries(labels).sort(([a], [b]) => a.localeCompare(b)).map(([k, v]) => `${k}=${JSON.stringify(v)}`).join(',')}}`;

export function parsePromText(text: string): PromText {
  if (!text.endsWith('\n')) throw new Error('exposition does not end with a newline');
  const types = new Map<string, PromType>();
  const help = new Map<string, string>();
  const samples: PromSample[] = [];
  const seen = new Map<string, number>();
  for (const line of text.slice(0, -1).split('\n')) {
    if (line === '') continue;
    let m: RegExpExecArray | null;
    if ((m = new RegExp(`^# HELP (${NAME}) (.*)$`).exec(line))) {
      if (help.has(m[1]!)) throw new Error(`second HELP for ${m[1]}`);
      help.set(m[1]!, m[2]!);
    } else if ((m = new RegExp(`^# TYPE (${NAME}) (\\w+)$`).exec(line))) {
      if (!TYPES.has(m[2]!)) throw new Error(`unknown type in line: ${line}`);
      if (types.has(m[1]!)) throw new Error(`second TYPE for ${m[1]}`);
      types.set(m[1]!, m[2] as PromType);
    } else if (line.startsWith('#')) {
      throw new Error(`unexpected comment line: ${line}`);
    } else if ((m = SAMPLE_RE.exec(line))) {
      const name = m[1]!;
      if (!familyOf(name, types)) throw new Error(`sample before its TYPE line: ${line}`);
      const labels = parseLabels(m[2] ?? '', line);
      const k = key(name, labels);
      if (seen.has(k)) throw new Error(`duplicate series ${k}`);
      const value = parseValue(m[3]!);
      seen.set(k, value);
      samples.push({ name, labels, value });
    } else {
      throw new Error(`not a Prometheus text line: ${JSON.stringify(line)}`);
    }
  }
  checkHistograms(types, samples, seen);
  return { types, help, samples, get: (name, labels = {}) => seen.get(key(name, labels)) };
}

/** Buckets are cumulative in `le` order and the +Inf bucket equals _count, for every label set. */
function checkHistograms(types: Map<string, PromType>, samples: PromSample[], seen: Map<string, number>): void {
  for (const [family, t] of types) {
    if (t !== 'histogram') continue;
    const groups = new Map<string, Array<{ le: number; v: number }>>();
    for (const s of samples) {
      if (s.name !== `${family}_bucket`) continue;
      const { le, ...rest } = s.labels;
      if (le === undefined) throw new Error(`${family}_bucket without le`);
      const g = key(family, rest);
      groups.set(g, [...(groups.get(g) ?? []), { le: parseValue(le), v: s.value }]);
    }
    for (const [g, buckets] of groups) {
      buckets.sort((a, b) => a.le - b.le);
      buckets.forEach((b, i) => {
        if (i > 0 && b.v < buckets[i - 1]!.v) throw new Error(`${g}: bucket le=${b.le} below the previous one`);
      });
      const inf = buckets[buckets.length - 1]!;
      const count = seen.get(g.replace(`${family}{`, `${family}_count{`));
      if (inf.le !== Infinity || inf.v !== count) throw new Error(`${g}: +Inf bucket ${inf.v} != _count ${count}`);
    }
  }
}
