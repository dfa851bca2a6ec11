/**
 * Encrypted archives restored through the catalogue: the agent decrypts with
 * `restore.keyFile`; a bad key file stops the agent at start with an error
 * naming the field; an agent without the key fails the job saying so.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startAgent, type Agent } from '../../src/agent/agent.js';
import { parseAgentConfig } from '../../src/agent/config.js';
import { AgentClient } from '../../src/agent/control-client.js';
import { silentLogger } from '../../src/agent/log.js';
import { createKeyFile } from '../../src/codec/crypto.js';
import { ConfigError } from '../../src/errors.js';
import { CatalogClient } from '../../src/catalog/client.js';
import { runRestoreViaCatalog } from '../../src/cli/commands/restore-via-catalog.js';
import { makeDisk, makeTempDir } from '../helpers/agent-process.js';
import { readEmbeddedCredentials } from '../../src/store/embedded-credentials.js';

const SIZE = 2 * 1024 * 1024 + 512;

let tmp: { dir: string; cleanup(): Promise<void> };
let agent: Agent | undefined;
let diskPath: string;
let restoreDir: string;
let keyPath: string;
const savedPoll = process.env.COWSTREAM_RESTORE_POLL_MS;

function config(extra: Record<string, unknown>): ReturnType<typeof parseAgentConfig> {
  return parseAgentConfig({
    hostId: 'enc-host',
    stateDir: join(tmp.dir, 'state'),
    disks: [{ name: 'vda', path: diskPath }],
    nbd: { listen: '127.0.0.1:0' },
    catalog: { embedded: true },
    restore: { allowedDirs: [restoreDir], ...extra },
  });
}

beforeAll(async () => {
  process.env.COWSTREAM_RESTORE_POLL_MS = '100';
  tmp = await makeTempDir('cowstream-e2e-enc-');
  diskPath = join(tmp.dir, 'vda.raw');
  restoreDir = join(tmp.dir, 'restores');
  keyPath = join(tmp.dir, 'backup.key');
  await mkdir(restoreDir);
  await makeDisk(diskPath, SIZE, 5);
  await createKeyFile(keyPath);
});

afterAll(async () => {
  await agent?.stop();
  await tmp?.cleanup();
  if (savedPoll === undefined) delete process.env.COWSTREAM_RESTORE_POLL_MS;
  else process.env.COWSTREAM_RESTORE_POLL_MS = savedPoll;
});

describe('e2e: encrypted archive restored through the catalogue', () => {
  it('a bad restore.keyFile stops the agent at start, naming the field', async () => {
    const bad = join(tmp.dir, 'short.key');
    await writeFile(bad, Buffer.alloc(7));
    await expect(startAgent(config({ keyFile: bad }), { log: silentLogger })).rejects.toSatisfy(
      (e: unknown) => e instanceof ConfigError && /restore\.keyFile/.test((e as Error).message),
    );
  });

  it('the agent decrypts with restore.keyFile; the restore is byte-identical', async () => {
    agent = await startAgent(config({ keyFile: keyPath }), { log: silentLogger });
    const control = new AgentClient(agent.controlSocket);
    const st = await control.startBackup({ mode: 'full', target: 's3', key: keyPath });
    const done = await control.waitForBackup(st.uuid, undefined, 25);
    expect(done.status, done.error ?? '').toBe('done');
    const image = await readFile(diskPath);
    const token = (await readEmbeddedCredentials(agent.config.stateDir)).catalogToken;
    const catalog = new CatalogClient({ url: agent.catalogUrl!, token });
    const deadline = Date.now() + 5000;
    while (!(await catalog.getArchive(st.uuid).catch(() => null))) {
      if (Date.now() > deadline) throw new Error('the encrypted archive was not indexed within 5 s');
      await new Promise((r) => setTimeout(r, 20));
    }

    const target = join(restoreDir, 'enc.raw');
    const job = await runRestoreViaCatalog({ ref: st.uuid, host: 'enc-host', to: target, wait: true, catalog: agent.catalogUrl!, catalogToken: token, json: false, pollMs: 50, timeoutMs: 30_000 });
    expect(job.status).toBe('SUCCEEDED');
    expect((await readFile(target)).equals(image)).toBe(true);
    await agent.stop();
    agent = undefined;

    // The same agent without the key: the job fails and says why.
    agent = await startAgent(config({}), { log: silentLogger });
    await expect(
      runRestoreViaCatalog({ ref: st.uuid, host: 'enc-host', to: join(restoreDir, 'nokey.raw'), wait: true, catalog: agent.catalogUrl!, catalogToken: token, json: false, pollMs: 50, timeoutMs: 30_000 }),
    ).rejects.toThrow(/key|encrypt/i);
  });
});
