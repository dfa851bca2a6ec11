/**
 * The end-to-end story on one machine, with real peers only:
 *   agent (embedded s3rver + embedded catalogue: dynalite + API + indexer)
 *   → full backup → writes through NBD (qemu-io) → incremental backup
 *   → both archives indexed within 2 s and listed through the catalogue API
 *   → restore requested through the catalogue (the CLI's --via-catalog code)
 *   → the agent's restore poller claims it and restores → byte-identical.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startAgent, type Agent } from '../../src/agent/agent.js';
import { parseAgentConfig } from '../../src/agent/config.js';
import { AgentClient } from '../../src/agent/control-client.js';
import { silentLogger } from '../../src/agent/log.js';
import { CatalogClient } from '../../src/catalog/client.js';
import { runRestoreViaCatalog } from '../../src/cli/commands/restore-via-catalog.js';
import { makeDisk, makeTempDir } from '../helpers/agent-process.js';
import { nbdUri, runQemuIo } from '../helpers/agent-workload.js';
import { readEmbeddedCredentials } from '../../src/store/embedded-credentials.js';

const SIZE = 3 * 1024 * 1024 + 4096; // not a cluster multiple: the partial last cluster must survive too

let tmp: { dir: string; cleanup(): Promise<void> };
let agent: Agent;
let control: AgentClient;
let catalog: CatalogClient;
let token: string;
let restoreDir: string;
let diskPath: string;
const savedPoll = process.env.COWSTREAM_RESTORE_POLL_MS;

async function waitFor<T>(what: string, fn: () => Promise<T | null | undefined>, timeoutMs: number): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn().catch(() => null);
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

async function backup(mode: 'full' | 'incremental'): Promise<{ uuid: string; image: Buffer; doneAt: number }> {
  const st = await control.startBackup({ mode, target: 's3' });
  const done = await control.waitForBackup(st.uuid, undefined, 25);
  const doneAt = Date.now();
  expect(done.status, done.error ?? '').toBe('done');
  expect(done.mode).toBe(mode);
  // No writes happen during the backup, so the file now is the snapshot.
  return { uuid: st.uuid, image: await readFile(diskPath), doneAt };
}

beforeAll(async () => {
  process.env.COWSTREAM_RESTORE_POLL_MS = '100';
  tmp = await makeTempDir('cowstream-e2e-');
  diskPath = join(tmp.dir, 'vda.raw');
  restoreDir = join(tmp.dir, 'restores');
  await mkdir(restoreDir);
  await makeDisk(diskPath, SIZE, 11);
  agent = await startAgent(
    parseAgentConfig({
      hostId: 'e2e-host',
      stateDir: join(tmp.dir, 'state'),
      disks: [{ name: 'vda', path: diskPath }],
      nbd: { listen: '127.0.0.1:0' },
      catalog: { embedded: true },
      restore: { allowedDirs: [restoreDir] },
    }),
    { log: silentLogger },
  );
  control = new AgentClient(agent.controlSocket);
  if (!agent.catalogUrl) throw new Error('agent started without a catalogue');
  token = (await readEmbeddedCredentials(join(tmp.dir, 'state'))).catalogToken;
  catalog = new CatalogClient({ url: agent.catalogUrl, token });
});

afterAll(async () => {
  await agent?.stop();
  await tmp?.cleanup();
  if (savedPoll === undefined) delete process.env.COWSTREAM_RESTORE_POLL_MS;
  else process.env.COWSTREAM_RESTORE_POLL_MS = savedPoll;
});

describe('e2e: backup → catalogue → restore through the agent', () => {
  it('full + incremental, listed, restored via the catalogue byte-identically', async () => {
    const full = await backup('full');
    await waitFor('the full archive in the catalogue', () => catalog.getArchive(full.uuid), 2000);
    expect(Date.now() - full.doneAt).toBeLessThan(2000);

    const { host, port } = agent.nbdAddress!;
    await runQemuIo(nbdUri(host, port, 'vda'), ['write -P 0xa5 65536 131072', 'write -P 0x3c 1048576 4096', `write -z 2097152 65536`, `write -P 0x77 ${SIZE - 4096} 4096`]);
    const inc = await backup('incremental');
    expect(inc.image.equals(full.image)).toBe(false);
    await waitFor('the incremental in the catalogue', () => catalog.getArchive(inc.uuid), 2000);
    expect(Date.now() - inc.doneAt).toBeLessThan(2000);

    const listed = await catalog.listArchives({ host: 'e2e-host', disk: 'vda' });
    expect(listed.items.map((a) => a.uuid)).toEqual([inc.uuid, full.uuid]);
    expect(listed.items[0]!.parentUuid).toBe(full.uuid);
    expect(listed.items[0]!.chainDepth).toBe(1);
    expect(listed.items[0]!.devices).toEqual([{ name: 'vda', size: SIZE }]);
    expect(listed.items[0]!.bytesStored).toBeLessThan(listed.items[1]!.bytesStored); // incremental carries only changes

    // Restore the incremental (chain of 2) and, separately, the full one.
    const incTarget = join(restoreDir, 'inc.raw');
    const job = await runRestoreViaCatalog({ ref: inc.uuid, host: 'e2e-host', to: incTarget, wait: true, catalog: agent.catalogUrl!, catalogToken: token, json: false, pollMs: 50, timeoutMs: 30_000 });
    expect(job.status).toBe('SUCCEEDED');
    expect(job.claimedBy).toMatch(/^e2e-host@/);
    expect((await readFile(incTarget)).equals(inc.image)).toBe(true);

    const fullTarget = join(restoreDir, 'full.raw');
    await runRestoreViaCatalog({ ref: full.uuid, host: 'e2e-host', to: fullTarget, wait: true, catalog: agent.catalogUrl!, catalogToken: token, json: false, pollMs: 50, timeoutMs: 30_000 });
    expect((await readFile(fullTarget)).equals(full.image)).toBe(true);

    // The agent refuses to overwrite its own exported disk even if asked through the catalogue.
    await expect(
      runRestoreViaCatalog({ ref: full.uuid, host: 'e2e-host', to: diskPath, wait: true, catalog: agent.catalogUrl!, catalogToken: token, json: false, pollMs: 50, timeoutMs: 30_000 }),
    ).rejects.toThrow(/outside the allowed|exported disk/);
    expect((await readFile(diskPath)).equals(inc.image)).toBe(true);
  });
});
