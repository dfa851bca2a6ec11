import { constants as fsc } from 'node:fs';
import { open } from 'node:fs/promises';

/**
 * Reads a small regular file the agent does not own the content of (a config
 * file named by a request, its own state file): the final component is not
 * followed if it is a symlink (O_NOFOLLOW), a FIFO or device cannot block or
 * feed us (O_NONBLOCK, then fstat of what was opened must be a regular
 * file), and at most its fstat size (<= maxBytes) is read. Errors are plain
 * (`is a symlink (not followed)`, `not a regular file`, ...): the caller names the file.
 */
export async function readBoundedFile(p: string, maxBytes: number): Promise<Buffer> {
  let fh;
  try {
    fh = await open(p, fsc.O_RDONLY | fsc.O_NOFOLLOW | fsc.O_NONBLOCK);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ELOOP') throw new Error('is a symlink (not followed)', { cause: err });
    throw err;
  }
  try {
    const st = await fh.stat();
    if (!st.isFile()) throw new Error('not a regular file');
    if (st.size > maxBytes) throw new Error(`larger than ${maxBytes} bytes`);
    // One byte more than fstat said: filling it means the file grew while we read it.
    const buf = Buffer.alloc(st.size + 1);
    let n = 0;
    for (;;) {
      const { bytesRead } = await fh.read(buf, n, buf.length - n, n);
      if (bytesRead === 0) break;
      n += bytesRead;
      if (n === buf.length) throw new Error('changed while it was read');
    }
    return Buffer.from(buf.subarray(0, n));
  } finally {
    await fh.close();
  }
}
