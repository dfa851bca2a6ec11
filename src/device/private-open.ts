/**
 * Opening the local files a device writes (overlays, hydration targets) so
 * that no other local user can read them and no path trick redirects them:
 * a new file is created O_CREAT|O_EXCL|O_NOFOLLOW with mode 0600 (a new inode
 * that nobody else can have opened), and an existing one is opened
 * O_NOFOLLOW and checked on the opened descriptor (fstat: regular file, ours,
 * no group/other bits), so it cannot be swapped between check and use.
 */
import { constants as fsc, type Stats } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { dirname } from 'node:path';
import { fsyncDir } from './durable.js';
import { OverlayError } from './errors.js';

/** Creates `path` (0600, O_EXCL) and makes its directory entry durable. Fails with EEXIST if it exists. */
export async function createPrivateFile(path: string): Promise<FileHandle> {
  const fh = await open(path, fsc.O_RDWR | fsc.O_CREAT | fsc.O_EXCL | fsc.O_NOFOLLOW, 0o600);
  try {
    await fsyncDir(dirname(path));
  } catch (err) {
    await fh.close().catch(() => undefined);
    throw err;
  }
  return fh;
}

/** Opens an existing `path` read-write after the checks of the module comment. */
export async function openOwnPrivateFile(path: string): Promise<{ fh: FileHandle; stat: Stats }> {
  let fh: FileHandle;
  try {
    fh = await open(path, fsc.O_RDWR | fsc.O_NOFOLLOW | fsc.O_NONBLOCK);
  } catch (err) {
    const code = (err as { code?: string }).code;
    if (code === 'ELOOP') throw new OverlayError(`${path} is a symbolic link; refusing to follow it`, { cause: err });
    throw new OverlayError(`cannot open ${path}: ${(err as Error).message}`, { cause: err });
  }
  try {
    const stat = await fh.stat();
    checkPrivateStat(path, stat);
    return { fh, stat };
  } catch (err) {
    await fh.close().catch(() => undefined);
    throw err;
  }
}

function checkPrivateStat(path: string, st: Stats): void {
  const problem = privateStatProblem(path, st);
  if (problem) throw new OverlayError(problem);
}

/**
 * Why a file (fstat of the opened descriptor) may not be trusted as private:
 * not a regular file, owned by another user, or with group/other permission
 * bits (the rule ssh applies to keys). Null when it may.
 */
export function privateStatProblem(path: string, st: Stats): string | null {
  if (!st.isFile()) return `${path} is not a regular file`;
  const uid = process.getuid?.();
  if (uid !== undefined && st.uid !== uid) {
    return `${path} is owned by uid ${st.uid}, not by the current user (uid ${uid}); refusing to use it`;
  }
  if ((st.mode & 0o077) !== 0) {
    return `${path} has mode ${(st.mode & 0o777).toString(8).padStart(4, '0')}: group or others can access it; run chmod 600 ${path}`;
  }
  return null;
}
