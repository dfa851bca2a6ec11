/**
 * Off-main-thread SHA-256 and AES-256-GCM for the writer's hot path. Node's
 * WebCrypto runs these as jobs on the libuv thread pool, so hashing and
 * sealing one extent overlaps with compressing others and with the caller's
 * own work (the synchronous node:crypto versions block the event loop for
 * ~7 ms per 4 MiB). Output is byte-identical to the sync helpers.
 */
import { webcrypto } from 'node:crypto';
import { GCM_TAG_SIZE } from './layout.js';
import { assertKey } from './encryption.js';

const subtle = webcrypto.subtle;

export async function sha256Async(data: Uint8Array): Promise<Buffer> {
  return Buffer.from(await subtle.digest('SHA-256', data));
}

export type GcmKey = webcrypto.CryptoKey;

export async function importGcmKey(key: Uint8Array): Promise<GcmKey> {
  assertKey(key);
  return subtle.importKey('raw', key, { name: 'AES-GCM' }, false, ['encrypt']);
}

/** ciphertext || 16-byte tag, same layout as encryption.ts seal(). */
export async function sealAsync(key: GcmKey, nonce: Uint8Array, aad: Uint8Array, plaintext: Uint8Array): Promise<Buffer> {
  const out = await subtle.encrypt({ name: 'AES-GCM', iv: nonce, additionalData: aad, tagLength: GCM_TAG_SIZE * 8 }, key, plaintext);
  return Buffer.from(out);
}
