/**
 * End to end through processes only: `cowstream agent` (embedded s3rver),
 * guest writes with qemu-io over NBD, `cowstream backup` (full, then
 * incremental, to the default `s3` target; an encrypted one to a file),
 * and `cowstream restore` of the chain from S3 / of the encrypted file:
 * byte-identical to the disk at the last backup.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createKeyFile } from '../../src/codec/crypto.js';
import { openArchive } from '../../src/format/reader.js';
import { FileRangeSource } from '../../src/store/file.js';
import type { BackupStatus } from '../../src/agent/backup-request.js';
import { makeDisk, makeTempDir, runCli, spawnAgent, writeAgentConfig, type AgentProcess } from '../helpers/agent-process.js';
import { nbdUri, runQemuIo } from '../helpers/agent-workload.js';

const SIZE = 3 * 1024 * 1024 + 512;
let tmp: { dir: string; cleanup(): Promise<void> };
let proc: AgentProcess | null = null;
let diskPath: string;

beforeAll(async () => {
  tmp = await makeTempDir('cowstream-agent-e2e-');
  diskPath = join(tmp.dir, 'vda.raw');
  await makeDisk(diskPath, SIZE, 3);
  const cfg = await writeAgentConfig(tmp.dir, { hostId: 'e2e', stateDir: 'state', disks: [{ name: 'vda', path: 'vda.raw' }], nbd: { listen: '127.0.0.1:0' } });
  proc = await spawnAgent(cfg);
});

afterAll(async () => {
  await proc?.kill();
  await tmp?.cleanup();
});

describe('agent + CLI + S3 + restore', () => {
  it('full and incremental to S3 restore byte-identical; encrypted file archive restores with the key', async () => {
    const env = { COWSTREAM_AGENT_SOCKET: proc!.controlSocket };
    const ready = proc!.logs.find((l) => l.msg === 'agent ready')!;
    const s3 = ready.s3 as { endpoint: string; bucket: string; embedded: boolean };
    expect(s3.embedded).toBe(true);
    const uri = nbdUri('127.0.0.1', proc!.nbdPort, 'vda');

    const full = await runCli(['backup', '--wait', '--json'], env);
    expect(full.code, full.stderr).toBe(0);
    const f = JSON.parse(full.stdout.toString()) as BackupStatus;
    expect(f).toMatchObject({ status: 'done', mode: 'full', target: 's3', key: `archives/e2e/${f.uuid}.cwa` });

    await runQemuIo(uri, ['write -P 0x42 100000 70000', 'write -z 1048576 65536', `discard 2097152 131072`, `write -P 0x43 ${SIZE - 512} 512`]);
    const inc = await runCli(['backup', '--incremental', '--wait', '--json'], env);
    expect(inc.code, inc.stderr).toBe(0);
    const i = JSON.parse(inc.stdout.toString()) as BackupStatus;
    expect(i).toMatchObject({ status: 'done', mode: 'incremental', parentUuid: f.uuid });
    const expected = await readFile(diskPath);

    const s3env = { AWS_REGION: 'us-east-1' };
    const out = join(tmp.dir, 'restored');
    await mkdir(out); // a directory target gets <NAME>.raw
    const r = await runCli(['restore', i.uuid, '--to', out, '--bucket', s3.bucket, '--endpoint', s3.endpoint, '--state', join(tmp.dir, 'state'), '--json'], s3env);
    expect(r.code, r.stderr + r.stdout.toString()).toBe(0);
    expect((await readFile(join(out, 'vda.raw'))).equals(expected)).toBe(true);

    // Encryption: the agent reads the key file named in the request.
    const keyPath = join(tmp.dir, 'backup.key');
    await createKeyFile(keyPath);
    const encPath = join(tmp.dir, 'enc.cwa');
    const enc = await runCli(['backup', '--key', keyPath, '--to', encPath, '--wait', '--json'], env);
    expect(enc.code, enc.stderr).toBe(0);
    expect(JSON.parse(enc.stdout.toString()).status).toBe('done');
    const src = await FileRangeSource.open(encPath);
    const reader = await openArchive(src);
    expect(reader.header.encryption).toBe('aes-256-gcm');
    await src.close();
    const out2 = join(tmp.dir, 'restored-enc.raw');
    const r2 = await runCli(['restore', encPath, '--to', out2, '--key', keyPath]);
    expect(r2.code, r2.stderr).toBe(0);
    expect((await readFile(out2)).equals(expected)).toBe(true);

    expect(await proc!.stop()).toBe(0);
    proc = null;
  }, 120_000);
});
