/**
 * Local-file ByteSink and RangeSource (docs/FORMAT.md: archives are written
 * append-only and read with ranged reads).
 *
 * FileByteSink writes `<path>.partial` and only makes `<path>` visible on
 * close (link for no-overwrite, rename for overwrite), so an interrupted
 * archive never looks complete; abort unlinks the partial file. `-` writes
 * to stdout (nothing to rename or unlink there).
 */
import { constants as fsc } from 'node:fs';
import { type FileHandle, link, open, rename, stat, unlink } from 'node:fs/promises';
import type { Writable } from 'node:stream';
import { dirname } from 'node:path';
import { fsyncDir } from '../device/durable.js';
import { ConflictError, NotFoundError, StoreError, TruncatedArchiveError } from '../errors.js';
import type { ByteSink, RangeSource } from '../format/sink.js';

export interface FileByteSinkOptions {
  /** Replace an existing file at close (default false: ConflictError). */
  overwrite?: boolean;
  /** Stream used for `-` (default process.stdout); for tests. */
  stdout?: Writable;
}

function ioError(err: unknown, what: string): StoreError {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  if (code === 'ENOENT') return new NotFoundError(`${what}: no such file or directory`, { cause: err });
  if (code === 'EEXIST') return new ConflictError(`${what}: already exists`, { cause: err });
  return new StoreError(`${what}: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
}

export class FileByteSink implements ByteSink {
  private state: 'open' | 'closed' | 'aborted' = 'open';
  bytesWritten = 0;

  private constructor(
    /** Final path, or '-' for stdout. */
    readonly path: string,
    private readonly fh: FileHandle | undefined,
    private readonly stream: Writable | undefined,
    private readonly overwrite: boolean,
  ) {}

  get partialPath(): string | undefined {
    return this.fh ? `${this.path}.partial` : undefined;
  }

  static async create(path: string, opts: FileByteSinkOptions = {}): Promise<FileByteSink> {
    if (path === '-') return new FileByteSink(path, undefined, opts.stdout ?? process.stdout, false);
    const overwrite = opts.overwrite ?? false;
    if (!overwrite) {
      // Early, friendly check; close() re-checks atomically with link().
      const exists = await stat(path).then(
        () => true,
        () => false,
      );
      if (exists) throw new ConflictError(`${path}: already exists (refusing to overwrite)`);
    }
    let fh: FileHandle;
    try {
      // A new file only (O_EXCL): never truncate whatever sits there, never
      // follow a planted symlink (O_NOFOLLOW); archives are not for other users (0600).
      fh = await open(`${path}.partial`, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL | fsc.O_NOFOLLOW, 0o600);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EEXIST' || (err as NodeJS.ErrnoException).code === 'ELOOP') {
        throw new ConflictError(`${path}.partial already exists (left by an interrupted run, or planted): remove it and retry`, { cause: err });
      }
      throw ioError(err, `${path}.partial`);
    }
    return new FileByteSink(path, fh, undefined, overwrite);
  }

  async write(chunk: Uint8Array): Promise<void> {
    if (this.state !== 'open') throw new StoreError(`${this.path}: write after ${this.state}`);
    if (this.fh) {
      try {
        let done = 0;
        while (done < chunk.length) {
          const { bytesWritten } = await this.fh.write(chunk, done, chunk.length - done, null);
          done += bytesWritten;
        }
      } catch (err) {
        throw ioError(err, `${this.partialPath}`);
      }
    } else {
      await writeStream(this.stream as Writable, chunk);
    }
    this.bytesWritten += chunk.length;
  }

  async close(): Promise<void> {
    if (this.state !== 'open') throw new StoreError(`${this.path}: close after ${this.state}`);
    this.state = 'closed';
    if (!this.fh) return;
    const partial = this.partialPath as string;
    try {
      // Durable before visible.
      await this.fh.sync();
      await this.fh.close();
      if (this.overwrite) {
        await rename(partial, this.path);
      } else {
        await link(partial, this.path);
        await unlink(partial);
      }
      // The new name is durable only once its directory is.
      await fsyncDir(dirname(this.path));
    } catch (err) {
      await unlink(partial).catch(() => undefined);
      throw ioError(err, this.path);
    }
  }

  async abort(_reason?: unknown): Promise<void> {
    if (this.state !== 'open') return;
    this.state = 'aborted';
    if (!this.fh) return;
    await this.fh.close().catch(() => undefined);
    await unlink(this.partialPath as string).catch(() => undefined);
  }
}

/** Writes honouring stream backpressure ('drain'), rejecting on stream errors. */
function writeStream(stream: Writable, chunk: Uint8Array): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (err: unknown): void => {
      reject(ioError(err, 'stdout'));
    };
    stream.once('error', onError);
    const ok = stream.write(chunk, (err) => {
      if (err) onError(err);
    });
    const done = (): void => {
      stream.off('error', onError);
      resolve();
    };
    if (ok) done();
    else stream.once('drain', done);
  });
}

export class FileRangeSource implements RangeSource {
  private constructor(
    readonly name: string,
    readonly size: number,
    private readonly fh: FileHandle,
  ) {}

  static async open(path: string): Promise<FileRangeSource> {
    let fh: FileHandle;
    try {
      fh = await open(path, 'r');
    } catch (err) {
      throw ioError(err, path);
    }
    try {
      const st = await fh.stat();
      if (!st.isFile()) throw new StoreError(`${path}: not a regular file`);
      return new FileRangeSource(path, st.size, fh);
    } catch (err) {
      await fh.close().catch(() => undefined);
      throw err instanceof StoreError ? err : ioError(err, path);
    }
  }

  async read(offset: number, length: number, into?: Buffer): Promise<Buffer> {
    // Callers validate ranges against `size` first; this guards the allocation anyway.
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this.size) {
      throw new StoreError(`${this.name}: read [${offset}, +${length}) outside the file (${this.size} bytes)`);
    }
    const buf = into !== undefined && into.length >= length ? into.subarray(0, length) : Buffer.allocUnsafe(length);
    let done = 0;
    try {
      while (done < length) {
        const { bytesRead } = await this.fh.read(buf, done, length - done, offset + done);
        if (bytesRead === 0) break;
        done += bytesRead;
      }
    } catch (err) {
      throw ioError(err, this.name);
    }
    if (done !== length) throw new TruncatedArchiveError(`${this.name}: file shrank: read ${done} of ${length} bytes at ${offset}`);
    return buf;
  }

  async close(): Promise<void> {
    await this.fh.close().catch(() => undefined);
  }
}
