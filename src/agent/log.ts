/**
 * The agent logs JSON lines on stderr (one object per line: time, level,
 * msg, plus fields), so both humans (`jq`) and the test helpers that wait
 * for the readiness line can read them.
 */
import { jsonLineEmitter, type Level } from '../log.js';

export type LogLevel = Level;

export interface Logger {
  debug(msg: string, fields?: Record<string, unknown>): void;
  info(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
  error(msg: string, fields?: Record<string, unknown>): void;
}

/** A JSON-lines logger writing to `out` (default stderr), in the agent's layout (src/log.ts). */
export function createLogger(level: LogLevel = 'info', out?: (line: string) => void): Logger {
  const emit = jsonLineEmitter({ layout: 'agent', level, ...(out ? { out } : {}) });
  return {
    debug: (m, f) => emit('debug', m, f),
    info: (m, f) => emit('info', m, f),
    warn: (m, f) => emit('warn', m, f),
    error: (m, f) => emit('error', m, f),
  };
}

/** A logger that drops everything (embedding in tests). */
export const silentLogger: Logger = { debug() {}, info() {}, warn() {}, error() {} };
