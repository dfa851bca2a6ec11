/**
 * Child processes shared by the benchmark scripts: a server that announces
 * its endpoint as one JSON line (`cowstream s3 serve --json`, the shaping
 * proxy), and a clean stop.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { benchRoot as root } from './image.js';

/** A child process that prints one JSON line with `endpoint` on stdout; other stdout lines go to `onLine`. */
export async function startEndpointProcess(argv: string[], onLine: (line: string) => void = () => {}): Promise<{ endpoint: string; proc: ChildProcess }> {
  const proc = spawn(argv[0]!, argv.slice(1), { cwd: root, stdio: ['ignore', 'pipe', 'inherit'] });
  const lines = createInterface({ input: proc.stdout! });
  const endpoint = await new Promise<string>((resolve, reject) => {
    let found = false;
    lines.on('line', (line) => {
      if (!found && line.startsWith('{')) {
        found = true;
        resolve((JSON.parse(line) as { endpoint: string }).endpoint);
      } else onLine(line);
    });
    proc.once('exit', (code) => reject(new Error(`${argv.join(' ')} exited ${code}`)));
  });
  return { endpoint, proc };
}

/** SIGTERM, then waits for the exit. */
export async function stop(proc: ChildProcess): Promise<void> {
  if (proc.exitCode !== null || proc.signalCode !== null) return;
  proc.kill('SIGTERM');
  await new Promise((r) => proc.once('exit', r));
}
