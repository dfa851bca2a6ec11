/**
 * File-level restore (docs/file-restore.md): a file is read back out of an
 * ext4 file system in a backed-up disk, served by an agent process
 * (`cowstream agent`, embedded S3) through `cowstream export add`.
 * The image is built with `mkfs.ext4 -d` (e2fsprogs), backed up, served,
 * and read by `debugfs -R 'cat …'` from a copy made by nbdcopy, and
 * directly from the export mapped as a file by nbdfuse where FUSE works.
 * A missing tool skips only the case that needs it, saying which.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFile, spawn, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { AgentClient } from '../../src/agent/control-client.js';
import type { ExportInfo } from '../../src/agent/archive-exports.js';
import { makeTempDir, runCli, spawnAgent, writeAgentConfig, type AgentProcess } from '../helpers/agent-process.js';
import { runTool } from '../helpers/nbd-tools.js';

const has = (tool: string): boolean => spawnSync('sh', ['-c', `command -v ${tool}`]).status === 0;
const missing = ['mkfs.ext4', 'debugfs', 'nbdcopy'].filter((t) => !has(t));
const fuseWhy = !has('nbdfuse') ? 'nbdfuse is not installed' : !existsSync('/dev/fuse') ? '/dev/fuse is missing' : process.getuid?.() !== 0 && !has('fusermount3') ? 'fusermount3 is not installed' : null;

const MOTD = 'restored from the bucket, one file at a time\n';
const NESTED = Buffer.alloc(300 * 1024, 'x'); // spans many blocks (and extents)
for (let i = 0; i < NESTED.length; i += 4096) NESTED.write(`block ${i / 4096}\n`, i);

let tmp: { dir: string; cleanup(): Promise<void> };
let agent: AgentProcess;
let exported: ExportInfo;

/**
 * debugfs prints its banner on stderr; stdout is the file. Asynchronous: the
 * agent serving the export lives in this process.
 */
function debugfsCat(image: string, path: string): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    execFile('debugfs', ['-R', `cat ${path}`, image], { encoding: 'buffer', maxBuffer: 16 * 1024 * 1024, timeout: 30_000 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`debugfs failed: ${stderr.toString()}`, { cause: err }));
      else resolve(stdout);
    });
  });
}

describe.skipIf(missing.length > 0)(`file-level restore from a served ext4 disk${missing.length > 0 ? ` (skipped: ${missing.join(', ')} not installed)` : ''}`, () => {
  beforeAll(async () => {
    tmp = await makeTempDir('cowstream-file-restore-');
    const src = join(tmp.dir, 'fs');
    await mkdir(join(src, 'etc'), { recursive: true });
    await mkdir(join(src, 'srv', 'data'), { recursive: true });
    await writeFile(join(src, 'etc', 'motd'), MOTD);
    await writeFile(join(src, 'srv', 'data', 'big.bin'), NESTED);
    const image = join(tmp.dir, 'vda.raw');
    await writeFile(image, Buffer.alloc(0));
    const mk = await runTool('mkfs.ext4', ['-q', '-F', '-d', src, image, '8M']);
    expect(mk.code, mk.stderr).toBe(0);
    const config = await writeAgentConfig(tmp.dir, { hostId: 'fs-host', stateDir: join(tmp.dir, 'state'), disks: [{ name: 'vda', path: image, readOnly: true }] });
    agent = await spawnAgent(config);
    const control = new AgentClient(agent.controlSocket);
    const st = await control.startBackup({ mode: 'full' });
    expect((await control.waitForBackup(st.uuid, undefined, 50)).status).toBe('done');
    const add = await runCli(['export', 'add', st.uuid, '--json', '--agent', agent.controlSocket]);
    expect(add.code, add.stderr).toBe(0);
    exported = JSON.parse(add.stdout.toString()) as ExportInfo;
  }, 60_000);

  afterAll(async () => {
    await agent?.stop();
    await tmp?.cleanup();
  });

  it('reads known files back with debugfs from an nbdcopy of the export', async () => {
    const copy = join(tmp.dir, 'copy.raw');
    const cp = await runTool('nbdcopy', [exported.exports[0]!.uris[0]!, copy]);
    expect(cp.code, cp.stderr).toBe(0);
    expect((await debugfsCat(copy, '/etc/motd')).toString()).toBe(MOTD);
    expect((await debugfsCat(copy, '/srv/data/big.bin')).equals(NESTED)).toBe(true);
  });

  it.skipIf(fuseWhy !== null)(`reads them straight from the export mapped by nbdfuse${fuseWhy ? ` (skipped: ${fuseWhy})` : ''}`, async () => {
    const mnt = join(tmp.dir, 'mnt');
    await mkdir(mnt);
    const fuse = spawn('nbdfuse', ['-r', join(mnt, 'vda'), exported.exports[0]!.uris[0]!], { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    fuse.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    const exited = new Promise<void>((r) => fuse.once('exit', () => r()));
    try {
      const deadline = Date.now() + 10_000;
      while (!existsSync(join(mnt, 'vda'))) {
        if (Date.now() > deadline || fuse.exitCode !== null) throw new Error(`nbdfuse did not map the export: ${err}`);
        await new Promise((r) => setTimeout(r, 50));
      }
      expect((await debugfsCat(join(mnt, 'vda'), '/etc/motd')).toString()).toBe(MOTD);
      expect((await debugfsCat(join(mnt, 'vda'), '/srv/data/big.bin')).equals(NESTED)).toBe(true);
    } finally {
      // nbdfuse exits when its mount goes away.
      const um = has('fusermount3') ? await runTool('fusermount3', ['-u', mnt]) : await runTool('umount', [mnt]);
      if (um.code !== 0) fuse.kill('SIGTERM');
      await exited;
    }
  });
});
