/** SHA-256 helpers shared by every part of the format (docs/FORMAT.md "Conventions"). */
import { createHash, timingSafeEqual } from 'node:crypto';
import { ChecksumError } from '../errors.js';

export function sha256(...parts: Uint8Array[]): Buffer {
  const h = createHash('sha256');
  for (const p of parts) h.update(p);
  return h.digest();
}

export function digestEquals(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && timingSafeEqual(a, b);
}

/** Throws ChecksumError unless SHA-256(data) equals `expected`. */
export function checkSha256(data: Uint8Array, expected: Uint8Array, what: string): void {
  const actual = sha256(data);
  if (!digestEquals(actual, expected)) {
    throw new ChecksumError(
      `${what}: SHA-256 mismatch (stored ${Buffer.from(expected).toString('hex').slice(0, 16)}…, ` +
        `computed ${actual.toString('hex').slice(0, 16)}…)`,
    );
  }
}
