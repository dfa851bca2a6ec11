/** SHA-256 helpers (node:crypto; OpenSSL uses the CPU's SHA extensions when present). */
import { createHash, timingSafeEqual, webcrypto } from 'node:crypto';

export const SHA256_BYTES = 32;

/** SHA-256 over one or more byte arrays, as if concatenated. */
export function sha256(...parts: Uint8Array[]): Buffer {
  const h = createHash('sha256');
  for (const p of parts) h.update(p);
  return h.digest();
}

/** True when two digests are equal; constant time for equal lengths. */
export function digestEquals(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && timingSafeEqual(a, b);
}

/** SHA-256 as a libuv thread-pool job (WebCrypto): does not block the event loop. */
export async function sha256Async(data: Uint8Array): Promise<Buffer> {
  return Buffer.from(await webcrypto.subtle.digest('SHA-256', data));
}
