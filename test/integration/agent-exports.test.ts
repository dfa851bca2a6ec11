/**
 * POST/GET/DELETE /exports of the agent's control API against a real agent
 * (in-process, embedded s3rver, src/serve fetching from it, src/device
 * overlays) with real NBD clients (qemu-img, qemu-io, nbdinfo) and the
 * agent's own NbdClient: the export matches the backed-up disk of a chain,
 * a removed export is gone for new clients and gives connected ones errors
 * instead of a hang, the configured limits hold under concurrent requests,
 * and bad input gets a 400 naming the field. Overlay paths are played as an
 * attacker would: outside the allowed directories, `..`, symlinks.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { request } from 'node:http';
import { existsSync } from 'node:fs';
import { mkdir, readFile, stat, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startAgent, type Agent } from '../../src/agent/agent.js';
import { AgentClient } from '../../src/agent/control-client.js';
import { silentLogger } from '../../src/agent/log.js';
import { NbdClient } from '../../src/nbd/client.js';
import { makeDisk, makeTempDir, runCli } from '../helpers/agent-process.js';
import { twoDiskAgentConfig } from '../helpers/agent-two-disks.js';
import { qemuIo, runTool } from '../helpers/nbd-tools.js';

const SIZE = 2 * 1024 * 1024 + 12345;

let tmp: { dir: string; cleanup(): Promise<void> };
let agent: Agent;
let client: AgentClient;
let uuid: string;
/** The full backup at the start of the chain: another archive of the same disk. */
let fullUuid: string;
let disk: Buffer;

function http(method: string, path: string, body?: unknown): Promise<{ status: number; json: any }> { // eslint-disable-line @typescript-eslint/no-explicit-any
  return new Promise((resolve, reject) => {
    const req = request({ socketPath: agent.controlSocket, method, path }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (text += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, json: text ? JSON.parse(text) : undefined }));
    });
    req.on('error', reject);
    req.end(body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body));
  });
}

beforeAll(async () => {
  tmp = await makeTempDir('cowstream-exports-');
  disk = await makeDisk(join(tmp.dir, 'a.raw'), SIZE, 7);
  await makeDisk(join(tmp.dir, 'b.raw'), 1024 * 1024, 8);
  await mkdir(join(tmp.dir, 'allowed'));
  const config = twoDiskAgentConfig(tmp.dir, {
    nbd: { listen: '127.0.0.1:0' },
    restore: { allowedDirs: [join(tmp.dir, 'allowed')] },
    exports: { max: 2, maxCacheMemoryBytes: 8 * 1024 * 1024 },
  });
  agent = await startAgent(config, { log: silentLogger });
  client = new AgentClient(agent.controlSocket);
  // A chain of depth 3: a full backup and two incrementals, the disk changed in between.
  for (const [i, mode] of (['full', 'incremental', 'incremental'] as const).entries()) {
    if (i > 0) {
      const w = await qemuIo(`nbd://127.0.0.1:${agent.nbdAddress!.port}/a`, [`write -P ${0x40 + i} ${i * 256 * 1024} 64k`, `write -P ${0x50 + i} ${SIZE - 8192} 4k`]);
      expect(w.ok, w.stdout + w.stderr).toBe(true);
    }
    const st = await client.startBackup({ mode });
    const done = await client.waitForBackup(st.uuid, undefined, 50);
    expect(done.status, done.error ?? '').toBe('done');
    expect(done.mode).toBe(mode);
    uuid = st.uuid;
    if (i === 0) fullUuid = st.uuid;
  }
  disk = await readFile(join(tmp.dir, 'a.raw'));
}, 60_000);

afterAll(async () => {
  await agent?.stop();
  await tmp?.cleanup();
});

describe('agent POST /exports', () => {
  it('serves a disk of an archive: qemu-img compare equals the original; DELETE removes it and closes the set', async () => {
    const r = await http('POST', '/exports', { ref: uuid, disks: ['a'] });
    expect(r.status, JSON.stringify(r.json)).toBe(201);
    const { id, exports } = r.json;
    expect(id).toMatch(/^[0-9a-f]{8}$/);
    expect(exports).toHaveLength(1);
    expect(exports[0]).toMatchObject({ name: `export-${id}/a`, disk: 'a', size: SIZE, readOnly: true });
    const unix = exports[0].uris.find((u: string) => u.startsWith('nbd+unix:'));
    const tcp = exports[0].uris.find((u: string) => u.startsWith('nbd://'));
    expect(unix).toBe(`nbd+unix:///export-${id}/a?socket=${encodeURIComponent(agent.nbdSocket!)}`);
    expect(tcp).toBe(`nbd://127.0.0.1:${agent.nbdAddress!.port}/export-${id}/a`);
    expect(r.json.archive).toMatchObject({ uuid, host: 'h1', chainDepth: 3 });
    expect(r.json.stats.cacheLimitBytes).toBe(8 * 1024 * 1024); // the config's bound by default

    for (const uri of [unix, tcp]) {
      const cmp = await runTool('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', join(tmp.dir, 'a.raw'), uri]);
      expect(cmp.code, cmp.stdout + cmp.stderr).toBe(0);
    }
    const list = await runTool('nbdinfo', ['--list', `nbd://127.0.0.1:${agent.nbdAddress!.port}`]);
    expect(list.stdout).toContain(`export-${id}/a`);
    expect(list.stdout).toContain(uuid);

    const all = await http('GET', '/exports');
    expect(all.json.exports.map((e: { id: string }) => e.id)).toEqual([id]);
    expect(all.json.exports[0].archive.uuid).toBe(uuid);
    expect(all.json.exports[0].stats.gets).toBeGreaterThan(0);
    expect((await http('GET', `/exports/${id}`)).json.id).toBe(id);

    // A client connected before the DELETE gets an error for its next read, not a hang.
    const nbd = await NbdClient.connect({ path: agent.nbdSocket! }, { exportName: `export-${id}/a` });
    try {
      expect((await nbd.read(0, 4096)).equals(disk.subarray(0, 4096))).toBe(true);
      const del = await http('DELETE', `/exports/${id}`);
      expect(del.status).toBe(200);
      await expect(nbd.read(0, 4096)).rejects.toThrow(/EIO|error/i);
    } finally {
      await nbd.close().catch(() => undefined);
    }
    expect((await http('GET', `/exports/${id}`)).status).toBe(404);
    expect((await http('DELETE', `/exports/${id}`)).status).toBe(404);
    expect((await http('GET', '/exports')).json.exports).toEqual([]);
    const gone = await runTool('qemu-img', ['info', '-f', 'raw', tcp]);
    expect(gone.code).not.toBe(0);
    // The agent's own disks are untouched by all of this.
    const own = await runTool('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', join(tmp.dir, 'a.raw'), `nbd://127.0.0.1:${agent.nbdAddress!.port}/a`]);
    expect(own.code, own.stdout + own.stderr).toBe(0);
  });

  it('bounds the number of open exports, also under concurrent requests', async () => {
    const results = await Promise.all([0, 1, 2, 3].map(() => http('POST', '/exports', { ref: uuid })));
    const ok = results.filter((r) => r.status === 201);
    const refused = results.filter((r) => r.status !== 201);
    expect(ok).toHaveLength(2);
    expect(refused.map((r) => r.status)).toEqual([409, 409]);
    expect(refused[0]!.json.error.message).toMatch(/exports\.max = 2/);
    // Both disks of the archive, each its own name.
    expect(ok[0]!.json.exports.map((e: { disk: string }) => e.disk).sort()).toEqual(['a', 'b']);
    for (const r of ok) expect((await http('DELETE', `/exports/${r.json.id}`)).status).toBe(200);
    expect((await http('GET', '/exports')).json.exports).toEqual([]);
  });

  it('bad input: 400 naming the field; refs outside the bucket and local files are refused', async () => {
    const cases: Array<[unknown, string, RegExp?]> = [
      [{}, 'ref'],
      [{ ref: uuid, disks: [] }, 'disks'],
      [{ ref: uuid, disks: ['../x'] }, 'disks[0]'],
      [{ ref: uuid, cache: { memoryBytes: 9 * 1024 * 1024 } }, 'cache.memoryBytes', /exports\.maxCacheMemoryBytes/],
      [{ ref: uuid, cache: { diskBytes: 1 } }, 'cache.diskBytes', /exports\.maxCacheDiskBytes = 0/],
      [{ ref: uuid, cache: { memoryBytes: -1 } }, 'cache.memoryBytes'],
      [{ ref: uuid, overlay: 'relative.qcow' }, 'overlay', /absolute/],
      [{ ref: uuid, overlay: `${tmp.dir}/allowed/../x` }, 'overlay', /\.\./],
      [{ ref: uuid, bogus: 1 }, 'bogus', /unknown field/],
      [{ ref: '/etc/passwd' }, 'ref', /not an archive UUID/],
      [{ ref: 's3://other-bucket/x.cwa' }, 'ref', /serves archives of its bucket/],
    ];
    for (const [body, field, msg] of cases) {
      const r = await http('POST', '/exports', body);
      expect(r.status, JSON.stringify(body)).toBe(400);
      expect(r.json.error.field, JSON.stringify(r.json)).toBe(field);
      if (msg) expect(r.json.error.message).toMatch(msg);
    }
    expect((await http('POST', '/exports', '{"ref": ')).status).toBe(400);
    const missing = await http('POST', '/exports', { ref: '00000000-0000-4000-8000-000000000000' });
    expect(missing.status).toBe(404);
    expect((await http('PUT', '/exports')).status).toBe(405);
    expect((await http('GET', '/exports')).json.exports).toEqual([]);
  });

  it('overlay paths are confined to restore.allowedDirs: outside, through a symlink, or an allowed dir itself are refused', async () => {
    const outside = join(tmp.dir, 'outside');
    await mkdir(outside);
    await symlink(outside, join(tmp.dir, 'allowed', 'link'));
    await writeFile(join(outside, 'target'), 'precious');
    await symlink(join(outside, 'target'), join(tmp.dir, 'allowed', 'file-link'));
    const refused: Array<[string, RegExp]> = [
      [join(outside, 'o.overlay'), /outside the allowed directories/],
      [join(tmp.dir, 'allowed', 'link', 'o.overlay'), /symlink/],
      [join(tmp.dir, 'allowed', 'file-link'), /symlink/],
      [join(tmp.dir, 'allowed'), /allowed directory itself/],
    ];
    for (const [overlay, msg] of refused) {
      const r = await http('POST', '/exports', { ref: uuid, disks: ['a'], overlay });
      expect(r.status, `${overlay}: ${JSON.stringify(r.json)}`).toBe(403);
      expect(r.json.error.message).toMatch(msg);
    }
    expect(existsSync(join(outside, 'o.overlay'))).toBe(false);
    expect(await readFile(join(outside, 'target'), 'utf8')).toBe('precious');
    // One overlay serves one disk.
    const two = await http('POST', '/exports', { ref: uuid, overlay: join(tmp.dir, 'allowed', 'two.overlay') });
    expect(two.status).toBe(400);
    expect(two.json.error.field).toBe('overlay');
    // Inside (a new sub-directory is created 0700): writable, writes land in the overlay, never in the archive or the disk.
    const overlay = join(tmp.dir, 'allowed', 'vm', 'a.overlay');
    const ok = await http('POST', '/exports', { ref: uuid, disks: ['a'], overlay });
    expect(ok.status, JSON.stringify(ok.json)).toBe(201);
    expect(ok.json.overlay).toBe(overlay);
    expect(ok.json.exports[0].readOnly).toBe(false);
    expect((await stat(overlay)).mode & 0o777).toBe(0o600);
    expect((await stat(join(tmp.dir, 'allowed', 'vm'))).mode & 0o777).toBe(0o700);
    const uri = ok.json.exports[0].uris[0];
    const w = await qemuIo(uri, ['write -P 0xcd 65536 64k', 'read -P 0xcd 65536 64k']);
    expect(w.ok, w.stdout + w.stderr).toBe(true);
    expect((await http('DELETE', `/exports/${ok.json.id}`)).status).toBe(200);
    expect((await readFile(join(tmp.dir, 'a.raw'))).equals(disk)).toBe(true);
    // The same overlay again: the write survived; a plain export of the archive does not have it.
    const again = await http('POST', '/exports', { ref: uuid, disks: ['a'], overlay });
    expect(again.status, JSON.stringify(again.json)).toBe(201);
    expect((await qemuIo(again.json.exports[0].uris[0], ['read -P 0xcd 65536 64k'])).ok).toBe(true);
    // Another archive of the same disk (same size) over this overlay: refused, naming both bases.
    const other = await http('POST', '/exports', { ref: fullUuid, disks: ['a'], overlay });
    expect(other.status, JSON.stringify(other.json)).toBe(409);
    expect(other.json.error.message).toMatch(new RegExp(`^overlay: ${overlay} is not a usable cowstream overlay: made over "${uuid}/a", not over "${fullUuid}/a"`));
    const plain = await http('POST', '/exports', { ref: uuid, disks: ['a'] });
    const cmp = await runTool('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', join(tmp.dir, 'a.raw'), plain.json.exports[0].uris[0]]);
    expect(cmp.code, cmp.stdout + cmp.stderr).toBe(0);
    for (const e of [again, plain]) expect((await http('DELETE', `/exports/${e.json.id}`)).status).toBe(200);
  });

  it('cowstream export add / list / rm over the control socket, with --json and clear errors', async () => {
    const agentFlag = ['--agent', agent.controlSocket];
    const add = await runCli(['export', 'add', uuid, '--disk', 'b', '--cache-memory', '4M', '--json', ...agentFlag]);
    expect(add.code, add.stderr).toBe(0);
    const e = JSON.parse(add.stdout.toString());
    expect(e.exports.map((d: { name: string }) => d.name)).toEqual([`export-${e.id}/b`]);
    expect(e.stats.cacheLimitBytes).toBe(4 * 1024 * 1024);
    const list = await runCli(['export', 'list', ...agentFlag]);
    expect(list.code, list.stderr).toBe(0);
    expect(list.stdout.toString()).toContain(`nbd://127.0.0.1:${agent.nbdAddress!.port}/export-${e.id}/b`);
    const cmp = await runTool('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', join(tmp.dir, 'b.raw'), e.exports[0].uris[0]]);
    expect(cmp.code, cmp.stdout + cmp.stderr).toBe(0);
    const tooBig = await runCli(['export', 'add', uuid, '--cache-memory', '1G', ...agentFlag]);
    expect(tooBig.code).not.toBe(0);
    expect(tooBig.stderr).toMatch(/cache\.memoryBytes.*exports\.maxCacheMemoryBytes/);
    const rm = await runCli(['export', 'rm', e.id, ...agentFlag]);
    expect(rm.code, rm.stderr).toBe(0);
    expect(rm.stdout.toString()).toContain(`removed ${e.id}`);
    const again = await runCli(['export', 'rm', e.id, ...agentFlag]);
    expect(again.code).not.toBe(0);
    expect(again.stderr).toMatch(/export .* not found/);
    expect(JSON.parse((await runCli(['export', 'list', '--json', ...agentFlag])).stdout.toString())).toEqual([]);
  }, 60_000);
});
