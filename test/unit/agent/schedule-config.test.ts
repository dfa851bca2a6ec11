import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AgentConfigError, parseAgentConfig } from '../../../src/agent/config.js';
import { runCliInProcess } from '../../helpers/cli-inprocess.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cowstream-schedcfg-'));
  await writeFile(join(dir, 'vda.raw'), Buffer.alloc(65536));
  await writeFile(join(dir, 'vdb.raw'), Buffer.alloc(65536));
});
afterAll(async () => rm(dir, { recursive: true, force: true }));

const base = (schedules: unknown[], extra: Record<string, unknown> = {}): Record<string, unknown> => ({
  hostId: 'h1',
  stateDir: 'state',
  disks: [{ name: 'vda', path: 'vda.raw' }, { name: 'vdb', path: 'vdb.raw' }],
  qemu: [
    { qmpSocket: '/run/a.qmp', drives: ['drive0=vm1-root'] },
    { qmpSocket: '/run/b.qmp', drives: ['drive0=vm2-root'] },
  ],
  schedules,
  ...extra,
});

function fieldOf(input: unknown): string {
  try {
    parseAgentConfig(input, dir);
  } catch (err) {
    expect(err).toBeInstanceOf(AgentConfigError);
    expect((err as Error).message).toContain((err as AgentConfigError).field);
    return (err as AgentConfigError).field;
  }
  throw new Error('config was accepted');
}

describe('agent config: schedules', () => {
  it('accepts a group with the request options and a retention policy', () => {
    const c = parseAgentConfig(
      base([{ name: 'nightly', disks: ['vda', 'vdb'], full: '0 3 * * 0', incremental: '0 3 * * 1-6', jitterSeconds: 600, timezone: 'Europe/Paris', key: '/etc/cowstream/key', compressionLevel: 5, speed: '50M', retention: { keepDaily: 7, keepWeekly: 4 } }]),
      dir,
    );
    expect(c.schedules).toEqual([
      {
        name: 'nightly',
        disks: ['vda', 'vdb'],
        full: '0 3 * * 0',
        incremental: '0 3 * * 1-6',
        jitterSeconds: 600,
        timezone: 'Europe/Paris',
        retention: { keepDaily: 7, keepWeekly: 4 },
        request: { target: { kind: 's3' }, key: '/etc/cowstream/key', compressionLevel: 5, speed: 50 * 1024 * 1024 },
      },
    ]);
    expect(parseAgentConfig(base([]), dir).schedules).toEqual([]);
    expect(parseAgentConfig({ ...base([]), schedules: undefined }, dir).schedules).toEqual([]);
    // Drives of one qemu entry are a valid selection.
    expect(parseAgentConfig(base([{ name: 'vm1', disks: ['vm1-root'], incremental: '*/15 * * * *' }]), dir).schedules[0]!.disks).toEqual(['vm1-root']);
  });

  it('names the bad field', () => {
    expect(fieldOf(base([{ name: 'n', full: 'every night' }]))).toBe('schedules[0].full');
    expect(fieldOf(base([{ name: 'n', full: '0 3 * * *', incremental: '61 * * * *' }]))).toBe('schedules[0].incremental');
    expect(fieldOf(base([{ name: 'n' }]))).toBe('schedules[0].full');
    expect(fieldOf(base([{ name: 'n', disks: ['vda', 'nope'], full: '0 3 * * *' }]))).toBe('schedules[0].disks[1]');
    expect(fieldOf(base([{ name: 'n', disks: ['vda', 'vm1-root'], full: '0 3 * * *' }]))).toBe('schedules[0].disks');
    expect(fieldOf(base([{ name: 'n', disks: ['vm1-root', 'vm2-root'], full: '0 3 * * *' }]))).toBe('schedules[0].disks');
    expect(fieldOf(base([{ name: 'n', full: '0 3 * * *', timezone: 'Mars/Olympus' }]))).toBe('schedules[0].timezone');
    expect(fieldOf(base([{ name: 'n', full: '0 3 * * *', target: '-' }]))).toBe('schedules[0].target');
    expect(fieldOf(base([{ name: 'n', full: '0 3 * * *', target: 'file:/backups/x.cwa' }]))).toBe('schedules[0].target');
    expect(fieldOf(base([{ name: 'n', full: '0 3 * * *', key: 'relative.key' }]))).toBe('schedules[0].key');
    expect(fieldOf(base([{ name: 'n', full: '0 3 * * *', mode: 'full' }]))).toBe('schedules[0].mode');
    expect(fieldOf(base([{ name: 'n', full: '0 3 * * *', retention: { keepForever: 1 } }]))).toBe('schedules[0].retention.keepForever');
    expect(fieldOf(base([{ name: 'n', full: '0 3 * * *', jitterSeconds: -1 }]))).toBe('schedules[0].jitterSeconds');
    expect(fieldOf(base([{ name: 'n', full: '0 3 * * *' }, { name: 'n', incremental: '0 * * * *' }]))).toBe('schedules[1].name');
    expect(fieldOf(base([{ name: 'a b', full: '0 3 * * *' }]))).toBe('schedules[0].name');
  });

  it('`cowstream agent` exits 2 naming the field for a bad cron and an unknown disk', async () => {
    for (const [schedule, field] of [
      [{ name: 'n', full: '* * * nope *' }, 'schedules[0].full'],
      [{ name: 'n', disks: ['vdz'], full: '0 3 * * *' }, 'schedules[0].disks[0]'],
    ] as const) {
      const p = join(dir, 'agent.json');
      await writeFile(p, JSON.stringify({ ...base([schedule]), stateDir: join(dir, 'state'), disks: [{ name: 'vda', path: join(dir, 'vda.raw') }], qemu: [] }));
      const r = await runCliInProcess(['agent', '--config', p]);
      expect(r.code).toBe(2);
      expect(r.stderr).toContain(field);
    }
  });
});
