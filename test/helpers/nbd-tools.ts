/**
 * Runs the real NBD client tools (qemu-io, qemu-img, nbdinfo, nbdcopy)
 * asynchronously: the server under test lives in the same process, so a
 * synchronous exec would deadlock it.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface ToolResult {
  code: number;
  stdout: string;
  stderr: string;
}

export function runTool(cmd: string, args: string[], timeoutMs = 30_000): Promise<ToolResult> {
  return new Promise((resolve) => {
    execFile(cmd, args, { timeout: timeoutMs, maxBuffer: 16 * 1024 * 1024, encoding: 'utf8' }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? ((err as { code: number }).code) : 1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

/**
 * qemu-io exits 0 even when a -c command fails, so success also requires
 * that no command reported a failure or a pattern mismatch.
 */
export async function qemuIo(target: string, commands: string[], opts: { readOnly?: boolean } = {}): Promise<ToolResult & { ok: boolean }> {
  const args = ['-f', 'raw'];
  if (opts.readOnly) args.push('-r');
  args.push(target);
  for (const c of commands) args.push('-c', c);
  const r = await runTool('qemu-io', args);
  const text = r.stdout + r.stderr;
  const ok = r.code === 0 && !/failed|error|Pattern verification|mismatch/i.test(text);
  return { ...r, ok };
}

export async function withTempDir<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await mkdtemp(join(tmpdir(), 'cowstream-nbd-'));
  try {
    return await fn(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** Collects server log lines so tests can assert that bad input was logged. */
export class CaptureLogger {
  readonly warnings: string[] = [];
  warn(msg: string): void {
    this.warnings.push(msg);
  }
}

export async function waitFor(cond: () => boolean, timeoutMs = 5000): Promise<boolean> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) return false;
    await new Promise((r) => setTimeout(r, 20));
  }
  return true;
}
