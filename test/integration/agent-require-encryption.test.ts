/**
 * `requireEncryption` in the agent config (docs/security.md): a backup request
 * without a key is refused with a 400 naming the field; with a key the archive
 * is encrypted (format v2, authenticated under the key).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startAgent, type Agent } from '../../src/agent/agent.js';
import { parseAgentConfig } from '../../src/agent/config.js';
import { AgentClient } from '../../src/agent/control-client.js';
import { silentLogger } from '../../src/agent/log.js';
import { createKeyFile, readKeyFile } from '../../src/codec/crypto.js';
import { BufferRangeSource } from '../../src/format/memory.js';
import { openArchive } from '../../src/format/reader.js';
import { makeDisk, makeTempDir } from '../helpers/agent-process.js';

let tmp: { dir: string; cleanup(): Promise<void> };
let agent: Agent;
let client: AgentClient;

beforeAll(async () => {
  tmp = await makeTempDir();
  await makeDisk(join(tmp.dir, 'a.raw'), 1024 * 1024, 3);
  const config = parseAgentConfig({
    hostId: 'h-enc',
    stateDir: join(tmp.dir, 'state'),
    disks: [{ name: 'a', path: join(tmp.dir, 'a.raw') }],
    nbd: { listen: '127.0.0.1:0' },
    requireEncryption: true,
  });
  expect(config.requireEncryption).toBe(true);
  agent = await startAgent(config, { log: silentLogger });
  client = new AgentClient(agent.controlSocket);
});

afterAll(async () => {
  await agent?.stop();
  await tmp?.cleanup();
});

describe('requireEncryption', () => {
  it('refuses a backup without a key, naming the field; accepts one with a key and writes an authenticated archive', async () => {
    const plain = join(tmp.dir, 'plain.cwa');
    const err = await client.startBackup({ mode: 'full', target: `file:${plain}` }).catch((e: unknown) => e);
    expect((err as Error).message).toMatch(/key: this agent requires encryption \(requireEncryption/);
    expect(err).toBeInstanceOf(Error);

    const keyPath = join(tmp.dir, 'k.key');
    await createKeyFile(keyPath);
    const out = join(tmp.dir, 'enc.cwa');
    const started = await client.startBackup({ mode: 'full', target: `file:${out}`, key: keyPath });
    const st = await client.waitForBackup(started.uuid, undefined, 50);
    expect(st.status).toBe('done');
    const r = await openArchive(new BufferRangeSource(await readFile(out)), { key: await readKeyFile(keyPath) });
    expect(r.header.encryption).toBe('aes-256-gcm');
    expect(r.authenticated).toBe(true);
  });

  it('defaults to false', () => {
    const c = parseAgentConfig({ hostId: 'x', stateDir: join(tmp.dir, 's2'), disks: [{ name: 'a', path: join(tmp.dir, 'a.raw') }] });
    expect(c.requireEncryption).toBe(false);
  });
});
