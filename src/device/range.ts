import { OutOfRangeError } from '../errors.js';

/**
 * Validates a byte range against a device size. Every BlockDevice calls this
 * first so that a bad offset/length (negative, fractional, past the end)
 * becomes an OutOfRangeError before any I/O or allocation happens.
 */
export function checkRange(size: number, offset: number, length: number, what = 'request'): void {
  if (!Number.isSafeInteger(offset) || offset < 0) {
    throw new OutOfRangeError(`${what}: bad offset ${offset}`);
  }
  if (!Number.isSafeInteger(length) || length < 0) {
    throw new OutOfRangeError(`${what}: bad length ${length}`);
  }
  if (offset + length > size) {
    throw new OutOfRangeError(`${what}: range [${offset}, ${offset + length}) exceeds device size ${size}`);
  }
}
