/**
 * AES-256-GCM per-extent sealing (docs/FORMAT.md "Payload"), in the format's
 * terms: (key, nonce, aad, data) argument order and ChecksumError for an
 * authentication failure (a tampered extent is a checksum failure; a wrong
 * key is named earlier by its fingerprint). The one implementation of
 * AES-GCM and the key fingerprint is src/codec/crypto.ts (pure functions);
 * this module only adapts it.
 */
import { AuthenticationError } from './errors.js';
import { assertKey as assertCodecKey, keyFingerprintBytes as codecFingerprintBytes, openOrFail, randomNonce, seal as codecSeal } from '../codec/crypto.js';

/** Throws EncryptionKeyError unless the key is 32 bytes (KEY_SIZE). */
export function assertKey(key: Uint8Array): void {
  assertCodecKey(key);
}

/** Fingerprint bytes = first 16 bytes of SHA-256(key); never the key itself. */
export function keyFingerprintBytes(key: Uint8Array): Buffer {
  assertCodecKey(key);
  return codecFingerprintBytes(key);
}

/** Fingerprint as 32 lowercase hex digits. */
export function keyFingerprint(key: Uint8Array): string {
  return keyFingerprintBytes(key).toString('hex');
}

/** A fresh random 96-bit nonce (one per extent). */
export function newNonce(): Buffer {
  return randomNonce();
}

/** Returns ciphertext || 16-byte tag. */
export function seal(key: Uint8Array, nonce: Uint8Array, aad: Uint8Array, plaintext: Uint8Array): Buffer {
  return codecSeal(key, nonce, plaintext, aad);
}

/** Opens ciphertext || tag; authentication failure → AuthenticationError (a ChecksumError). */
export function open(key: Uint8Array, nonce: Uint8Array, aad: Uint8Array, sealed: Uint8Array, what: string): Buffer {
  const r = openOrFail(key, nonce, sealed, aad);
  if (r.ok) return r.plain;
  if (r.reason === 'short') throw new AuthenticationError(`${what}: sealed payload shorter than the GCM tag`);
  throw new AuthenticationError(`${what}: AES-256-GCM authentication failed (wrong key or tampered data)`, { cause: r.cause });
}
