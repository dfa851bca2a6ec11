/**
 * Runs the real `cowstream serve` (node bin/cowstream.js) as a child
 * process: waits for its --json line, keeps its stderr (JSON log lines),
 * and stops it with a signal as a user would.
 */
import { spawn } from 'node:child_process';
import { join, resolve } from 'node:path';

const CLI = join(resolve(import.meta.dirname, '../..'), 'bin', 'cowstream.js');

export interface ServeOutput {
  ok: boolean;
  archive: { uuid: string; host: string; created: string; chainDepth: number };
  readOnly: boolean;
  socket: string;
  tcp?: { host: string; port: number };
  exports: { name: string; size: number; uri: string; tcpUri?: string }[];
}

export interface ServeProcess {
  out: ServeOutput;
  pid: number;
  stderr(): string;
  /** JSON log lines seen on stderr so far. */
  logs(): Record<string, unknown>[];
  stop(signal?: NodeJS.Signals): Promise<{ code: number | null; stdout: string; stderr: string }>;
}

/** Starts `cowstream serve ARGS --json`; rejects with its output if it exits before printing. */
export function startServe(args: string[], env: NodeJS.ProcessEnv = {}, timeoutMs = 60_000): Promise<ServeProcess> {
  const child = spawn(process.execPath, [CLI, 'serve', ...args, '--json'], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (b: Buffer) => (stdout += b.toString()));
  child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
  const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
  const logs = (): Record<string, unknown>[] =>
    stderr
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as Record<string, unknown>);
  return new Promise((resolvePromise, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`serve did not start within ${timeoutMs} ms: ${stderr}`));
    }, timeoutMs);
    const onData = (): void => {
      // The JSON document (pretty-printed) is complete once it parses.
      let out: ServeOutput;
      try {
        out = JSON.parse(stdout) as ServeOutput;
      } catch {
        return;
      }
      clearTimeout(timer);
      child.stdout.off('data', onData);
      resolvePromise({
        out,
        pid: child.pid!,
        stderr: () => stderr,
        logs,
        stop: async (signal = 'SIGTERM') => {
          child.kill(signal);
          const code = await exited;
          return { code, stdout, stderr };
        },
      });
    };
    child.stdout.on('data', onData);
    void exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`serve exited (${code}) before serving: ${stdout} ${stderr}`));
    });
  });
}
