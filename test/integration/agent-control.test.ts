/**
 * The control API and the backup/status/cancel CLI against a real agent
 * (in-process, embedded s3rver as the default store).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { request } from 'node:http';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { HeadObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { startAgent, type Agent } from '../../src/agent/agent.js';
import { AgentClient } from '../../src/agent/control-client.js';
import { silentLogger } from '../../src/agent/log.js';
import type { BackupStatus } from '../../src/agent/backup-request.js';
import { makeDisk, makeTempDir, runCli } from '../helpers/agent-process.js';
import { twoDiskAgentConfig } from '../helpers/agent-two-disks.js';
import { applyArchive } from '../helpers/agent-archive.js';
import { SlowSink } from '../helpers/agent-sinks.js';
import { readEmbeddedCredentials } from '../../src/store/embedded-credentials.js';

const execFileP = promisify(execFile);
const SIZE = 2 * 1024 * 1024;

let tmp: { dir: string; cleanup(): Promise<void> };
let agent: Agent;
let client: AgentClient;
let diskA: Buffer;
let diskB: Buffer;
const slow = { on: false };

function http(method: string, path: string, body?: string): Promise<{ status: number; json: any; headers: Record<string, unknown> }> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath: agent.controlSocket, method, path }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (text += d));
      res.on('end', () => {
        try {
          resolve({ status: res.statusCode ?? 0, json: JSON.parse(text), headers: res.headers });
        } catch (err) {
          reject(new Error(`non-JSON response ${res.statusCode}: ${text}`, { cause: err }));
        }
      });
    });
    req.on('error', reject);
    req.end(body);
  });
}

async function waitDone(uuid: string): Promise<BackupStatus> {
  return client.waitForBackup(uuid, undefined, 50);
}

beforeAll(async () => {
  tmp = await makeTempDir();
  diskA = await makeDisk(join(tmp.dir, 'a.raw'), SIZE, 1);
  diskB = await makeDisk(join(tmp.dir, 'b.raw'), SIZE + 12345, 2); // not a cluster multiple
  const config = twoDiskAgentConfig(tmp.dir, {
    nbd: { listen: '127.0.0.1:0' },
  });
  agent = await startAgent(config, { log: silentLogger, wrapSink: (s) => (slow.on ? new SlowSink(s, 256 * 1024) : s) });
  client = new AgentClient(agent.controlSocket);
});

afterAll(async () => {
  await agent?.stop();
  await tmp?.cleanup();
});

describe('control API', () => {
  it('answers unknown routes, wrong methods and bad bodies with JSON errors', async () => {
    const root = await http('GET', '/');
    expect(root.status).toBe(200);
    expect(root.json).toMatchObject({ hostId: 'h1', disks: ['a', 'b'] });

    const nf = await http('GET', '/nope');
    expect(nf.status).toBe(404);
    expect(nf.json.error.message).toMatch(/unknown route/);

    const wm = await http('DELETE', '/disks');
    expect(wm.status).toBe(405);
    expect(wm.headers.allow).toBe('GET');
    expect(wm.json.error.message).toMatch(/DELETE/);

    const bj = await http('POST', '/backups', '{"mode": ');
    expect(bj.status).toBe(400);
    expect(bj.json.error.message).toMatch(/not valid JSON/);

    const bm = await http('POST', '/backups', JSON.stringify({ mode: 'fast' }));
    expect(bm.status).toBe(400);
    expect(bm.json.error.field).toBe('mode');

    const bd = await http('POST', '/backups', JSON.stringify({ mode: 'full', disks: ['a', 'zz'] }));
    expect(bd.status).toBe(400);
    expect(bd.json.error.field).toBe('disks[1]');
    expect(bd.json.error.message).toMatch(/unknown disk "zz"/);

    const bf = await http('POST', '/backups', JSON.stringify({ mode: 'full', fleecing: { dir: 'rel' , maxBytes: 1 } }));
    expect(bf.status).toBe(400);
    expect(bf.json.error.field).toBe('fleecing.dir');

    const bc = await http('POST', '/backups', JSON.stringify({ mode: 'full', configFiles: ['/nonexistent/x.conf'] }));
    expect(bc.status).toBe(400);
    expect(bc.json.error.field).toBe('configFiles[0]');

    const bk = await http('POST', '/backups', JSON.stringify({ mode: 'full', key: '/nonexistent/backup.key' }));
    expect(bk.status).toBe(400);
    expect(bk.json.error.field).toBe('key');

    const none = await http('GET', '/backups/current');
    expect(none.status).toBe(404);
    const nc = await http('POST', '/backups/current/cancel');
    expect(nc.status).toBe(409);
  });

  it('lists disks with invalid bitmaps before the first full backup', async () => {
    const disks = await client.disks();
    expect(disks.map((d) => [d.name, d.size, d.bitmap.state, d.lastBackup])).toEqual([
      ['a', SIZE, 'invalid', null],
      ['b', SIZE + 12345, 'invalid', null],
    ]);
    expect(disks[0]!.bitmap.reason).toMatch(/no full backup/);
  });

  it('turns an impossible incremental into a full backup and says why; a second backup gets 409; cancel reclaims', async () => {
    slow.on = true;
    const st = await client.startBackup({ mode: 'incremental', target: `file:${join(tmp.dir, 'cancelled.cwa')}` });
    expect(st.mode).toBe('full');
    expect(st.modeReason).toMatch(/no full backup/);
    const second = await http('POST', '/backups', JSON.stringify({ mode: 'full', target: `file:${join(tmp.dir, 'second.cwa')}` }));
    expect(second.status).toBe(409);
    expect(second.json.error.message).toContain(st.uuid);
    const cur = await client.status();
    expect(cur).toMatchObject({ status: 'active', uuid: st.uuid, mode: 'full', requestedMode: 'incremental' });
    const c = await client.cancel();
    // cancel answers the final status unless winding down takes > 10 s (a loaded CI machine).
    const final = c.status === 'active' ? await waitDone(st.uuid) : c;
    expect(final.status).toBe('cancelled');
    slow.on = false;
    // The cancelled full did not validate the bitmaps, and left no archive file.
    expect((await client.disks())[0]!.bitmap.state).toBe('invalid');
    await expect(readFile(join(tmp.dir, 'cancelled.cwa'))).rejects.toThrow(/ENOENT/);
    await expect(readFile(join(tmp.dir, 'cancelled.cwa.partial'))).rejects.toThrow(/ENOENT/);
  });

  it('backs up both disks to the embedded S3 by default', async () => {
    const cfg = join(tmp.dir, 'vm.conf');
    await writeFile(cfg, 'memory=1G\n');
    const st = await client.startBackup({ mode: 'full', configFiles: [cfg] });
    expect(st.key).toBe(`archives/h1/${st.uuid}.cwa`);
    const done = await waitDone(st.uuid);
    expect(done.status).toBe('done');
    expect(done.total).toBe(2 * SIZE + 12345);
    expect(done.transferred).toBe(done.total);
    const s3 = new S3Client({ endpoint: agent.s3!.endpoint, region: 'us-east-1', forcePathStyle: true, credentials: (await readEmbeddedCredentials(agent.config.stateDir)).s3 });
    const head = await s3.send(new HeadObjectCommand({ Bucket: agent.s3!.bucket, Key: st.key! }));
    expect(head.ContentLength).toBe(done.archiveBytes);
    s3.destroy();
    const disks = await client.disks();
    expect(disks.every((d) => d.bitmap.state === 'valid' && d.lastBackup?.uuid === st.uuid)).toBe(true);
  });

  it('refuses to overwrite an existing file target', async () => {
    const p = join(tmp.dir, 'exists.cwa');
    await writeFile(p, 'x');
    const r = await http('POST', '/backups', JSON.stringify({ mode: 'full', target: `file:${p}` }));
    expect(r.status).toBe(409);
    expect(r.json.error.message).toMatch(/already exists/);
    // The failed start is the current status, and the next backup may start.
    expect((await client.status()).status).toBe('error');
  });

  it('refuses a second agent on the same state directory', async () => {
    await expect(startAgent(agent.config, { log: silentLogger })).rejects.toThrow(/already runs an agent on state directory/);
    // The running agent is unaffected.
    expect((await client.disks())[0]!.bitmap.state).toBe('valid');
  });

  it('is usable with curl --unix-socket', async () => {
    const { stdout } = await execFileP('curl', ['-sS', '--unix-socket', agent.controlSocket, 'http://agent/disks']);
    expect(JSON.parse(stdout).disks).toHaveLength(2);
  });
});

describe('CLI', () => {
  const env = (): NodeJS.ProcessEnv => ({ COWSTREAM_AGENT_SOCKET: agent.controlSocket });

  it('backup --wait --json to a file, incremental with a parent, restores byte-identical', async () => {
    const full = join(tmp.dir, 'cli-full.cwa');
    const r = await runCli(['backup', '--disk', 'a', '--to', full, '--wait', '--json'], env());
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const st = JSON.parse(r.stdout.toString()) as BackupStatus;
    expect(st).toMatchObject({ status: 'done', mode: 'full', disks: ['a'] });
    const images = new Map<string, Buffer>();
    await applyArchive(full, images);
    expect(images.get('a')!.equals(diskA)).toBe(true);
    expect(images.has('b')).toBe(false);

    const inc = join(tmp.dir, 'cli-inc.cwa');
    const r2 = await runCli(['backup', '--disk', 'a', '--incremental', '--to', `file:${inc}`, '--wait', '--json'], env());
    expect(r2.code).toBe(0);
    const st2 = JSON.parse(r2.stdout.toString()) as BackupStatus;
    expect(st2).toMatchObject({ status: 'done', mode: 'incremental', parentUuid: st.uuid, total: 0 });
    const applied = await applyArchive(inc, images);
    expect(applied.parentUuid).toBe(st.uuid);
    expect(images.get('a')!.equals(diskA)).toBe(true);
  });

  it('backup --to - streams the archive to stdout', async () => {
    const r = await runCli(['backup', '--disk', 'b', '--to', '-'], env());
    expect(r.code).toBe(0);
    expect(r.stderr).toMatch(/started/);
    const p = join(tmp.dir, 'stream.cwa');
    await writeFile(p, r.stdout);
    const images = new Map<string, Buffer>();
    await applyArchive(p, images);
    expect(images.get('b')!.equals(diskB)).toBe(true);
  });

  it('status --json, cancel without a backup, bad flags', async () => {
    const s = await runCli(['status', '--json'], env());
    expect(s.code).toBe(0);
    const j = JSON.parse(s.stdout.toString());
    expect(j.backup.status).toBe('done');
    expect(j.disks).toHaveLength(2);

    const c = await runCli(['cancel', '--json'], env());
    expect(c.code).toBe(1);
    expect(JSON.parse(c.stdout.toString()).error.code).toBe('CONFLICT');

    const bad = await runCli(['backup', '--cbw-timeout', 'soon'], env());
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/--cbw-timeout/);

    const unreachable = await runCli(['status', '--agent', join(tmp.dir, 'nope.sock')]);
    expect(unreachable.code).toBe(1);
    expect(unreachable.stderr).toMatch(/cannot reach the agent/);
  });
});
