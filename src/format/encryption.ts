/**
 * AES-256-GCM per-extent sealing (docs/FORMAT.md "Payload"). The one
 * implementation of AES-GCM, nonces and key fingerprints is
 * src/codec/crypto.ts, with one argument order everywhere:
 * (key, nonce, data, aad). The format adds only its error: an extent that
 * fails authentication is a checksum failure (AuthenticationError); a
 * wrong key is named earlier, by its fingerprint.
 */
import { AuthenticationError } from './errors.js';
import { assertKey, keyFingerprint, openOrFail, randomNonce, seal } from '../codec/crypto.js';

export { assertKey, keyFingerprint, randomNonce, seal };

/** Opens ciphertext || tag; an authentication failure is an AuthenticationError naming `what`. */
export function open(key: Uint8Array, nonce: Uint8Array, sealed: Uint8Array, aad: Uint8Array, what: string): Buffer {
  const r = openOrFail(key, nonce, sealed, aad);
  if (r.ok) return r.plain;
  if (r.reason === 'short') throw new AuthenticationError(`${what}: sealed payload shorter than the GCM tag`);
  throw new AuthenticationError(`${what}: AES-256-GCM authentication failed (wrong key or tampered data)`, { cause: r.cause });
}
