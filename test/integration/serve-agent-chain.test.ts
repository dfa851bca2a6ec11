/**
 * `cowstream serve` of a chain made by the real backup path: the agent's
 * copy-before-write backups (full + 2 dirty-bitmap incrementals, with qemu-io
 * writing over NBD in between), then the served export compared with the
 * disk at the last backup by qemu-img compare and nbdcopy.
 */
import { copyFile, link, mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startAgent, type Agent } from '../../src/agent/agent.js';
import { parseAgentConfig } from '../../src/agent/config.js';
import { AgentClient } from '../../src/agent/control-client.js';
import { silentLogger } from '../../src/agent/log.js';
import { makeDisk, makeTempDir } from '../helpers/agent-process.js';
import { concurrentWorkload, nbdUri } from '../helpers/agent-workload.js';
import { runTool } from '../helpers/nbd-tools.js';
import { startServe } from '../helpers/serve-process.js';

const SIZE = 12 * 1024 * 1024;

describe('serve a chain made by agent backups', () => {
  let tmp: { dir: string; cleanup(): Promise<void> };
  let agent: Agent | null = null;

  beforeAll(async () => {
    tmp = await makeTempDir('cowstream-serve-agent-');
  });

  afterAll(async () => {
    await agent?.stop();
    await tmp?.cleanup();
  });

  it('full + 2 incrementals: qemu-img compare and nbdcopy of the export match the disk at the last backup', async () => {
    const diskPath = join(tmp.dir, 'vda.raw');
    await makeDisk(diskPath, SIZE, 11);
    const chainDir = join(tmp.dir, 'chain');
    await mkdir(chainDir);
    agent = await startAgent(
      parseAgentConfig({
        hostId: 'served',
        stateDir: join(tmp.dir, 'state'),
        disks: [{ name: 'vda', path: diskPath }],
        nbd: { listen: '127.0.0.1:0' },
        store: { bucket: 'unused-bucket', prefix: '', endpoint: 'http://127.0.0.1:9', region: 'us-east-1' },
        // Backups go to files here: the unreachable store fails the start-up checks by design.
        startDegraded: true,
      }),
      { log: silentLogger },
    );
    const client = new AgentClient(agent.controlSocket);
    const uri = nbdUri('127.0.0.1', agent.nbdAddress!.port, 'vda');
    let newest = '';
    let parent: string | null = null;
    for (const [k, mode] of (['full', 'incremental', 'incremental'] as const).entries()) {
      if (k > 0) await concurrentWorkload(uri, 300 + k, SIZE, 2, 20);
      const path = join(tmp.dir, `b${k}.cwa`);
      const st = await client.startBackup({ mode, target: `file:${path}` });
      const done = await client.waitForBackup(st.uuid, undefined, 50);
      expect(done).toMatchObject({ status: 'done', mode, parentUuid: parent });
      parent = done.uuid;
      // Parents are found next to the child as <uuid>.cwa.
      newest = join(chainDir, `${done.uuid}.cwa`);
      await link(path, newest);
    }
    await agent.stop();
    agent = null;
    const original = join(tmp.dir, 'at-last-backup.raw');
    await copyFile(diskPath, original);

    const s = await startServe([newest]);
    try {
      expect(s.out.archive).toMatchObject({ uuid: parent, host: 'served', chainDepth: 3 });
      const exp = s.out.exports[0]!;
      const cmp = await runTool('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', original, exp.uri]);
      expect(cmp.stdout + cmp.stderr).toMatch(/Images are identical/);
      expect(cmp.code).toBe(0);
      const copy = join(tmp.dir, 'copy.raw');
      expect((await runTool('nbdcopy', [exp.uri, copy])).code).toBe(0);
      expect((await readFile(copy)).equals(await readFile(original))).toBe(true);
    } finally {
      expect((await s.stop()).code).toBe(0);
    }
  });
});
