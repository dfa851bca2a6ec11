/**
 * Durable file replacement. A rename (or link) is only durable once the
 * directory that holds the new entry is fsynced: after a crash the file's
 * data may be on disk while the directory still names the old file, or
 * nothing (ext4/xfs with delayed directory writes). Every persisted state
 * file and every archive made visible by rename goes through here.
 */
import { constants as fsc } from 'node:fs';
import { open, rename, unlink } from 'node:fs/promises';
import { dirname } from 'node:path';
import { randomBytes } from 'node:crypto';

/** fsync(2) of a directory, so the entries created, renamed or removed in it are durable. */
export async function fsyncDir(dir: string): Promise<void> {
  const fh = await open(dir, fsc.O_RDONLY | fsc.O_DIRECTORY);
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/**
 * Writes `data` to a new file `tmp` (O_EXCL|O_NOFOLLOW, so never someone
 * else's file or a planted symlink) and fsyncs it, ready to be renamed or
 * linked into place. On failure the caller unlinks `tmp`.
 */
export async function writeSyncedNewFile(tmp: string, data: Uint8Array | string, mode = 0o600): Promise<void> {
  const fh = await open(tmp, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL | fsc.O_NOFOLLOW, mode);
  try {
    await fh.writeFile(data);
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/**
 * Atomic, durable replace of `path`: a new synced temp file is renamed over
 * `path`, and the directory fsynced.
 */
export async function writeFileAtomic(path: string, data: Uint8Array | string, mode = 0o600): Promise<void> {
  const tmp = `${path}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
  try {
    await writeSyncedNewFile(tmp, data, mode);
    await rename(tmp, path);
  } catch (err) {
    await unlink(tmp).catch(() => undefined);
    throw err;
  }
  await fsyncDir(dirname(path));
}
