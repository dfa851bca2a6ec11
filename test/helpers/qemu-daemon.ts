/**
 * A real qemu-storage-daemon (QEMU 7.2) for pull-mode tests: one QMP socket,
 * drives as <format> node `dN` over a file node, and the guest-facing
 * writable NBD export `guestN` (the "guest" of these tests writes through it
 * with qemu-io). attach 'filter' (default) puts a `raw` filter node
 * `dN-guest` between the export and `dN`; attach 'direct' exports `dN`
 * itself, the way libvirt attaches a disk. All sockets live in a private
 * temp dir.
 */
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { QmpClient } from '../../src/qemu/qmp.js';
import { namedNodes } from '../../src/qemu/graph.js';

export const pexecFile = promisify(execFile);

export interface DaemonDrive {
  path: string;
  format: 'qcow2' | 'raw';
}

export interface QemuDaemon {
  dir: string;
  qmpSocket: string;
  nbdSocket: string;
  proc: ChildProcess;
  /** nbd+unix URI of the guest export of drive i. */
  guestUri(i: number): string;
  stop(): Promise<void>;
}

export function tempDir(prefix = 'cowstream-qemu-'): { dir: string; cleanup(): void } {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

export async function createImage(path: string, format: 'qcow2' | 'raw', size: string): Promise<void> {
  await pexecFile('qemu-img', ['create', '-q', '-f', format, path, size]);
}

/** Starts the daemon and waits until its QMP socket exists. */
export async function startDaemon(dir: string, drives: DaemonDrive[], opts: { attach?: 'filter' | 'direct' } = {}): Promise<QemuDaemon> {
  const direct = opts.attach === 'direct';
  const qmpSocket = join(dir, 'qmp.sock');
  const nbdSocket = join(dir, 'nbd.sock');
  rmSync(qmpSocket, { force: true });
  rmSync(nbdSocket, { force: true });
  const args = ['--chardev', `socket,path=${qmpSocket},server=on,wait=off,id=qmp0`, '--monitor', 'chardev=qmp0'];
  drives.forEach((d, i) => {
    args.push('--blockdev', `driver=file,node-name=d${i}-file,filename=${d.path}`);
    args.push('--blockdev', `driver=${d.format},node-name=d${i},file=d${i}-file`);
    if (!direct) args.push('--blockdev', `driver=raw,node-name=d${i}-guest,file=d${i}`);
  });
  args.push('--nbd-server', `addr.type=unix,addr.path=${nbdSocket}`);
  drives.forEach((_, i) => args.push('--export', `type=nbd,id=guest${i},node-name=${direct ? `d${i}` : `d${i}-guest`},name=guest${i},writable=on`));
  const proc = spawn('qemu-storage-daemon', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  proc.stderr?.on('data', (c: Buffer) => (stderr += c.toString()));
  const exited = new Promise<number | null>((r) => proc.once('exit', (code) => r(code)));
  const deadline = Date.now() + 10_000;
  while (!(existsSync(qmpSocket) && existsSync(nbdSocket))) {
    if (proc.exitCode !== null || Date.now() > deadline) {
      proc.kill('SIGKILL');
      throw new Error(`qemu-storage-daemon did not start: ${stderr}`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  return {
    dir,
    qmpSocket,
    nbdSocket,
    proc,
    guestUri: (i) => `nbd+unix:///guest${i}?socket=${nbdSocket}`,
    async stop() {
      if (proc.exitCode !== null || proc.signalCode !== null) return;
      proc.kill('SIGTERM'); // clean shutdown: persistent bitmaps are written to the qcow2
      const t = setTimeout(() => proc.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(t);
    },
  };
}

/** Seeded random writes through the guest export with one qemu-io process. */
export async function guestWrites(uri: string, seed: number, count: number, size: number, opts: { maxLen?: number } = {}): Promise<void> {
  const cmds: string[] = [];
  let s = seed >>> 0 || 1;
  const rnd = (): number => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s;
  };
  const maxLen = opts.maxLen ?? 256 * 1024;
  for (let i = 0; i < count; i++) {
    const len = 4096 * (1 + (rnd() % (maxLen / 4096)));
    const off = 4096 * (rnd() % Math.floor((size - len) / 4096));
    const pattern = 1 + (rnd() % 254);
    if (rnd() % 8 === 0) cmds.push('-c', `write -z ${off} ${len}`);
    else cmds.push('-c', `write -P ${pattern} ${off} ${len}`);
  }
  await pexecFile('qemu-io', ['-f', 'raw', ...cmds, uri], { maxBuffer: 64 * 1024 * 1024 });
}

/** Copies the guest-visible content of an export to a raw file. */
export async function copyExport(uri: string, out: string): Promise<void> {
  await pexecFile('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', uri, out]);
}

/** What a test compares to say a QEMU's block graph is as it was: named nodes (driver, read-only, named bitmaps), exports, jobs. */
export interface QemuGraphState {
  nodes: { name: string; drv: string; readOnly: boolean; bitmaps: string[] }[];
  exports: string[];
  jobs: string[];
}

/** Reads the graph over a QMP connection of its own (the monitor must be free: one client at a time). */
export async function graphState(qmpSocket: string): Promise<QemuGraphState> {
  const qmp = await QmpClient.connect(qmpSocket);
  try {
    const nodes = [...(await namedNodes(qmp)).values()].map((n) => ({ name: n.nodeName, drv: n.drv, readOnly: n.readOnly, bitmaps: n.bitmaps.map((b) => b.name).sort() }));
    const exports = await qmp.execute<{ id: string }[]>('query-block-exports');
    const jobs = await qmp.execute<{ id: string }[]>('query-jobs');
    return { nodes: nodes.sort((a, b) => a.name.localeCompare(b.name)), exports: exports.map((e) => e.id).sort(), jobs: jobs.map((j) => j.id).sort() };
  } finally {
    await qmp.close();
  }
}
