import { execFile } from 'node:child_process';
import { constants as fsConstants } from 'node:fs';
import { open, readFile, type FileHandle } from 'node:fs/promises';
import { promisify } from 'node:util';
import { DeviceError } from '../errors.js';
import { DeviceClosedError, ReadOnlyDeviceError } from './errors.js';
import { checkRange } from './range.js';
import type { BlockDevice, DeviceExtent } from './types.js';

const execFileAsync = promisify(execFile);

/** Largest single zero-fill write; bounds the memory of writeZeroes/trim. */
export const DEFAULT_ZERO_CHUNK = 1024 * 1024;

export interface FileDeviceOptions {
  /** Open O_RDONLY and reject write/writeZeroes/trim with ReadOnlyDeviceError. */
  readOnly?: boolean;
  /** Size of the zero buffer used by writeZeroes/trim (default 1 MiB). */
  zeroChunkBytes?: number;
}

/**
 * A BlockDevice over a raw image file or a block special file.
 *
 * All I/O is positional (pread/pwrite through a FileHandle), so concurrent
 * requests on one device are safe and need no seek lock.
 *
 * Size: for a regular file, fstat's st_size. A block device reports st_size 0,
 * and Node has no lseek(SEEK_END), so we read /sys/dev/block/MAJ:MIN/size
 * (512-byte sectors, always 512 regardless of the logical block size) and fall
 * back to `blockdev --getsize64`.
 *
 * writeZeroes and trim write real zeroes in bounded chunks. Node exposes no
 * fallocate(FALLOC_FL_PUNCH_HOLE), and the copy-before-write consistency tests
 * need trimmed ranges to read back as zeroes deterministically (NBD allows a
 * trimmed range to read as anything; we deliberately promise zeroes, as the
 * BlockDevice contract does). The cost is that trim does not free space in a
 * sparse image file.
 *
 * mapExtents reports the whole range as allocated data of unknown content.
 * The real map needs lseek(SEEK_DATA/SEEK_HOLE), which Node's fs does not
 * expose, and st_blocks cannot stand in for it (delayed allocation and inline
 * data make a file with data report 0 blocks on some file systems, and a
 * wrong "zero" claim lets a client skip real data). "Allocated" is always a
 * correct answer.
 */
export class FileDevice implements BlockDevice {
  readonly size: number;
  readonly readOnly: boolean;
  readonly path: string;
  private fh: FileHandle | null;
  private readonly zeroChunk: number;
  private zeroBuf: Buffer | null = null;

  private constructor(path: string, fh: FileHandle, size: number, readOnly: boolean, zeroChunk: number) {
    this.path = path;
    this.fh = fh;
    this.size = size;
    this.readOnly = readOnly;
    this.zeroChunk = zeroChunk;
  }

  static async open(path: string, opts: FileDeviceOptions = {}): Promise<FileDevice> {
    const readOnly = opts.readOnly ?? false;
    const zeroChunk = opts.zeroChunkBytes ?? DEFAULT_ZERO_CHUNK;
    if (!Number.isSafeInteger(zeroChunk) || zeroChunk < 512) {
      throw new DeviceError(`zeroChunkBytes must be an integer >= 512, got ${zeroChunk}`);
    }
    let fh: FileHandle;
    try {
      fh = await open(path, readOnly ? fsConstants.O_RDONLY : fsConstants.O_RDWR);
    } catch (err) {
      throw new DeviceError(`cannot open ${path}: ${(err as Error).message}`, { cause: err });
    }
    try {
      const size = await deviceSize(path, fh);
      return new FileDevice(path, fh, size, readOnly, zeroChunk);
    } catch (err) {
      await fh.close().catch(() => undefined);
      throw err;
    }
  }

  async read(offset: number, length: number): Promise<Buffer> {
    checkRange(this.size, offset, length, `read ${this.path}`);
    const fh = this.handle();
    const buf = Buffer.allocUnsafe(length);
    let done = 0;
    while (done < length) {
      const { bytesRead } = await this.io(() => fh.read(buf, done, length - done, offset + done), 'read', offset);
      if (bytesRead === 0) {
        // The file shrank behind our back; never return uninitialised memory.
        throw new DeviceError(`short read from ${this.path} at ${offset + done}: file shrank?`);
      }
      done += bytesRead;
    }
    return buf;
  }

  async write(offset: number, data: Uint8Array, opts?: { fua?: boolean }): Promise<void> {
    this.checkWritable('write');
    checkRange(this.size, offset, data.length, `write ${this.path}`);
    await this.pwriteAll(data, offset);
    if (opts?.fua) await this.flush();
  }

  async writeZeroes(offset: number, length: number, opts?: { fua?: boolean; mayTrim?: boolean }): Promise<void> {
    this.checkWritable('write zeroes');
    checkRange(this.size, offset, length, `write zeroes ${this.path}`);
    await this.zeroFill(offset, length);
    if (opts?.fua) await this.flush();
  }

  async trim(offset: number, length: number): Promise<void> {
    this.checkWritable('trim');
    checkRange(this.size, offset, length, `trim ${this.path}`);
    // See the class comment: trim zeroes so contents stay deterministic.
    await this.zeroFill(offset, length);
  }

  async mapExtents(offset: number, length: number): Promise<DeviceExtent[]> {
    this.handle();
    checkRange(this.size, offset, length, `map ${this.path}`);
    return length > 0 ? [{ length, hole: false, zero: false }] : [];
  }

  async flush(): Promise<void> {
    const fh = this.handle();
    if (this.readOnly) return;
    await this.io(() => fh.datasync(), 'fdatasync', 0);
  }

  async close(): Promise<void> {
    const fh = this.fh;
    this.fh = null;
    if (fh) await fh.close();
  }

  /**
   * fstat of the open descriptor: the file the agent really reads and
   * writes, which is no longer the one at `path` once someone renamed
   * another file over it.
   */
  async openStat(): Promise<import('node:fs').Stats> {
    return this.handle().stat();
  }

  private handle(): FileHandle {
    if (!this.fh) throw new DeviceClosedError(`device ${this.path} is closed`);
    return this.fh;
  }

  private checkWritable(op: string): void {
    if (this.readOnly) throw new ReadOnlyDeviceError(`${op} on read-only device ${this.path}`);
  }

  private async pwriteAll(data: Uint8Array, offset: number): Promise<void> {
    const fh = this.handle();
    let done = 0;
    while (done < data.length) {
      const { bytesWritten } = await this.io(
        () => fh.write(data, done, data.length - done, offset + done),
        'write',
        offset + done,
      );
      if (bytesWritten === 0) throw new DeviceError(`write to ${this.path} at ${offset + done} made no progress`);
      done += bytesWritten;
    }
  }

  private async zeroFill(offset: number, length: number): Promise<void> {
    if (length === 0) return;
    // One shared, never-mutated zero buffer: memory is bounded by zeroChunk
    // however large the range is.
    this.zeroBuf ??= Buffer.alloc(this.zeroChunk);
    const zero = this.zeroBuf;
    let pos = offset;
    const end = offset + length;
    while (pos < end) {
      const n = Math.min(zero.length, end - pos);
      await this.pwriteAll(zero.subarray(0, n), pos);
      pos += n;
    }
  }

  private async io<T>(fn: () => Promise<T>, op: string, offset: number): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      // Keep the errno code (ENOSPC, EIO, ...) reachable via `cause` so the
      // NBD layer can map it to the right NBD error value.
      throw new DeviceError(`${op} ${this.path} at ${offset} failed: ${(err as Error).message}`, { cause: err });
    }
  }
}

async function deviceSize(path: string, fh: FileHandle): Promise<number> {
  const st = await fh.stat();
  if (st.isFile()) return st.size;
  if (!st.isBlockDevice()) throw new DeviceError(`${path} is neither a regular file nor a block device`);
  const rdev = st.rdev;
  // Linux dev_t encoding (glibc gnu_dev_major/minor).
  const major = Math.floor(rdev / 256) & 0xfff;
  const minor = (rdev & 0xff) | (Math.floor(rdev / 4096) & 0xfff00);
  try {
    const sectors = Number((await readFile(`/sys/dev/block/${major}:${minor}/size`, 'utf8')).trim());
    if (Number.isSafeInteger(sectors) && sectors >= 0) return sectors * 512;
  } catch {
    // fall through to blockdev
  }
  try {
    const { stdout } = await execFileAsync('blockdev', ['--getsize64', path], { timeout: 10_000 });
    const size = Number(stdout.trim());
    if (Number.isSafeInteger(size) && size >= 0) return size;
  } catch (err) {
    throw new DeviceError(`cannot determine size of block device ${path}`, { cause: err });
  }
  throw new DeviceError(`cannot determine size of block device ${path}`);
}
