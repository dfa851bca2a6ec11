/**
 * `metrics.listen`: loopback by default; a wider address only with
 * `allowRemote` (and a warning), since the listener has no authentication.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentConfigError, parseAgentConfig, type AgentConfig } from '../../../src/agent/config.js';
import { isLoopbackHost } from '../../../src/agent/metrics-config.js';
import { makeTempDir } from '../../helpers/agent-process.js';

let tmp: { dir: string; cleanup(): Promise<void> };
beforeAll(async () => {
  tmp = await makeTempDir('cowstream-metrics-config-');
  writeFileSync(join(tmp.dir, 'a.raw'), Buffer.alloc(65536));
});
afterAll(async () => tmp?.cleanup());

function parse(metrics: unknown): AgentConfig {
  return parseAgentConfig({ hostId: 'h', stateDir: join(tmp.dir, 'state'), disks: [{ name: 'a', path: join(tmp.dir, 'a.raw') }], ...(metrics !== undefined ? { metrics } : {}) });
}

function refused(metrics: unknown): AgentConfigError {
  try {
    parse(metrics);
  } catch (err) {
    expect(err).toBeInstanceOf(AgentConfigError);
    return err as AgentConfigError;
  }
  throw new Error(`accepted ${JSON.stringify(metrics)}`);
}

describe('metrics config', () => {
  it('has no TCP listener unless metrics.listen is set', () => {
    expect(parse(undefined).metrics).toEqual({});
    expect(parse({}).metrics).toEqual({});
  });

  it.each([
    ['127.0.0.1:9464', '127.0.0.1', 9464],
    ['127.0.0.2:0', '127.0.0.2', 0],
    ['[::1]:9464', '::1', 9464],
    ['localhost:9464', 'localhost', 9464],
  ])('accepts the loopback address %s without a warning', (listen, host, port) => {
    const c = parse({ listen });
    expect(c.metrics.listen).toEqual({ host, port });
    expect(c.warnings).toEqual([]);
  });

  it.each(['0.0.0.0:9464', '[::]:9464', '10.1.2.3:9464', '127.example.net:9464', 'metrics.example.net:9464'])('refuses the non-loopback address %s without allowRemote, naming the setting and the fix', (listen) => {
    const err = refused({ listen });
    expect(err.field).toBe('metrics.listen');
    expect(err.message).toMatch(/not a loopback address/);
    expect(err.message).toMatch(/127\.0\.0\.1:9464/);
    expect(err.message).toMatch(/metrics\.allowRemote/);
  });

  it('takes a non-loopback address with allowRemote, and warns', () => {
    const c = parse({ listen: '0.0.0.0:9464', allowRemote: true });
    expect(c.metrics.listen).toEqual({ host: '0.0.0.0', port: 9464 });
    expect(c.warnings.join('\n')).toMatch(/metrics\.listen "0\.0\.0\.0:9464" is not loopback.*no authentication/);
  });

  it('refuses malformed values and unknown fields', () => {
    expect(refused({ listen: '9464' }).field).toBe('metrics.listen');
    expect(refused({ listen: '127.0.0.1:70000' }).field).toBe('metrics.listen');
    expect(refused({ port: 9464 }).field).toBe('metrics.port');
  });

  it('warns that allowRemote alone does nothing', () => {
    expect(parse({ allowRemote: true }).warnings).toEqual(['metrics.allowRemote has no effect without metrics.listen']);
  });

  it('counts only literal loopback addresses and localhost as loopback', () => {
    expect(isLoopbackHost('127.0.0.1')).toBe(true);
    expect(isLoopbackHost('::1')).toBe(true);
    expect(isLoopbackHost('0:0:0:0:0:0:0:1')).toBe(true);
    expect(isLoopbackHost('127.0.0.1.nip.io')).toBe(false);
    expect(isLoopbackHost('::ffff:10.0.0.1')).toBe(false);
    expect(isLoopbackHost('0.0.0.0')).toBe(false);
  });
});
