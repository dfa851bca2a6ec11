/**
 * Races around the agent's backup bookkeeping: concurrent POST /backups,
 * a stop() that overlaps a starting backup, a cancel of a backup that has
 * not created its run yet. Exactly one request may win, at once, and the
 * winner is the backup that status, cancel and stop() see.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startAgent, type Agent } from '../../src/agent/agent.js';
import { parseAgentConfig } from '../../src/agent/config.js';
import { parseBackupRequest } from '../../src/agent/backup-request.js';
import { silentLogger } from '../../src/agent/log.js';
import { ConflictError } from '../../src/errors.js';
import { makeDisk, makeTempDir } from '../helpers/agent-process.js';
import { SlowSink } from '../helpers/agent-sinks.js';

const SIZE = 4 * 1024 * 1024;
let tmp: { dir: string; cleanup(): Promise<void> } | null = null;
let agent: Agent | null = null;

afterEach(async () => {
  await agent?.stop();
  agent = null;
  await tmp?.cleanup();
  tmp = null;
});

async function slowAgent(): Promise<{ agent: Agent; dir: string }> {
  tmp = await makeTempDir();
  await makeDisk(join(tmp.dir, 'a.raw'), SIZE, 3);
  // Config files make POST /backups await file reads before its run exists (the race window).
  for (let i = 0; i < 8; i++) await writeFile(join(tmp.dir, `vm${i}.conf`), `cores: ${i}\n`.repeat(2000));
  const config = parseAgentConfig({ hostId: 'h1', stateDir: join(tmp.dir, 'state'), disks: [{ name: 'a', path: join(tmp.dir, 'a.raw') }], nbd: { listen: '127.0.0.1:0' } });
  agent = await startAgent(config, { log: silentLogger, wrapSink: (s) => new SlowSink(s, 512 * 1024) });
  return { agent, dir: tmp.dir };
}

function request(dir: string, target = `file:${join(dir, `out-${Math.random().toString(16).slice(2)}.cwa`)}`): ReturnType<typeof parseBackupRequest> {
  return parseBackupRequest({ mode: 'full', target, configFiles: Array.from({ length: 8 }, (_, i) => join(dir, `vm${i}.conf`)) });
}

describe('concurrent POST /backups', () => {
  it('lets exactly one of many simultaneous requests win; status and cancel see the winner', async () => {
    const { agent: a, dir } = await slowAgent();
    const results = await Promise.allSettled(Array.from({ length: 12 }, () => a.backups.startBackup(request(dir))));
    const won = results.filter((r) => r.status === 'fulfilled');
    const lost = results.filter((r) => r.status === 'rejected');
    expect(won).toHaveLength(1);
    for (const r of lost) expect((r as PromiseRejectedResult).reason).toBeInstanceOf(ConflictError);
    const winner = (won[0] as PromiseFulfilledResult<{ uuid: string; status: string }>).value;
    expect(winner.status).toBe('active');
    expect(a.backups.current()?.uuid).toBe(winner.uuid);
    const cancelled = await a.backups.cancel();
    expect(cancelled.uuid).toBe(winner.uuid);
    expect(cancelled.status).toBe('cancelled');
    // After the winner is gone a new backup may start at once.
    const next = await a.backups.startBackup(request(dir));
    expect(next.status).toBe('active');
    await a.backups.cancel();
  });

  it('stop() waits for a backup that was still starting (no run left active on closed disks)', async () => {
    const { agent: a, dir } = await slowAgent();
    const started = a.backups.startBackup(request(dir)).then(
      (s) => s,
      (e: unknown) => e,
    );
    await a.stop();
    agent = null;
    const outcome = await started;
    // Whatever the request answered, nothing runs after stop() returned.
    await new Promise((r) => setTimeout(r, 300));
    expect(a.backups.current()?.status ?? 'none').not.toBe('active');
    expect(a.disks[0]!.dirty.isFrozen).toBe(false);
    if (!(outcome instanceof Error)) expect(['cancelled', 'error']).toContain(a.backups.current()?.status);
    await expect(a.backups.startBackup(request(dir))).rejects.toThrow(ConflictError);
  });

  it('a cancel that arrives while the winner is still starting cancels that backup', async () => {
    const { agent: a, dir } = await slowAgent();
    const started = a.backups.startBackup(request(dir));
    const cancelled = await a.backups.cancel();
    const answer = await started;
    expect(cancelled.uuid).toBe(answer.uuid);
    expect(a.backups.current()?.status).toBe('cancelled');
    expect(a.disks[0]!.dirty.isFrozen).toBe(false);
  });
});
