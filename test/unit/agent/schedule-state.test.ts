import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { lstat, mkdtemp, readFile, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadScheduleState, saveScheduleState, SCHEDULE_STATE_FILE } from '../../../src/agent/scheduled-backups.js';
import type { Logger } from '../../../src/agent/log.js';

let dir: string;
let warnings: string[];
const log: Logger = { debug() {}, info() {}, warn: (m) => void warnings.push(m), error() {} };

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cowstream-schedstate-'));
  warnings = [];
});
afterEach(async () => rm(dir, { recursive: true, force: true }));

describe('schedule state file', () => {
  const state = { groups: { nightly: { slot: 1_700_000_000_000, mode: 'full' as const, startedAt: 1_700_000_000_500, finishedAt: 1_700_000_060_000, outcome: { ok: true, uuid: '0194' } } } };

  it('round-trips, mode 0600', async () => {
    await saveScheduleState(dir, state);
    expect((await stat(join(dir, SCHEDULE_STATE_FILE))).mode & 0o777).toBe(0o600);
    expect(await loadScheduleState(dir, log)).toEqual(state);
    expect(warnings).toEqual([]);
  });

  it('missing: empty state, no warning', async () => {
    expect(await loadScheduleState(dir, log)).toEqual({ groups: {} });
    expect(warnings).toEqual([]);
  });

  it('damaged or forged: empty state and a warning, never a crash', async () => {
    const p = join(dir, SCHEDULE_STATE_FILE);
    for (const text of ['{not json', '{"groups":{"g":{"slot":"soon","mode":"full"}}}', '{"groups":{"g":{"slot":1,"mode":"delete-everything"}}}', 'null']) {
      await writeFile(p, text);
      warnings = [];
      expect(await loadScheduleState(dir, log)).toEqual({ groups: {} });
      expect(warnings).toHaveLength(1);
    }
    await writeFile(p, Buffer.alloc(2 * 1024 * 1024, 0x20));
    warnings = [];
    expect(await loadScheduleState(dir, log)).toEqual({ groups: {} });
    expect(warnings).toHaveLength(1);
  });

  it('a planted symlink is neither followed on read nor written through', async () => {
    const victim = join(dir, 'victim');
    await writeFile(victim, JSON.stringify(state));
    await symlink(victim, join(dir, SCHEDULE_STATE_FILE));
    expect(await loadScheduleState(dir, log)).toEqual({ groups: {} });
    expect(warnings).toHaveLength(1);
    await saveScheduleState(dir, { groups: {} });
    expect(await readFile(victim, 'utf8')).toBe(JSON.stringify(state));
    expect((await lstat(join(dir, SCHEDULE_STATE_FILE))).isSymbolicLink()).toBe(false);
  });
});
