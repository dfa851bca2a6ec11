/**
 * Seeded random guest workloads through a real NBD client (qemu-io), for
 * the agent's consistency stress and incremental tests.
 */
import { spawn } from 'node:child_process';

/** xorshift32: small, deterministic, good enough to pick offsets. */
export function prng(seed: number): () => number {
  let x = (seed * 2654435761) >>> 0 || 0x9e3779b9;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x / 0x100000000;
  };
}

const SECTOR = 512;
const CLUSTER = 64 * 1024;

/**
 * qemu-io command batch: overlapping writes (pattern), zero writes and
 * discards, biased towards cluster boundaries so single requests straddle
 * two clusters; occasional flushes.
 */
export function qemuIoCommands(seed: number, diskSize: number, count: number): string[] {
  const r = prng(seed);
  const cmds: string[] = [];
  for (let i = 0; i < count; i++) {
    const len = Math.max(SECTOR, Math.floor((r() < 0.7 ? r() * 16 * 1024 : r() * 192 * 1024) / SECTOR) * SECTOR);
    let off: number;
    if (r() < 0.4) {
      // Straddle a cluster boundary.
      const b = Math.floor(r() * (diskSize / CLUSTER - 1) + 1) * CLUSTER;
      off = b - Math.floor((r() * Math.min(len, CLUSTER)) / SECTOR) * SECTOR;
    } else off = Math.floor((r() * (diskSize - len)) / SECTOR) * SECTOR;
    off = Math.max(0, Math.min(off, diskSize - len));
    const k = r();
    if (k < 0.6) cmds.push(`write -P ${1 + Math.floor(r() * 254)} ${off} ${len}`);
    else if (k < 0.8) cmds.push(`write -z ${off} ${len}`);
    else if (k < 0.95) cmds.push(`discard ${off} ${len}`);
    else cmds.push('flush');
  }
  return cmds;
}

export function nbdUri(host: string, port: number, exportName: string): string {
  return `nbd://${host}:${port}/${exportName}`;
}

/** Runs one qemu-io process with the given commands; rejects on a non-zero exit. */
export function runQemuIo(uri: string, cmds: string[], timeoutMs = 60_000): Promise<string> {
  return new Promise((resolve, reject) => {
    const args = ['-f', 'raw'];
    for (const c of cmds) args.push('-c', c);
    args.push(uri);
    const child = spawn('qemu-io', args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (out += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.once('exit', (code) => {
      clearTimeout(timer);
      // qemu-io exits 0 even when a command fails; failures print "failed".
      if (code !== 0 || /failed|error/i.test(out)) reject(new Error(`qemu-io ${uri} exited ${code}: ${out.slice(0, 2000)}`));
      else resolve(out);
    });
  });
}

/** Runs `clients` qemu-io processes at once, each with its own seeded batch. */
export async function concurrentWorkload(uri: string, seed: number, diskSize: number, clients: number, opsPerClient: number): Promise<void> {
  await Promise.all(Array.from({ length: clients }, (_, c) => runQemuIo(uri, qemuIoCommands(seed * 101 + c, diskSize, opsPerClient))));
}
