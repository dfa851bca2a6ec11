/**
 * The one JSON-lines logger. Every entry is one JSON object on one line, so
 * `jq`, journald and CloudWatch Logs Insights read them alike. Two field
 * layouts share this code: the agent's (`time`, `level`, `msg`) that its
 * users and test helpers read, and AWS Lambda Powertools' (`timestamp`,
 * `level` in capitals, `message`, `service`) that the catalogue writes in
 * Lambda and embedded alike.
 */
export type Level = 'debug' | 'info' | 'warn' | 'error';
const ORDER: Record<Level, number> = { debug: 10, info: 20, warn: 30, error: 40 };

export type LogLayout = 'agent' | 'powertools';

export interface JsonLoggerOptions {
  layout: LogLayout;
  /** Entries below this level are dropped. */
  level: Level;
  /** Keys on every entry (e.g. `service`, `component`). */
  keys?: Record<string, unknown>;
  out?: (line: string) => void;
}

/** Errors as name + message (JSON.stringify would print `{}`), and nothing that cannot be printed. */
function safeJson(entry: Record<string, unknown>): string {
  try {
    return JSON.stringify(entry, (_k, v: unknown) => (v instanceof Error ? { name: v.name, message: v.message } : v));
  } catch {
    return JSON.stringify({ ...entry, fields: '(not serializable)' }, (_k, v: unknown) => (typeof v === 'object' && v !== null && !Array.isArray(v) && _k !== '' ? '(object)' : v));
  }
}

/** Returns the emit function: (level, message, fields) → one line on `out` (default stderr). */
export function jsonLineEmitter(o: JsonLoggerOptions): (level: Level, message: string, fields?: Record<string, unknown>) => void {
  const out = o.out ?? ((l: string) => process.stderr.write(l));
  return (level, message, fields) => {
    if (ORDER[level] < ORDER[o.level]) return;
    const now = new Date().toISOString();
    const head =
      o.layout === 'agent'
        ? { time: now, level, msg: message }
        : { level: level.toUpperCase(), message, timestamp: now };
    out(safeJson({ ...head, ...o.keys, ...fields }) + '\n');
  };
}
