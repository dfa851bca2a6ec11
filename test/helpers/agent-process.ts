/**
 * Test helpers: temp disks, agent configs, and the agent as a real child
 * process (`node bin/cowstream.js agent --config ...`), waiting for its
 * readiness log line.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';

export const REPO_ROOT = resolve(fileURLToPath(new URL('../..', import.meta.url)));
export const CLI = join(REPO_ROOT, 'bin', 'cowstream.js');

export async function makeTempDir(prefix = 'cowstream-agent-'): Promise<{ dir: string; cleanup(): Promise<void> }> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  return { dir, cleanup: () => rm(dir, { recursive: true, force: true }) };
}

/** A raw image with random data and a few all-zero stretches (so zero runs get exercised). */
export async function makeDisk(path: string, size: number, seed = 1): Promise<Buffer> {
  const buf = Buffer.alloc(size);
  let x = seed >>> 0 || 1;
  const rnd = (): number => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return x >>> 0;
  };
  for (let off = 0; off < size; off += 64 * 1024) {
    const kind = rnd() % 4;
    const end = Math.min(size, off + 64 * 1024);
    if (kind === 0) continue; // zero cluster
    randomBytes(end - off).copy(buf, off);
  }
  await writeFile(path, buf);
  return buf;
}

export interface AgentProcess {
  child: ChildProcess;
  /** TCP listener (only with `nbd.listen` configured; NaN/'' otherwise). */
  nbdPort: number;
  nbdHost: string;
  /** The NBD Unix socket, if any. */
  nbdSocket: string | undefined;
  controlSocket: string;
  /** All stderr log lines so far (JSON objects). */
  logs: Record<string, unknown>[];
  /** SIGTERM and wait for exit (clean shutdown). Returns the exit code. */
  stop(): Promise<number | null>;
  /** SIGKILL and wait. */
  kill(): Promise<void>;
  exited: Promise<number | null>;
}

/** Spawns the CLI agent and resolves once it logged "agent ready". */
export async function spawnAgent(configPath: string, env: NodeJS.ProcessEnv = {}, timeoutMs = 30_000): Promise<AgentProcess> {
  const child = spawn(process.execPath, [CLI, 'agent', '--config', configPath], {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: { ...process.env, ...env },
  });
  const logs: Record<string, unknown>[] = [];
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  let buf = '';
  const ready = new Promise<Record<string, unknown>>((resolveP, reject) => {
    const timer = setTimeout(() => reject(new Error(`agent not ready within ${timeoutMs} ms; logs:\n${buf}${logs.map((l) => JSON.stringify(l)).join('\n')}`)), timeoutMs);
    child.stderr!.setEncoding('utf8');
    child.stderr!.on('data', (d: string) => {
      buf += d;
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        let obj: Record<string, unknown>;
        try {
          obj = JSON.parse(line) as Record<string, unknown>;
        } catch {
          obj = { level: 'raw', msg: line };
        }
        logs.push(obj);
        if (obj.msg === 'agent ready') {
          clearTimeout(timer);
          resolveP(obj);
        }
      }
    });
    void exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`agent exited with ${code} before ready; logs:\n${buf}${logs.map((l) => JSON.stringify(l)).join('\n')}`));
    });
  });
  const readyLine = await ready;
  const nbd = readyLine.nbd as { host: string; port: number } | null;
  return {
    child,
    nbdHost: nbd?.host ?? '',
    nbdPort: nbd?.port ?? NaN,
    nbdSocket: readyLine.nbdSocket as string | undefined,
    controlSocket: readyLine.control as string,
    logs,
    exited,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      return exited;
    },
    async kill() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await exited;
    },
  };
}

/** Runs the CLI to completion, capturing stdout (as Buffer) and stderr. */
export function runCli(args: string[], env: NodeJS.ProcessEnv = {}, timeoutMs = 60_000): Promise<{ code: number | null; stdout: Buffer; stderr: string }> {
  return new Promise((resolveP, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
    const out: Buffer[] = [];
    let err = '';
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`cowstream ${args.join(' ')} timed out; stderr: ${err}`));
    }, timeoutMs);
    child.stdout.on('data', (d: Buffer) => out.push(d));
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (d: string) => (err += d));
    child.once('exit', (code) => {
      clearTimeout(timer);
      resolveP({ code, stdout: Buffer.concat(out), stderr: err });
    });
  });
}

/** Writes an agent config file and returns its path. */
export async function writeAgentConfig(dir: string, cfg: Record<string, unknown>): Promise<string> {
  const p = join(dir, 'agent.json');
  await writeFile(p, JSON.stringify(cfg, null, 2));
  return p;
}
