/**
 * Real NBD clients against the agent's exports: qemu-io (read, write,
 * zero, discard, flush), qemu-img convert/compare, nbdcopy, nbdinfo --list.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startAgent, type Agent } from '../../src/agent/agent.js';
import { parseAgentConfig } from '../../src/agent/config.js';
import { silentLogger } from '../../src/agent/log.js';
import { makeDisk, makeTempDir } from '../helpers/agent-process.js';
import { nbdUri, runQemuIo } from '../helpers/agent-workload.js';

const run = promisify(execFile);
const SIZE = 4 * 1024 * 1024;

let tmp: { dir: string; cleanup(): Promise<void> };
let agent: Agent;
let uri: string;

beforeAll(async () => {
  tmp = await makeTempDir();
  await makeDisk(join(tmp.dir, 'vda.raw'), SIZE, 7);
  await makeDisk(join(tmp.dir, 'vdb.raw'), 1024 * 1024, 8);
  agent = await startAgent(
    parseAgentConfig({
      hostId: 'interop',
      stateDir: join(tmp.dir, 'state'),
      disks: [
        { name: 'vda', path: join(tmp.dir, 'vda.raw') },
        { name: 'vdb', path: join(tmp.dir, 'vdb.raw') },
      ],
      nbd: { listen: '127.0.0.1:0', socket: join(tmp.dir, 'nbd.sock') },
      // An S3 bucket that is never used here: no embedded s3rver needed.
      store: { bucket: 'unused-bucket', prefix: 'p', endpoint: 'http://127.0.0.1:9', region: 'us-east-1' },
    }),
    { log: silentLogger },
  );
  uri = nbdUri('127.0.0.1', agent.nbdAddress!.port, 'vda');
});

afterAll(async () => {
  await agent?.stop();
  await tmp?.cleanup();
});

describe('NBD interop through the agent', () => {
  it('nbdinfo --list shows both exports with their sizes', async () => {
    const { stdout } = await run('nbdinfo', ['--list', '--json', `nbd://127.0.0.1:${agent.nbdAddress!.port}`]);
    const info = JSON.parse(stdout) as { exports: { 'export-name': string; 'export-size': number }[] };
    const byName = Object.fromEntries(info.exports.map((e) => [e['export-name'], e['export-size']]));
    expect(byName).toEqual({ vda: SIZE, vdb: 1024 * 1024 });
  });

  it('qemu-io write/read/zero/discard/flush land in the image file', async () => {
    await runQemuIo(uri, ['write -P 0xab 65024 4096', 'write -z 1048576 131072', 'discard 2097152 65536', 'flush', 'read -P 0xab 65024 4096', 'read -P 0 1048576 131072', 'read -P 0 2097152 65536']);
    const img = await readFile(join(tmp.dir, 'vda.raw'));
    expect(img.subarray(65024, 65024 + 4096).every((b) => b === 0xab)).toBe(true);
    expect(img.subarray(1048576, 1048576 + 131072).every((b) => b === 0)).toBe(true);
    expect(img.subarray(2097152, 2097152 + 65536).every((b) => b === 0)).toBe(true);
    // A read beyond the end is an error, and the export keeps working afterwards.
    await expect(runQemuIo(uri, [`read ${SIZE} 512`])).rejects.toThrow();
    await runQemuIo(uri, ['read -P 0xab 65024 512']);
  });

  it('qemu-img convert out of the export equals the image; compare agrees; nbdcopy too', async () => {
    const out = join(tmp.dir, 'conv.raw');
    await run('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', uri, out]);
    const a = await readFile(out);
    const b = await readFile(join(tmp.dir, 'vda.raw'));
    expect(a.equals(b)).toBe(true);
    await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', uri, join(tmp.dir, 'vda.raw')]);

    const copy = join(tmp.dir, 'nbdcopy.raw');
    await run('nbdcopy', [uri, copy]);
    expect((await readFile(copy)).equals(b)).toBe(true);

    // nbdcopy into the export over the Unix socket (write path) and back.
    const src = join(tmp.dir, 'vdb-src.raw');
    await makeDisk(src, 1024 * 1024, 99);
    await run('nbdcopy', [src, `nbd+unix:///vdb?socket=${join(tmp.dir, 'nbd.sock')}`]);
    expect((await readFile(join(tmp.dir, 'vdb.raw'))).equals(await readFile(src))).toBe(true);
  });
});
