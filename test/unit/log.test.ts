import { describe, expect, it } from 'vitest';
import { createLogger as createAgentLogger } from '../../src/agent/log.js';
import { jsonLineEmitter } from '../../src/log.js';

describe('JSON-lines logger (src/log.ts)', () => {
  it('writes one JSON object per line in the agent layout, dropping levels below the minimum', () => {
    const lines: string[] = [];
    const log = createAgentLogger('info', (l) => lines.push(l));
    log.debug('hidden');
    log.info('agent ready', { hostId: 'h1' });
    log.error('failed', { error: new Error('boom') });
    expect(lines).toHaveLength(2);
    expect(lines.every((l) => l.endsWith('\n') && !l.slice(0, -1).includes('\n'))).toBe(true);
    expect(JSON.parse(lines[0]!)).toMatchObject({ level: 'info', msg: 'agent ready', hostId: 'h1', time: expect.any(String) });
    expect(JSON.parse(lines[1]!).error).toEqual({ name: 'Error', message: 'boom' });
  });

  it('writes the Powertools layout with its keys, and never throws on what it cannot print', () => {
    const lines: string[] = [];
    const emit = jsonLineEmitter({ layout: 'powertools', level: 'debug', keys: { service: 'cowstream-catalog' }, out: (l) => lines.push(l) });
    emit('warn', 'indexed', { key: 'archives/h/x.cwa' });
    const cyclic: Record<string, unknown> = {};
    cyclic.self = cyclic;
    expect(() => emit('info', 'odd', { cyclic })).not.toThrow();
    expect(JSON.parse(lines[0]!)).toMatchObject({ level: 'WARN', message: 'indexed', service: 'cowstream-catalog', timestamp: expect.any(String) });
    expect(JSON.parse(lines[1]!)).toMatchObject({ level: 'INFO', message: 'odd' });
  });
});
