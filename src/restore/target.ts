/**
 * Restore targets. `--to` names either a directory (each device becomes
 * `<dir>/<NAME>.raw`) or, for a single device, a file or block device.
 * Existing files/devices are only overwritten with `force`, and a block
 * device must be at least as large as the restored device.
 */
import { constants as fsc } from 'node:fs';
import { mkdir, open, stat, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { ConflictError, RestoreError, UsageError } from '../errors.js';

export interface RestoreOutput {
  name: string;
  path: string;
  size: number;
  fh: FileHandle;
  /**
   * True when the file was created or truncated by us: it reads as zeroes
   * everywhere, so zero runs stay holes. False for block devices, whose old
   * contents must be overwritten with explicit zeroes.
   */
  fresh: boolean;
  blockDevice: boolean;
  /** We created the file: a failed restore removes it again. */
  created: boolean;
  /** Removes the created file (default: unlink(path)); confined targets unlink through their directory. */
  remove?: () => Promise<void>;
  /** Called after `fh` is closed (confined targets close their directory). */
  release?: () => Promise<void>;
}

async function statOrNull(path: string): Promise<Awaited<ReturnType<typeof stat>> | null> {
  try {
    return await stat(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw new RestoreError(`cannot stat restore target ${path}`, { cause: err });
  }
}

/** Size of a block device (st_size is 0 for them): seek to the end. */
async function blockDeviceSize(fh: FileHandle): Promise<number> {
  // fs has no BLKGETSIZE64; reading at a huge offset is not a size probe either.
  // Binary search for the last readable byte: O(log n) 1-byte reads.
  const one = Buffer.alloc(1);
  let lo = 0;
  let hi = 2 ** 50;
  while (lo < hi) {
    const mid = Math.floor((lo + hi + 1) / 2);
    const { bytesRead } = await fh.read(one, 0, 1, mid - 1);
    if (bytesRead === 1) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

async function openOne(name: string, path: string, size: number, force: boolean): Promise<RestoreOutput> {
  const st = await statOrNull(path);
  if (st === null) {
    let fh: FileHandle;
    try {
      fh = await open(path, fsc.O_CREAT | fsc.O_EXCL | fsc.O_RDWR, 0o600);
    } catch (err) {
      throw new RestoreError(`cannot create restore target ${path}`, { cause: err });
    }
    await fh.truncate(size); // sparse: never-written ranges are holes
    return { name, path, size, fh, fresh: true, blockDevice: false, created: true };
  }
  if (!force) throw new ConflictError(`restore target ${path} exists; use --force to overwrite it`);
  if (st.isDirectory()) throw new UsageError(`restore target ${path} for device ${name} is a directory`);
  if (st.isBlockDevice()) {
    const fh = await open(path, fsc.O_RDWR);
    const devSize = await blockDeviceSize(fh);
    if (devSize < size) {
      await fh.close();
      throw new RestoreError(`block device ${path} holds ${devSize} bytes, device ${name} needs ${size}`);
    }
    return { name, path, size, fh, fresh: false, blockDevice: true, created: false };
  }
  if (!st.isFile()) throw new UsageError(`restore target ${path} is neither a regular file nor a block device`);
  // A regular file is replaced in place: truncate to 0, then to the size, so
  // no old byte survives and zero runs become holes.
  const fh = await open(path, fsc.O_RDWR);
  await fh.truncate(0);
  await fh.truncate(size);
  return { name, path, size, fh, fresh: true, blockDevice: false, created: false };
}

/**
 * Opens one target per device. A directory target (existing, or a path
 * ending in '/') gets `<NAME>.raw` files; any other path is one file and
 * requires exactly one device.
 */
export async function openTargets(to: string, devices: { name: string; size: number }[], force: boolean): Promise<RestoreOutput[]> {
  if (devices.length === 0) throw new UsageError('nothing to restore: no devices selected');
  const st = await statOrNull(to);
  const asDir = (st !== null && st.isDirectory()) || (st === null && (to.endsWith('/') || devices.length > 1));
  const opened: RestoreOutput[] = [];
  try {
    if (asDir) {
      if (st === null) await mkdir(to, { recursive: true });
      for (const d of devices) opened.push(await openOne(d.name, join(to, `${d.name}.raw`), d.size, force));
    } else {
      if (devices.length !== 1) {
        throw new UsageError(`restoring ${devices.length} devices needs a directory target; pick one with --device NAME`);
      }
      opened.push(await openOne(devices[0]!.name, to, devices[0]!.size, force));
    }
  } catch (err) {
    for (const t of opened) await t.fh.close().catch(() => undefined);
    throw err;
  }
  return opened;
}
