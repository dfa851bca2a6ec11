import type { BlockDevice } from '../../src/device/types.js';

/** A read-only device of `size` zero bytes that costs no memory; with `holes`, its map calls it all hole. */
export function zeroDevice(size: number, holes = false): BlockDevice {
  const dev: BlockDevice = {
    size,
    readOnly: true,
    read: async (_o, l) => Buffer.alloc(l),
    write: () => Promise.reject(new Error('read-only')),
    writeZeroes: () => Promise.reject(new Error('read-only')),
    trim: () => Promise.reject(new Error('read-only')),
    flush: async () => undefined,
    close: async () => undefined,
  };
  if (holes) dev.mapExtents = async (_o, l) => [{ length: l, hole: true, zero: true }];
  return dev;
}
