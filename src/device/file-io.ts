/** Whole-buffer positional I/O on a FileHandle: short reads and writes are continued, never returned. */
import type { FileHandle } from 'node:fs/promises';
import { DeviceError } from '../errors.js';

export async function writeAll(fh: FileHandle, data: Uint8Array, pos: number): Promise<void> {
  let done = 0;
  while (done < data.length) {
    const { bytesWritten } = await fh.write(data, done, data.length - done, pos + done);
    if (bytesWritten === 0) throw new DeviceError(`write at ${pos + done} made no progress`);
    done += bytesWritten;
  }
}

/** Fills `buf` from `pos`; a file that ends first is an error (never uninitialised bytes). */
export async function readAll(fh: FileHandle, buf: Buffer, pos: number): Promise<void> {
  let done = 0;
  while (done < buf.length) {
    const { bytesRead } = await fh.read(buf, done, buf.length - done, pos + done);
    if (bytesRead === 0) throw new DeviceError(`short read at ${pos + done}: file shrank?`);
    done += bytesRead;
  }
}
