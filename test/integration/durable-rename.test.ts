/**
 * Persisted state is durable: after each rename (or link) that makes a file
 * visible — dirty bitmaps, `file:` archive targets, qemu-backups.json — the
 * directory holding it is fsynced. Observed with strace on a child process
 * (syscalls, not our own bookkeeping); skipped when strace is missing.
 */
import { describe, expect, it } from 'vitest';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { REPO_ROOT } from '../helpers/agent-process.js';

const hasStrace = spawnSync('strace', ['-V'], { stdio: 'ignore' }).status === 0;

const SCRIPT = `
import { DirtyBitmapStore } from ${JSON.stringify(join(REPO_ROOT, 'src/cbw/dirty-bitmap.ts'))};
import { QemuBackupHistory } from ${JSON.stringify(join(REPO_ROOT, 'src/agent/qemu-drives.ts'))};
import { FileByteSink } from ${JSON.stringify(join(REPO_ROOT, 'src/store/file.ts'))};
import { silentLogger } from ${JSON.stringify(join(REPO_ROOT, 'src/agent/log.ts'))};
import { writeFileSync, mkdirSync } from 'node:fs';
const dir = process.argv.at(-1);
writeFileSync(dir + '/disk.raw', Buffer.alloc(1 << 20));
const bm = await new DirtyBitmapStore(dir + '/state').open({ name: 'vda', path: dir + '/disk.raw', size: 1 << 20 });
await bm.shutdown();
const h = await QemuBackupHistory.open(dir + '/state', silentLogger);
await h.record(['vdb'], { uuid: 'u', time: new Date().toISOString(), mode: 'full' });
mkdirSync(dir + '/out');
for (const overwrite of [false, true]) {
  const s = await FileByteSink.create(dir + '/out/a' + overwrite + '.cwa', { overwrite });
  await s.write(Buffer.from('x'));
  await s.close();
}
`;

describe.skipIf(!hasStrace)('durable renames', () => {
  it('fsyncs the directory after every rename/link of bitmaps, history and archive targets', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'cowstream-durable-'));
    try {
      const trace = join(dir, 'trace');
      execFileSync('strace', ['-f', '-y', '-qq', '-e', 'trace=fsync,rename,renameat,renameat2,link,linkat', '-o', trace, process.execPath, '--import', 'tsx', '--input-type=module', '-e', SCRIPT, '--', dir], { cwd: REPO_ROOT, stdio: 'ignore' });
      const lines = (await readFile(trace, 'utf8')).split('\n');
      // Each rename/link into DIR must be followed by an fsync of DIR itself.
      // (With several threads strace may split a call: "<unfinished ...>"; the script checks the result.)
      const made: { target: string; dirOf: string; index: number }[] = [];
      lines.forEach((l, index) => {
        const m = /(?:rename(?:at2?)?|link(?:at)?)\(.*"([^"]+)"(?:, \d+)?(?:\)\s+=\s+0$| <unfinished)/.exec(l);
        if (m && m[1]!.startsWith(dir)) made.push({ target: m[1]!, dirOf: m[1]!.slice(0, m[1]!.lastIndexOf('/')), index });
      });
      const targets = made.map((x) => x.target.slice(dir.length));
      expect(targets.some((t) => /^\/state\/bitmaps\/vda-[0-9a-f]+\.bitmap$/.test(t))).toBe(true);
      expect(targets).toEqual(expect.arrayContaining(['/state/qemu-backups.json', '/out/afalse.cwa', '/out/atrue.cwa']));
      for (const r of made) {
        const synced = lines.slice(r.index + 1).some((l) => l.includes('fsync(') && l.includes(`<${r.dirOf}>)`) && /\)\s+=\s+0$/.test(l));
        expect(synced, `fsync of ${r.dirOf} after making ${r.target}`).toBe(true);
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }, 60_000);
});
