/**
 * Runs the CLI's main() in this process, capturing stdout, stderr and the
 * exit code (faster than spawning; env changes apply directly).
 */
import { main } from '../../src/cli/main.js';

export async function runCliInProcess(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  let stdout = '';
  let stderr = '';
  const ow = process.stdout.write.bind(process.stdout);
  const ew = process.stderr.write.bind(process.stderr);
  process.stdout.write = ((c: string | Uint8Array) => ((stdout += String(c)), true)) as typeof process.stdout.write;
  process.stderr.write = ((c: string | Uint8Array) => ((stderr += String(c)), true)) as typeof process.stderr.write;
  const prev = process.exitCode;
  process.exitCode = 0;
  try {
    await main(['node', 'cowstream', ...args]);
    return { code: Number(process.exitCode ?? 0), stdout, stderr };
  } finally {
    process.stdout.write = ow;
    process.stderr.write = ew;
    process.exitCode = prev;
  }
}
