/**
 * Structured JSON logs in the shape of AWS Lambda Powertools' Logger
 * (level, message, service, timestamp, plus keys), one line per entry on
 * stderr, so CloudWatch Logs Insights queries work the same for Lambda and
 * the embedded catalogue.
 */
import { jsonLineEmitter, type Level } from '../log.js';

export type LogLevel = 'DEBUG' | 'INFO' | 'WARN' | 'ERROR';
const LEVELS: Record<LogLevel, Level> = { DEBUG: 'debug', INFO: 'info', WARN: 'warn', ERROR: 'error' };

export interface Logger {
  debug(message: string, extra?: Record<string, unknown>): void;
  info(message: string, extra?: Record<string, unknown>): void;
  warn(message: string, extra?: Record<string, unknown>): void;
  error(message: string, extra?: Record<string, unknown>): void;
  child(keys: Record<string, unknown>): Logger;
}

export function createLogger(service: string, keys: Record<string, unknown> = {}, level?: LogLevel): Logger {
  const min = level ?? ((process.env.LOG_LEVEL?.toUpperCase() as LogLevel | undefined) ?? 'INFO');
  const emit = jsonLineEmitter({ layout: 'powertools', level: LEVELS[min] ?? 'info', keys: { service, ...keys } });
  return {
    debug: (m, e) => emit('debug', m, e),
    info: (m, e) => emit('info', m, e),
    warn: (m, e) => emit('warn', m, e),
    error: (m, e) => emit('error', m, e),
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
