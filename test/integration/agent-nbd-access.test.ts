/**
 * Who may reach the agent's exports, played by an unprivileged local user
 * (uid/gid 65534 via setpriv): by default there is no TCP listener, only a
 * Unix socket mode 0600; neither it nor the control socket accepts another
 * user at any instant, even under umask 0 in a world-writable directory; a
 * socket group grants exactly that group; TCP with tls "require" takes only
 * clients holding the PSK.
 */
import { execFile, spawn } from 'node:child_process';
import { chmod, lstat, mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { startAgent, type Agent } from '../../src/agent/agent.js';
import { parseAgentConfig } from '../../src/agent/config.js';
import { silentLogger } from '../../src/agent/log.js';
import { makeDisk, makeTempDir } from '../helpers/agent-process.js';
import { runTool } from '../helpers/nbd-tools.js';
import { makePskFile } from '../helpers/tls-certs.js';

const run = promisify(execFile);
const SIZE = 1024 * 1024;
const asRoot = process.getuid?.() === 0;

let tmp: { dir: string; cleanup(): Promise<void> };
let agent: Agent | null = null;

/** A world-traversable dir (mode 0777), so only the sockets' own modes stand between them and other users. */
async function openDir(): Promise<string> {
  const d = join(tmp.dir, 'open');
  await mkdir(d, { recursive: true });
  await chmod(tmp.dir, 0o755);
  await chmod(d, 0o777);
  return d;
}

function config(extra: Record<string, unknown>): ReturnType<typeof parseAgentConfig> {
  return parseAgentConfig({
    hostId: 'access',
    stateDir: join(tmp.dir, 'state'),
    disks: [{ name: 'vda', path: join(tmp.dir, 'vda.raw') }],
    store: { bucket: 'unused-bucket', prefix: 'p', endpoint: 'http://127.0.0.1:9', region: 'us-east-1' },
    ...extra,
  });
}

/** Runs a command as an unprivileged user (uid 65534, the given gid, no supplementary groups). */
function asNobody(gid: number, cmd: string, args: string[], timeoutMs = 30_000): Promise<{ code: number; stdout: string; stderr: string }> {
  return runTool('setpriv', [`--reuid=65534`, `--regid=${gid}`, '--clear-groups', cmd, ...args], timeoutMs);
}

/**
 * An attacker process (uid 65534) that keeps connecting to `paths` until
 * `stopFile` appears, then prints how many connections succeeded.
 */
const ATTACKER = `
const net = require('node:net'); const fs = require('node:fs');
const [stopFile, ...paths] = process.argv.slice(2);
let ok = 0, tries = 0;
const once = (p) => new Promise((r) => { const s = net.connect(p); s.once('connect', () => { ok++; s.destroy(); r(); }); s.once('error', () => r()); });
(async () => {
  process.stdout.write('started\\n');
  while (!fs.existsSync(stopFile)) { tries++; await Promise.all(paths.map(once)); }
  process.stdout.write(JSON.stringify({ ok, tries }) + '\\n');
})();
`;

function spawnAttacker(script: string, stopFile: string, paths: string[]): { started: Promise<void>; result: Promise<{ ok: number; tries: number }> } {
  const child = spawn('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', process.execPath, script, stopFile, ...paths], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  let onStart: () => void = () => undefined;
  const started = new Promise<void>((r) => (onStart = r));
  child.stdout.setEncoding('utf8').on('data', (d: string) => {
    out += d;
    if (out.includes('started')) onStart();
  });
  const result = new Promise<{ ok: number; tries: number }>((resolve, reject) => {
    child.once('exit', (code) => {
      const last = out.trim().split('\n').at(-1) ?? '';
      if (code !== 0 || !last.startsWith('{')) reject(new Error(`attacker exited ${code}: ${out}`));
      else resolve(JSON.parse(last) as { ok: number; tries: number });
    });
  });
  return { started, result };
}

beforeEach(async () => {
  tmp = await makeTempDir();
  await makeDisk(join(tmp.dir, 'vda.raw'), SIZE, 3);
});

afterEach(async () => {
  await agent?.stop();
  agent = null;
  await tmp.cleanup();
});

describe.skipIf(!asRoot)('who may reach the agent over NBD', () => {
  it('by default: no TCP listener, a Unix socket mode 0600 in the state directory; another user cannot connect', async () => {
    agent = await startAgent(config({}), { log: silentLogger });
    expect(agent.nbdAddress).toBeNull();
    expect(agent.nbdSocket).toBe(join(tmp.dir, 'state', 'nbd.sock'));
    expect((await lstat(agent.nbdSocket!)).mode & 0o777).toBe(0o600);
    const uri = `nbd+unix:///vda?socket=${agent.nbdSocket}`;
    expect((await runTool('nbdinfo', ['--size', uri])).stdout.trim()).toBe(String(SIZE));
    const attack = await asNobody(65534, 'nbdinfo', ['--size', uri]);
    expect(attack.code).not.toBe(0);
  });

  it('under umask 0 in a world-writable directory, no other user ever connects to the NBD or control socket', async () => {
    const open = await openDir();
    const nbdSock = join(open, 'nbd.sock');
    const ctlSock = join(open, 'agent.sock');
    const stopFile = join(open, 'stop');
    const script = join(open, 'attacker.cjs');
    await writeFile(script, ATTACKER, { mode: 0o644 });
    const attacker = spawnAttacker(script, stopFile, [nbdSock, ctlSock]);
    await attacker.started;
    const oldMask = process.umask(0);
    try {
      // Several starts: each is a fresh chance for a window between bind and chmod.
      for (let i = 0; i < 12; i++) {
        agent = await startAgent(config({ nbd: { socket: nbdSock }, control: { socket: ctlSock } }), { log: silentLogger });
        expect((await lstat(nbdSock)).mode & 0o777).toBe(0o600);
        expect((await lstat(ctlSock)).mode & 0o777).toBe(0o600);
        await agent.stop();
        agent = null;
      }
    } finally {
      process.umask(oldMask);
      await writeFile(stopFile, '');
    }
    const stats = await attacker.result;
    expect(stats.tries).toBeGreaterThan(10);
    expect(stats.ok).toBe(0);
  });

  it('socketMode 0660 + socketGroup lets exactly that group in', async () => {
    const open = await openDir();
    agent = await startAgent(config({ nbd: { socket: join(open, 'nbd.sock'), socketMode: '0660', socketGroup: 'nogroup' } }), { log: silentLogger });
    const st = await lstat(agent.nbdSocket!);
    expect(st.mode & 0o777).toBe(0o660);
    expect(st.gid).toBe(65534);
    const uri = `nbd+unix:///vda?socket=${agent.nbdSocket}`;
    const member = await asNobody(65534, 'nbdinfo', ['--size', uri]);
    expect(member.stdout.trim(), member.stderr).toBe(String(SIZE));
    const outsider = await asNobody(65533, 'nbdinfo', ['--size', uri]);
    expect(outsider.code).not.toBe(0);
  });

  it('TCP with tls "require" (PSK): qemu-io with the key works, plaintext and other users without it are refused', async () => {
    const psk = await makePskFile(join(tmp.dir, 'psk'), 'backup');
    agent = await startAgent(config({ nbd: { listen: '127.0.0.1:0', tlsPsk: psk.file } }), { log: silentLogger });
    const port = agent.nbdAddress!.port;
    const q = await runTool('qemu-io', [
      '--object', `tls-creds-psk,id=tls0,endpoint=client,dir=${psk.dir},username=backup`,
      '--image-opts', `driver=nbd,host=127.0.0.1,port=${port},export=vda,tls-creds=tls0`,
      '-c', 'write -P 0x42 0 4k', '-c', 'read -P 0x42 0 4k',
    ]);
    expect(q.code, q.stderr).toBe(0);
    expect(q.stdout + q.stderr).not.toMatch(/failed|mismatch/i);
    expect((await runTool('nbdinfo', [`nbd://127.0.0.1:${port}/vda`])).code).not.toBe(0);
    const attack = await asNobody(65534, 'qemu-io', ['-f', 'raw', `nbd://127.0.0.1:${port}/vda`, '-c', 'write -P 0x66 0 4k']);
    expect(attack.stdout + attack.stderr).toMatch(/TLS|tls|option|denied|error/i);
    const img = await run('qemu-io', ['-f', 'raw', '-r', join(tmp.dir, 'vda.raw'), '-c', 'read -P 0x42 0 4k']);
    expect(img.stdout).not.toMatch(/mismatch|failed/i);
  });
});
