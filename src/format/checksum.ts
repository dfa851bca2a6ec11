/** The format's digest check (docs/FORMAT.md "Conventions"); SHA-256 itself lives in codec/hash.ts. */
import { ChecksumError } from '../errors.js';
import { digestEquals, sha256 } from '../codec/hash.js';

export { digestEquals, sha256 };

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
