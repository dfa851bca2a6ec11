/** Shared steps of the pull-mode tests: one backup of drive d0 to a file, random guest data. */
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Compressor } from '../../src/codec/types.js';
import { FileByteSink } from '../../src/store/file.js';
import type { QmpClient } from '../../src/qemu/qmp.js';
import { runPullBackup, type PullBackupOptions, type PullBackupResult } from '../../src/qemu/pull-backup.js';
import { pexecFile, type QemuDaemon } from './qemu-daemon.js';

/** Backs up node d0 (archive name vda) into `dir/<uuid>.cwa` through the daemon's NBD server. */
export async function backupToFile(
  d: QemuDaemon,
  qmp: QmpClient,
  dir: string,
  mode: 'full' | 'incremental',
  compressor: Compressor,
  extra: Partial<PullBackupOptions> = {},
): Promise<PullBackupResult & { path: string }> {
  let path = '';
  const r = await runPullBackup({
    qmp,
    drives: [{ node: 'd0', name: 'vda' }],
    mode,
    fleecingDir: dir,
    hostId: 'test-host',
    compressor,
    nbdServerSocket: d.nbdSocket,
    onWarning: () => undefined,
    openOutput: async (c) => FileByteSink.create((path = join(dir, `${c.uuid}.cwa`))),
    ...extra,
  });
  return { ...r, path };
}

/** Writes `bytes` of random data at `offset` through the guest export of drive 0. */
export async function fillRandom(d: QemuDaemon, dir: string, bytes: number, offset = 0): Promise<void> {
  const f = join(dir, `rand-${offset}.bin`);
  writeFileSync(f, randomBytes(bytes));
  await pexecFile('qemu-io', ['-f', 'raw', '-c', `write -s ${f} ${offset} ${bytes}`, d.guestUri(0)]);
}
