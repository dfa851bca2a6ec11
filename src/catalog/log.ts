/**
 * Structured JSON logs in the shape of AWS Lambda Powertools' Logger
 * (level, message, service, timestamp, plus keys), one line per entry on
 * stderr, so CloudWatch Logs Insights queries work the same for Lambda and
 * the embedded catalogue.
 */
export type LogLevel = 'DEBUG' | 'INFO' | 'WARN' | 'ERROR';
const ORDER: Record<LogLevel, number> = { DEBUG: 10, INFO: 20, WARN: 30, ERROR: 40 };

export interface Logger {
  debug(message: string, extra?: Record<string, unknown>): void;
  info(message: string, extra?: Record<string, unknown>): void;
  warn(message: string, extra?: Record<string, unknown>): void;
  error(message: string, extra?: Record<string, unknown>): void;
  child(keys: Record<string, unknown>): Logger;
}

export function createLogger(service: string, keys: Record<string, unknown> = {}, level?: LogLevel): Logger {
  const min = ORDER[level ?? ((process.env.LOG_LEVEL?.toUpperCase() as LogLevel | undefined) ?? 'INFO')] ?? ORDER.INFO;
  const emit = (lvl: LogLevel, message: string, extra?: Record<string, unknown>): void => {
    if (ORDER[lvl] < min) return;
    const entry = { level: lvl, message, service, timestamp: new Date().toISOString(), ...keys, ...extra };
    process.stderr.write(JSON.stringify(entry, (_k, v) => (v instanceof Error ? { name: v.name, message: v.message } : v)) + '\n');
  };
  return {
    debug: (m, e) => emit('DEBUG', m, e),
    info: (m, e) => emit('INFO', m, e),
    warn: (m, e) => emit('WARN', m, e),
    error: (m, e) => emit('ERROR', m, e),
    child: (more) => createLogger(service, { ...keys, ...more }, level),
  };
}

/** Silent logger for tests and embedded mode when quiet. */
export const nullLogger: Logger = {
  debug: () => {},
  info: () => {},
  warn: () => {},
  error: () => {},
  child: () => nullLogger,
};
