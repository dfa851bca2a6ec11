/**
 * One command hook run: argv is spawned without a shell (nothing in the event
 * — an error message, a path — is ever interpreted), the payload goes to
 * stdin as JSON and its key fields to COWSTREAM_* environment variables. The
 * hook runs in its own process group so that on timeout the whole group
 * (a script and what it started) is killed. Its output is kept up to a bound
 * and logged.
 */
import { spawn } from 'node:child_process';
import { describeError } from '../errors.js';
import type { AttemptResult } from './notify-queue.js';

/** Output kept per stream for the log. */
export const MAX_HOOK_OUTPUT = 4096;
/** After SIGTERM, how long the group has before SIGKILL. */
const KILL_GRACE_MS = 2_000;
/** After the hook exits, how long a grandchild may hold its pipes open before they are closed. */
const PIPE_GRACE_MS = 1_000;
/** Longest environment value: an error message can be long; the full text is on stdin. */
const MAX_ENV_VALUE = 4096;

/** Variables the hook inherits from the agent; the rest (cloud credentials…) stays out. */
const INHERITED_ENV = ['PATH', 'HOME', 'LANG', 'LC_ALL', 'TZ', 'TMPDIR'];

/** An environment value: no NUL (the kernel's string terminator), bounded. */
function envValue(v: string): string {
  const clean = v.replaceAll('\0', '');
  return clean.length > MAX_ENV_VALUE ? clean.slice(0, MAX_ENV_VALUE) : clean;
}

export function hookEnv(vars: Record<string, string>): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const k of INHERITED_ENV) if (process.env[k] !== undefined) env[k] = process.env[k];
  for (const [k, v] of Object.entries(vars)) env[k] = envValue(v);
  return env;
}

/** Keeps the first MAX_HOOK_OUTPUT bytes of a stream and counts the rest. */
class BoundedOutput {
  private readonly chunks: Buffer[] = [];
  private kept = 0;
  private total = 0;
  add(c: Buffer): void {
    this.total += c.length;
    if (this.kept >= MAX_HOOK_OUTPUT) return;
    const part = c.subarray(0, MAX_HOOK_OUTPUT - this.kept);
    this.chunks.push(part);
    this.kept += part.length;
  }
  text(): string {
    const s = Buffer.concat(this.chunks).toString('utf8').trimEnd();
    return this.total > this.kept ? `${s}… (${this.total - this.kept} more bytes dropped)` : s;
  }
}

export function runCommandHook(argv: readonly string[], stdin: string, env: NodeJS.ProcessEnv, timeoutMs: number, signal: AbortSignal): Promise<AttemptResult> {
  return new Promise<AttemptResult>((resolve) => {
    const child = spawn(argv[0]!, argv.slice(1), { shell: false, detached: true, stdio: ['pipe', 'pipe', 'pipe'], env });
    const out = new BoundedOutput();
    const err = new BoundedOutput();
    let killedFor: string | null = null;
    let killTimer: NodeJS.Timeout | undefined;
    const killGroup = (sig: NodeJS.Signals): void => {
      try {
        if (child.pid !== undefined) process.kill(-child.pid, sig);
      } catch {
        // Already gone.
      }
    };
    const kill = (why: string): void => {
      if (killedFor !== null) return;
      killedFor = why;
      killGroup('SIGTERM');
      killTimer = setTimeout(() => killGroup('SIGKILL'), KILL_GRACE_MS);
    };
    const timer = setTimeout(() => kill(`timed out after ${timeoutMs} ms`), timeoutMs);
    const onAbort = (): void => kill(`aborted: ${describeError(signal.reason)}`);
    signal.addEventListener('abort', onAbort, { once: true });
    const finish = (r: AttemptResult): void => {
      clearTimeout(timer);
      clearTimeout(killTimer);
      signal.removeEventListener('abort', onAbort);
      resolve(r);
    };
    child.stdout.on('data', (c: Buffer) => out.add(c));
    child.stderr.on('data', (c: Buffer) => err.add(c));
    // A hook that does not read its stdin closes the pipe: EPIPE is not a failure of the hook.
    child.stdin.on('error', () => undefined);
    child.stdin.end(stdin);
    child.on('error', (e) => finish({ ok: false, retry: false, error: `cannot run ${argv[0]}: ${describeError(e)}` }));
    child.on('exit', (code, sig) => {
      if (killedFor !== null) killGroup('SIGKILL'); // what the script started goes too
      const settle = (): void => {
        const fields = { command: argv[0], exitCode: code, ...(sig ? { signal: sig } : {}), stdout: out.text(), stderr: err.text() };
        if (killedFor !== null) finish({ ok: false, retry: false, error: `command killed: ${killedFor}`, fields });
        else if (code === 0) finish({ ok: true, fields });
        else finish({ ok: false, retry: false, error: `command exited with ${code ?? sig}`, fields });
      };
      // Output still in the pipes is read until they close, unless a grandchild holds them open.
      const grace = setTimeout(() => {
        child.stdout.destroy();
        child.stderr.destroy();
        settle();
      }, PIPE_GRACE_MS);
      let open = 2;
      const closed = (): void => {
        if (--open === 0) {
          clearTimeout(grace);
          settle();
        }
      };
      if (child.stdout.readableEnded || child.stdout.destroyed) closed();
      else child.stdout.once('close', closed);
      if (child.stderr.readableEnded || child.stderr.destroyed) closed();
      else child.stderr.once('close', closed);
    });
  });
}
