/**
 * A disk image replaced while the agent runs (another file renamed over its
 * path): the agent keeps writing to the file it has open, so its dirty
 * bitmap says nothing about the new file. Detected by (device, inode) of
 * the open descriptor against the path, at shutdown and at every backup
 * start: the bitmap is invalidated, the next backup is full with the reason.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { rename } from 'node:fs/promises';
import { join } from 'node:path';
import { startAgent, type Agent } from '../../src/agent/agent.js';
import { parseAgentConfig, type AgentConfig } from '../../src/agent/config.js';
import { parseBackupRequest, type FileDiskStatus } from '../../src/agent/backup-request.js';
import type { Logger } from '../../src/agent/log.js';
import { makeDisk, makeTempDir } from '../helpers/agent-process.js';

const SIZE = 1024 * 1024;
let tmp: { dir: string; cleanup(): Promise<void> } | null = null;
let agent: Agent | null = null;
const errors: { msg: string; fields?: Record<string, unknown> }[] = [];
const log: Logger = { debug() {}, info() {}, warn() {}, error: (msg, fields) => void errors.push({ msg, ...(fields ? { fields } : {}) }) };

afterEach(async () => {
  await agent?.stop();
  agent = null;
  await tmp?.cleanup();
  tmp = null;
  errors.length = 0;
});

async function setup(): Promise<{ config: AgentConfig; dir: string }> {
  tmp = await makeTempDir();
  await makeDisk(join(tmp.dir, 'vda.raw'), SIZE, 5);
  const config = parseAgentConfig({ hostId: 'h', stateDir: join(tmp.dir, 'state'), disks: [{ name: 'vda', path: join(tmp.dir, 'vda.raw') }], nbd: { listen: '127.0.0.1:0' } });
  return { config, dir: tmp.dir };
}

async function fullBackup(a: Agent, dir: string, name: string): Promise<void> {
  const st = await a.backups.startBackup(parseBackupRequest({ mode: 'full', target: `file:${join(dir, name)}` }));
  for (let i = 0; i < 400 && a.backups.current()?.status === 'active'; i++) await new Promise((r) => setTimeout(r, 25));
  expect(a.backups.current()).toMatchObject({ uuid: st.uuid, status: 'done' });
}

/** Another image of the same size renamed over the disk's path. */
async function replaceImage(dir: string): Promise<void> {
  await makeDisk(join(dir, 'new.raw'), SIZE, 99);
  await rename(join(dir, 'new.raw'), join(dir, 'vda.raw'));
}

async function bitmapOf(a: Agent): Promise<FileDiskStatus['bitmap']> {
  return ((await a.backups.disks()).find((d) => d.name === 'vda') as FileDiskStatus).bitmap;
}

describe('disk image replaced while the agent runs', () => {
  it('at shutdown: the bitmap is recorded invalid, not clean for the new file', async () => {
    const { config, dir } = await setup();
    agent = await startAgent(config, { log });
    await fullBackup(agent, dir, 'full.cwa');
    expect((await bitmapOf(agent)).state).toBe('valid');
    await replaceImage(dir);
    await agent.stop();
    expect(errors.map((e) => e.msg)).toContain('disk image replaced: its dirty bitmap is invalid, the next backup is full');

    agent = await startAgent(config, { log });
    const bm = await bitmapOf(agent);
    expect(bm.state).toBe('invalid');
    expect(bm.reason).toMatch(/replaced while the agent had it open/);
    const inc = await agent.backups.startBackup(parseBackupRequest({ mode: 'incremental', target: `file:${join(dir, 'inc.cwa')}` }));
    expect(inc.mode).toBe('full');
    expect(inc.modeReason).toMatch(/replaced/);
  });

  it('at a backup start: the requested incremental becomes full, with the reason, and an error is logged', async () => {
    const { config, dir } = await setup();
    agent = await startAgent(config, { log });
    await fullBackup(agent, dir, 'full.cwa');
    await replaceImage(dir);
    const inc = await agent.backups.startBackup(parseBackupRequest({ mode: 'incremental', target: `file:${join(dir, 'inc.cwa')}` }));
    expect(inc.mode).toBe('full');
    expect(inc.modeReason).toMatch(/vda\.raw was replaced while the agent had it open/);
    expect(errors.some((e) => e.msg.startsWith('disk image replaced') && e.fields?.disk === 'vda')).toBe(true);
  });
});
