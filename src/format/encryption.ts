/**
 * AES-256-GCM per-extent sealing (docs/FORMAT.md "Payload"). Pure functions
 * over node:crypto. The CODEC helper's src/codec/crypto.ts owns key files;
 * this module only needs the raw 32-byte key.
 */
import { createCipheriv, createDecipheriv, createHash, randomBytes } from 'node:crypto';
import { ChecksumError, EncryptionKeyError } from '../errors.js';
import { FINGERPRINT_SIZE, GCM_TAG_SIZE, KEY_SIZE, NONCE_SIZE } from './layout.js';

export function assertKey(key: Uint8Array): void {
  if (key.length !== KEY_SIZE) {
    throw new EncryptionKeyError(`encryption key must be ${KEY_SIZE} bytes, got ${key.length}`);
  }
}

/** Fingerprint bytes = first 16 bytes of SHA-256(key); never the key itself. */
export function keyFingerprintBytes(key: Uint8Array): Buffer {
  assertKey(key);
  return createHash('sha256').update(key).digest().subarray(0, FINGERPRINT_SIZE);
}

/** Fingerprint as 32 lowercase hex digits. */
export function keyFingerprint(key: Uint8Array): string {
  return keyFingerprintBytes(key).toString('hex');
}

/** A fresh random 96-bit nonce (one per extent). */
export function newNonce(): Buffer {
  return randomBytes(NONCE_SIZE);
}

/** Returns ciphertext || 16-byte tag. */
export function seal(key: Uint8Array, nonce: Uint8Array, aad: Uint8Array, plaintext: Uint8Array): Buffer {
  assertKey(key);
  const c = createCipheriv('aes-256-gcm', key, nonce, { authTagLength: GCM_TAG_SIZE });
  c.setAAD(aad);
  const body = c.update(plaintext);
  const fin = c.final();
  return Buffer.concat([body, fin, c.getAuthTag()]);
}

/** Opens ciphertext || tag; authentication failure → ChecksumError. */
export function open(key: Uint8Array, nonce: Uint8Array, aad: Uint8Array, sealed: Uint8Array, what: string): Buffer {
  assertKey(key);
  if (sealed.length < GCM_TAG_SIZE) throw new ChecksumError(`${what}: sealed payload shorter than the GCM tag`);
  const split = sealed.length - GCM_TAG_SIZE;
  const d = createDecipheriv('aes-256-gcm', key, nonce, { authTagLength: GCM_TAG_SIZE });
  d.setAAD(aad);
  d.setAuthTag(sealed.subarray(split));
  try {
    const body = d.update(sealed.subarray(0, split));
    return Buffer.concat([body, d.final()]);
  } catch (err) {
    throw new ChecksumError(`${what}: AES-256-GCM authentication failed (wrong key or tampered data)`, { cause: err });
  }
}
