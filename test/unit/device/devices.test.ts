import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DeviceClosedError, ReadOnlyDeviceError } from '../../../src/device/errors.js';
import { FileDevice } from '../../../src/device/file-device.js';
import { MemoryDevice } from '../../../src/device/memory-device.js';
import { checkRange } from '../../../src/device/range.js';
import type { BlockDevice } from '../../../src/device/types.js';
import { DeviceError, OutOfRangeError } from '../../../src/errors.js';

const SIZE = 3 * 1024 * 1024 + 123; // deliberately not a multiple of anything

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cowstream-dev-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('checkRange', () => {
  it('accepts in-range, rejects everything else', () => {
    expect(() => checkRange(100, 0, 100)).not.toThrow();
    expect(() => checkRange(100, 100, 0)).not.toThrow();
    expect(() => checkRange(100, 99, 2)).toThrow(OutOfRangeError);
    expect(() => checkRange(100, -1, 1)).toThrow(OutOfRangeError);
    expect(() => checkRange(100, 1.5, 1)).toThrow(OutOfRangeError);
    expect(() => checkRange(100, 0, Number.NaN)).toThrow(OutOfRangeError);
    expect(() => checkRange(100, 2 ** 60, 1)).toThrow(OutOfRangeError);
  });
});

/** The same behavioural contract for both implementations. */
function contract(name: string, make: (init: Buffer, readOnly?: boolean) => Promise<BlockDevice>): void {
  describe(`${name} (BlockDevice contract)`, () => {
    it('size, read, write, writeZeroes, trim, flush', async () => {
      const init = randomBytes(SIZE);
      const d = await make(init);
      expect(d.size).toBe(SIZE);
      expect(d.readOnly).toBe(false);
      expect((await d.read(0, SIZE)).equals(init)).toBe(true);
      const data = randomBytes(70_000);
      await d.write(SIZE - 70_000, data, { fua: true });
      expect((await d.read(SIZE - 70_000, 70_000)).equals(data)).toBe(true);
      // writeZeroes over more than one zero chunk, unaligned
      await d.writeZeroes(1000, 2.5 * 1024 * 1024);
      const z = await d.read(0, SIZE);
      expect(z.subarray(0, 1000).equals(init.subarray(0, 1000))).toBe(true);
      expect(z.subarray(1000, 1000 + 2.5 * 1024 * 1024).every((x) => x === 0)).toBe(true);
      expect(z[1000 + 2.5 * 1024 * 1024]).toBe(init[1000 + 2.5 * 1024 * 1024]);
      // trim reads back as zeroes (deterministic, see FileDevice comment)
      await d.write(5, Buffer.from('xxxxxxxx'));
      await d.trim(6, 3);
      expect((await d.read(5, 5)).toString('latin1')).toBe('x\0\0\0x');
      await d.flush();
      await d.writeZeroes(0, 0);
      expect((await d.read(SIZE, 0)).length).toBe(0);
      await d.close();
    });

    it('out-of-range requests are OutOfRangeError, nothing written', async () => {
      const init = randomBytes(SIZE);
      const d = await make(init);
      await expect(d.read(SIZE - 1, 2)).rejects.toBeInstanceOf(OutOfRangeError);
      await expect(d.read(-1, 1)).rejects.toBeInstanceOf(OutOfRangeError);
      await expect(d.write(SIZE, Buffer.from('a'))).rejects.toBeInstanceOf(OutOfRangeError);
      await expect(d.writeZeroes(SIZE - 10, 11)).rejects.toBeInstanceOf(OutOfRangeError);
      await expect(d.trim(0, SIZE + 1)).rejects.toBeInstanceOf(OutOfRangeError);
      expect((await d.read(0, SIZE)).equals(init)).toBe(true);
      await d.close();
    });

    it('read-only mode refuses writes', async () => {
      const init = randomBytes(SIZE);
      const d = await make(init, true);
      expect(d.readOnly).toBe(true);
      await expect(d.write(0, Buffer.from('a'))).rejects.toBeInstanceOf(ReadOnlyDeviceError);
      await expect(d.writeZeroes(0, 1)).rejects.toBeInstanceOf(ReadOnlyDeviceError);
      await expect(d.trim(0, 1)).rejects.toBeInstanceOf(ReadOnlyDeviceError);
      await d.flush();
      expect((await d.read(0, 10)).equals(init.subarray(0, 10))).toBe(true);
      await d.close();
    });

    it('use after close fails with DeviceClosedError', async () => {
      const d = await make(Buffer.alloc(1024));
      await d.close();
      await expect(d.read(0, 1)).rejects.toBeInstanceOf(DeviceClosedError);
      await expect(d.write(0, Buffer.from('a'))).rejects.toBeInstanceOf(DeviceClosedError);
    });

    it('concurrent writes to disjoint ranges all land', async () => {
      const d = await make(Buffer.alloc(SIZE));
      const parts = Array.from({ length: 32 }, (_, i) => ({ off: i * 65536, data: randomBytes(65536) }));
      await Promise.all(parts.map((p) => d.write(p.off, p.data)));
      for (const p of parts) expect((await d.read(p.off, 65536)).equals(p.data)).toBe(true);
      await d.close();
    });
  });
}

let n = 0;
contract('FileDevice', async (init, readOnly) => {
  const p = join(dir, `img-${n++}.raw`);
  await writeFile(p, init);
  return FileDevice.open(p, { readOnly, zeroChunkBytes: 1024 * 1024 });
});
contract('MemoryDevice', async (init, readOnly) => new MemoryDevice(init, { readOnly }));

describe('FileDevice specifics', () => {
  it('writes reach the file; size comes from fstat', async () => {
    const p = join(dir, 'specific.raw');
    await writeFile(p, Buffer.alloc(8192));
    const d = await FileDevice.open(p);
    expect(d.size).toBe(8192);
    await d.write(4096, Buffer.from('hello'), { fua: true });
    await d.flush();
    expect((await readFile(p)).toString('latin1', 4096, 4101)).toBe('hello');
    await d.close();
    await d.close(); // idempotent
    expect((await stat(p)).size).toBe(8192);
  });

  it('bad paths and non-regular files are DeviceError', async () => {
    await expect(FileDevice.open(join(dir, 'missing.raw'))).rejects.toBeInstanceOf(DeviceError);
    await expect(FileDevice.open(dir)).rejects.toBeInstanceOf(DeviceError);
    await expect(FileDevice.open('/dev/null')).rejects.toThrow(/neither a regular file nor a block device/);
  });

  it('a file that shrank behind our back gives a DeviceError, not garbage', async () => {
    const p = join(dir, 'shrink.raw');
    await writeFile(p, Buffer.alloc(8192, 1));
    const d = await FileDevice.open(p);
    await writeFile(p, Buffer.alloc(100, 1));
    await expect(d.read(0, 8192)).rejects.toThrow(/short read/);
    await d.close();
  });
});

describe('MemoryDevice specifics', () => {
  it('contents() and read() return copies', async () => {
    const d = new MemoryDevice(16);
    const r = await d.read(0, 4);
    r.fill(9);
    expect((await d.read(0, 4)).every((x) => x === 0)).toBe(true);
    const c = d.contents();
    c.fill(9);
    expect(d.contents().every((x) => x === 0)).toBe(true);
    await d.flush();
    expect(d.flushCount).toBe(1);
  });
});

describe('mapExtents', () => {
  it('MemoryDevice reports all-zero 4 KiB blocks as holes, clipped to the range', async () => {
    const d = new MemoryDevice(64 * 1024 + 100);
    await d.write(8192, Buffer.from([1]));
    await d.write(64 * 1024 + 99, Buffer.from([2]));
    expect(await d.mapExtents(100, 20_000)).toEqual([
      { length: 8092, hole: true, zero: true },
      { length: 4096, hole: false, zero: false },
      { length: 20_000 - 8092 - 4096, hole: true, zero: true },
    ]);
    expect(await d.mapExtents(64 * 1024, 100)).toEqual([{ length: 100, hole: false, zero: false }]);
    await expect(d.mapExtents(64 * 1024, 101)).rejects.toThrow(OutOfRangeError);
  });

  it('FileDevice reports its range as allocated data of unknown content', async () => {
    const p = join(dir, 'map.raw');
    await writeFile(p, Buffer.alloc(10_000));
    const d = await FileDevice.open(p, { readOnly: true });
    expect(await d.mapExtents(1, 9_999)).toEqual([{ length: 9_999, hole: false, zero: false }]);
    await expect(d.mapExtents(1, 10_000)).rejects.toThrow(OutOfRangeError);
    await d.close();
    await expect(d.mapExtents(0, 1)).rejects.toThrow(DeviceClosedError);
  });
});
