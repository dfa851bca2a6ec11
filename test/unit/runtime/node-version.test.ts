import { execFile, execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import * as zlib from 'node:zlib';
import { describe, expect, it } from 'vitest';

const execFileAsync = promisify(execFile);
const ROOT = join(__dirname, '../../..');
/** The Node the `node` dev dependency installs (docs/runtime.md). */
const PINNED = `v${(JSON.parse(readFileSync(join(ROOT, 'node_modules', 'node', 'package.json'), 'utf8')) as { version: string }).version}`;

// The title carries the version this worker really runs on: .ci/run reads it
// back from vitest's JSON report, so CI shows the Node the tests ran on.
describe('runtime', () => {
  it(`tests run on Node ${process.version}, the project's pinned Node`, () => {
    expect(process.version).toBe(PINNED);
    expect(typeof zlib.zstdCompressSync).toBe('function');
  });

  it('a child started as `node` from PATH is the same Node as process.execPath', async () => {
    const viaPath = (await execFileAsync('node', ['-p', 'process.version'])).stdout.trim();
    const viaExecPath = (await execFileAsync(process.execPath, ['-p', 'process.version'])).stdout.trim();
    expect(viaPath).toBe(PINNED);
    expect(viaExecPath).toBe(PINNED);
  });

  // The machines this project runs on have an older system node (20); the
  // CLI started by it must hand over to the pinned Node, not run below engines.
  const older = systemNodeOlderThanEngines();
  it.skipIf(older === null)('bin/cowstream.js started by an older system node runs its command on the pinned Node', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'cowstream-runtime-'));
    try {
      // Preloaded into every node process of the run (NODE_OPTIONS is inherited).
      const probe = join(dir, 'probe.cjs');
      writeFileSync(probe, "process.on('exit', () => process.stderr.write('ran-on ' + process.version + '\\n'));");
      const { stdout, stderr } = await execFileAsync(older!, [join(ROOT, 'bin', 'cowstream.js'), '--version'], {
        cwd: ROOT,
        env: { ...process.env, NODE_OPTIONS: `--require ${probe}` },
      });
      expect(stdout.trim()).toMatch(/^\d+\.\d+\.\d+$/);
      const ranOn = stderr.split('\n').filter((l) => l.startsWith('ran-on ')).map((l) => l.slice(7));
      // The inner process (the command) exits first, then the older launcher.
      expect(ranOn).toEqual([PINNED, execVersion(older!)]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

function execVersion(node: string): string {
  return execFileSync(node, ['-p', 'process.version'], { encoding: 'utf8' }).trim();
}

/** A `node` on the system PATH (npm puts ours first) older than 22.15, or null. */
function systemNodeOlderThanEngines(): string | null {
  for (const candidate of ['/usr/bin/node', '/usr/local/bin/node']) {
    if (!existsSync(candidate)) continue;
    const [major, minor] = execVersion(candidate).slice(1).split('.').map(Number) as [number, number];
    if (major < 22 || (major === 22 && minor < 15)) return candidate;
  }
  return null;
}
