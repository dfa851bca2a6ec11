/**
 * Paths named in POST /backups are attacker-controlled: a `file:` target
 * never follows or truncates a symlink planted at `<path>.partial` and the
 * archive is 0600; a `configFiles` entry that is a symlink (final component)
 * or a FIFO is refused without being followed or blocking.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { readFile, stat, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startAgent, type Agent } from '../../src/agent/agent.js';
import { parseAgentConfig } from '../../src/agent/config.js';
import { BackupRequestError, parseBackupRequest } from '../../src/agent/backup-request.js';
import { silentLogger } from '../../src/agent/log.js';
import { makeDisk, makeTempDir } from '../helpers/agent-process.js';

let tmp: { dir: string; cleanup(): Promise<void> };
let agent: Agent;

beforeAll(async () => {
  tmp = await makeTempDir();
  await makeDisk(join(tmp.dir, 'a.raw'), 512 * 1024, 2);
  agent = await startAgent(parseAgentConfig({ hostId: 'h', stateDir: join(tmp.dir, 'state'), disks: [{ name: 'a', path: join(tmp.dir, 'a.raw') }], nbd: { listen: '127.0.0.1:0' } }), { log: silentLogger });
});
afterAll(async () => {
  await agent?.stop();
  await tmp?.cleanup();
});

async function waitIdle(): Promise<void> {
  for (let i = 0; i < 400 && agent.backups.current()?.status === 'active'; i++) await new Promise((r) => setTimeout(r, 25));
}

describe('paths in backup requests', () => {
  it('a file: target never follows a symlink planted at <path>.partial; archives are 0600', async () => {
    const victim = join(tmp.dir, 'victim');
    await writeFile(victim, 'precious');
    const target = join(tmp.dir, 'b.cwa');
    await symlink(victim, `${target}.partial`);
    await expect(agent.backups.startBackup(parseBackupRequest({ mode: 'full', target: `file:${target}` }))).rejects.toThrow(/b\.cwa\.partial already exists/);
    await waitIdle();
    expect(await readFile(victim, 'utf8')).toBe('precious');

    const ok = join(tmp.dir, 'ok.cwa');
    await agent.backups.startBackup(parseBackupRequest({ mode: 'full', target: `file:${ok}` }));
    await waitIdle();
    expect(agent.backups.current()?.status).toBe('done');
    expect((await stat(ok)).mode & 0o777).toBe(0o600);
  });

  it('configFiles: a symlink is not followed and a FIFO does not block', async () => {
    const secret = join(tmp.dir, 'secret');
    await writeFile(secret, 'root-only');
    await symlink(secret, join(tmp.dir, 'vm.conf'));
    const err = await agent.backups.startBackup(parseBackupRequest({ mode: 'full', target: `file:${join(tmp.dir, 'c.cwa')}`, configFiles: [join(tmp.dir, 'vm.conf')] })).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(BackupRequestError);
    expect((err as BackupRequestError).field).toBe('configFiles[0]');
    expect((err as Error).message).toMatch(/symlink/);
    execFileSync('mkfifo', [join(tmp.dir, 'fifo.conf')]);
    const t0 = Date.now();
    const err2 = await agent.backups.startBackup(parseBackupRequest({ mode: 'full', target: `file:${join(tmp.dir, 'd.cwa')}`, configFiles: [join(tmp.dir, 'fifo.conf')] })).catch((e: unknown) => e);
    expect((err2 as Error).message).toMatch(/not a regular file/);
    expect(Date.now() - t0).toBeLessThan(5000);
  });
});
