/**
 * Restore targets confined to a directory, for restores the agent runs for
 * the catalogue (whose target path is attacker-controlled). Checking a path
 * and then opening it is a race: a symlink swapped into any component in
 * between redirects the open. So nothing is opened by path below the
 * allowed directory: each component is opened relative to the descriptor of
 * its parent with O_NOFOLLOW (a symlink anywhere fails with ELOOP), and the
 * file is created with O_CREAT|O_EXCL|O_NOFOLLOW, mode 0600 — a new inode
 * inside the allowed tree, or nothing.
 *
 * Node has no openat(2); `/proc/self/fd/<dirfd>/<name>` is its equivalent:
 * the kernel resolves the magic link to the open directory itself (not to a
 * path that could be re-resolved), then looks up the single component.
 */
import { constants as fsc } from 'node:fs';
import { lstat, mkdir, open, realpath, unlink, type FileHandle } from 'node:fs/promises';
import { isAbsolute, join, relative, resolve, sep } from 'node:path';
import { ConflictError, ForbiddenError, RestoreError, UsageError } from '../errors.js';
import type { RestoreOutput } from './target.js';

const at = (dir: FileHandle, name: string): string => `/proc/self/fd/${dir.fd}/${name}`;

function checkComponent(name: string, what: string): void {
  if (name === '' || name === '.' || name === '..' || name.includes('/') || name.includes('\0')) {
    throw new ForbiddenError(`restore target: ${what} "${name}" is not a plain file name`);
  }
}

/** Opens `names` below `dir` (closing `dir`), never following a symlink; creates missing ones (0700) when asked. */
async function walk(dir: FileHandle, names: string[], create: boolean, shown: string): Promise<FileHandle> {
  let cur = dir;
  try {
    for (const name of names) {
      checkComponent(name, 'path component');
      let next: FileHandle;
      try {
        next = await open(at(cur, name), fsc.O_RDONLY | fsc.O_DIRECTORY | fsc.O_NOFOLLOW);
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code === 'ENOENT' && create) {
          await mkdir(at(cur, name), { mode: 0o700 }).catch((e: NodeJS.ErrnoException) => {
            if (e.code !== 'EEXIST') throw e;
          });
          next = await open(at(cur, name), fsc.O_RDONLY | fsc.O_DIRECTORY | fsc.O_NOFOLLOW).catch((e: unknown) => {
            throw refuse(e, name, shown);
          });
        } else throw refuse(err, name, shown);
      }
      await cur.close();
      cur = next;
    }
    return cur;
  } catch (err) {
    await cur.close().catch(() => undefined);
    throw err;
  }
}

function refuse(err: unknown, name: string, shown: string): Error {
  const code = (err as NodeJS.ErrnoException).code;
  if (code === 'ELOOP' || code === 'ENOTDIR') {
    return new ForbiddenError(`restore target ${shown}: "${name}" is a symlink or not a directory (symlinks are not followed below the allowed directory)`, { cause: err });
  }
  if (code === 'ENOENT') return new RestoreError(`restore target ${shown}: directory "${name}" does not exist`, { cause: err });
  return new RestoreError(`restore target ${shown}: cannot open "${name}"`, { cause: err });
}

/** The allowed directory `target` lies in (lexically), and the components below it. */
async function locate(target: string, allowedDirs: string[]): Promise<{ root: string; names: string[] }> {
  if (!isAbsolute(target)) throw new ForbiddenError(`restore target "${target}" is not an absolute path`);
  if (target.split(/[\\/]+/).includes('..')) throw new ForbiddenError(`restore target "${target}" contains a ".." segment`);
  const t = resolve(target);
  for (const d of allowedDirs) {
    // The allowed directories are the operator's own config: their symlinks are trusted.
    for (const root of new Set([resolve(d), await realpath(d).catch(() => resolve(d))])) {
      const rel = relative(root, t);
      if (rel === '' || (!rel.startsWith('..') && !isAbsolute(rel))) return { root, names: rel === '' ? [] : rel.split(sep) };
    }
  }
  throw new ForbiddenError(`restore target ${target} is outside the allowed directories (${allowedDirs.join(', ')})`);
}

/**
 * Opens one new file per device for a restore into `target` (a directory →
 * `<NAME>.raw` each, or one file for one device), confined to `allowedDirs`
 * as described in the module comment. Existing files are never overwritten.
 */
export async function openConfinedTargets(target: string, devices: { name: string; size: number }[], allowedDirs: string[]): Promise<RestoreOutput[]> {
  if (allowedDirs.length === 0) throw new ForbiddenError('this agent allows no restore targets (restore.allowedDirs is empty)');
  if (devices.length === 0) throw new UsageError('nothing to restore: no devices selected');
  const { root, names } = await locate(target, allowedDirs);
  const rootFh = await open(root, fsc.O_RDONLY | fsc.O_DIRECTORY);
  // A directory target: an existing directory (not through a symlink), a path ending in '/', or several devices.
  let dir: FileHandle;
  let files: { name: string; file: string; size: number; path: string }[];
  const asDirHint = target.endsWith('/') || devices.length > 1;
  const existingDir = names.length === 0 ? null : await walk(await open(root, fsc.O_RDONLY | fsc.O_DIRECTORY), names, false, target).catch(() => null);
  if (names.length === 0 || existingDir || asDirHint) {
    await existingDir?.close();
    dir = await walk(rootFh, names, true, target);
    files = devices.map((d) => ({ name: d.name, file: `${d.name}.raw`, size: d.size, path: join(target, `${d.name}.raw`) }));
  } else {
    // One device (asDirHint covers several): the last component is the file.
    dir = await walk(rootFh, names.slice(0, -1), false, target);
    files = [{ name: devices[0]!.name, file: names[names.length - 1]!, size: devices[0]!.size, path: target }];
  }
  const opened: RestoreOutput[] = [];
  try {
    for (const f of files) {
      checkComponent(f.file, 'file name');
      let fh: FileHandle;
      try {
        fh = await open(at(dir, f.file), fsc.O_RDWR | fsc.O_CREAT | fsc.O_EXCL | fsc.O_NOFOLLOW, 0o600);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'EEXIST') throw new ConflictError(`restore target ${target}: ${f.file} exists; catalogue restores never overwrite`, { cause: err });
        throw new RestoreError(`cannot create restore target ${target}: ${f.file}`, { cause: err });
      }
      const t: RestoreOutput = { name: f.name, path: f.path, size: f.size, fh, fresh: true, blockDevice: false, created: true };
      // Unlinked through the directory descriptor, like it was created: never via a path that may have changed.
      t.remove = () => unlink(at(dir, f.file));
      opened.push(t);
      await fh.truncate(f.size); // sparse: never-written ranges are holes
    }
  } catch (err) {
    for (const t of opened) {
      await t.fh.close().catch(() => undefined);
      await t.remove!().catch(() => undefined);
    }
    await dir.close().catch(() => undefined);
    throw err;
  }
  // The directory stays open until the restore is over (for remove()); the last release closes it.
  let left = opened.length;
  for (const t of opened) {
    t.release = async () => {
      if (--left === 0) await dir.close();
    };
  }
  return opened;
}

/** A file name below a confined, open directory (see openConfinedFile). */
export interface ConfinedFile {
  /** The directory, open (close it when the file is no longer used). */
  dir: FileHandle;
  /** The file's name in `dir`: one plain component. */
  name: string;
  /** `/proc/self/fd/<dir>/<name>`: a path that resolves through the open directory, never re-walking the tree. */
  path: string;
  /** Whether a file of that name existed when checked. */
  exists: boolean;
}

/**
 * Confines a file path that a module will open itself (by path), e.g. an
 * export's overlay: the directories are walked as for restore targets
 * (created 0700 when missing, no symlink followed below the allowed
 * directory) and the returned path goes through the open directory's
 * descriptor. An existing last component must be a regular file, not a
 * symlink: the opener should still open it with O_NOFOLLOW, because the name
 * could be swapped after this check.
 */
export async function openConfinedFile(target: string, allowedDirs: string[], what = 'file'): Promise<ConfinedFile> {
  if (allowedDirs.length === 0) throw new ForbiddenError(`this agent allows no ${what} paths (restore.allowedDirs is empty)`);
  const { root, names } = await locate(target, allowedDirs);
  if (names.length === 0) throw new ForbiddenError(`${what} ${target} is an allowed directory itself, not a file in one`);
  const name = names[names.length - 1]!;
  checkComponent(name, 'file name');
  const dir = await walk(await open(root, fsc.O_RDONLY | fsc.O_DIRECTORY), names.slice(0, -1), true, target);
  try {
    const st = await lstat(at(dir, name)).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return null;
      throw new RestoreError(`${what} ${target}: cannot inspect "${name}"`, { cause: err });
    });
    if (st && !st.isFile()) throw new ForbiddenError(`${what} ${target}: "${name}" is a symlink or not a regular file`);
    return { dir, name, path: at(dir, name), exists: st !== null };
  } catch (err) {
    await dir.close().catch(() => undefined);
    throw err;
  }
}
