/**
 * AES-256-GCM sealing (node:crypto) and 32-byte key files.
 *
 * Pure helpers: where the nonce and tag live in an archive is the format's
 * business (docs/FORMAT.md). This is the project's only AES-256-GCM and key
 * fingerprint implementation; src/format/encryption.ts adapts it to the
 * format's argument order and error types. GCM needs a nonce that is never reused with the
 * same key (NIST SP 800-38D §8); callers use randomNonce() per extent — with
 * 96 random bits the collision risk stays below 2^-32 for up to 2^32 extents.
 */
import { createCipheriv, createDecipheriv, randomBytes, webcrypto } from 'node:crypto';
import { open as openFile, stat } from 'node:fs/promises';
import { EncryptionKeyError } from '../errors.js';
import { sha256 } from './hash.js';

export const KEY_BYTES = 32;
export const NONCE_BYTES = 12;
export const TAG_BYTES = 16;

/** A fresh random 96-bit GCM nonce. */
export function randomNonce(): Buffer {
  return randomBytes(NONCE_BYTES);
}

/** Throws EncryptionKeyError unless `key` is 32 bytes. */
export function assertKey(key: Uint8Array): void {
  if (key.length !== KEY_BYTES) throw new EncryptionKeyError(`encryption key must be ${KEY_BYTES} bytes, got ${key.length}`);
}

function checkNonce(nonce: Uint8Array): void {
  if (nonce.length !== NONCE_BYTES) throw new EncryptionKeyError(`GCM nonce must be ${NONCE_BYTES} bytes, got ${nonce.length}`);
}

/** Encrypts `plaintext`; returns ciphertext followed by the 16-byte tag. `aad` is authenticated, not encrypted. */
export function seal(key: Uint8Array, nonce: Uint8Array, plaintext: Uint8Array, aad?: Uint8Array): Buffer {
  assertKey(key);
  checkNonce(nonce);
  const cipher = createCipheriv('aes-256-gcm', key, nonce, { authTagLength: TAG_BYTES });
  if (aad) cipher.setAAD(aad);
  const head = cipher.update(plaintext);
  const tail = cipher.final(); // always empty for GCM (a stream mode)
  return Buffer.concat([head, tail, cipher.getAuthTag()]);
}

/** Result of openOrFail(): the plaintext, or why authentication failed. */
export type OpenResult = { ok: true; plain: Buffer } | { ok: false; reason: 'short' | 'auth'; cause?: unknown };

/** An AES-256-GCM key imported once for sealAsync(). */
export type SealKey = webcrypto.CryptoKey;

export async function importSealKey(key: Uint8Array): Promise<SealKey> {
  assertKey(key);
  return webcrypto.subtle.importKey('raw', key, { name: 'AES-GCM' }, false, ['encrypt']);
}

/**
 * Same bytes as seal(), but WebCrypto runs it as a job on the libuv thread
 * pool, so sealing one extent does not block the event loop (the sync
 * version takes a few ms per 4 MiB) and overlaps with other work.
 */
export async function sealAsync(key: SealKey, nonce: Uint8Array, plaintext: Uint8Array, aad: Uint8Array): Promise<Buffer> {
  checkNonce(nonce);
  const out = await webcrypto.subtle.encrypt({ name: 'AES-GCM', iv: nonce, additionalData: aad, tagLength: TAG_BYTES * 8 }, key, plaintext);
  return Buffer.from(out);
}

/**
 * Decrypts ciphertext||tag made by seal() without choosing an error type
 * (callers map a failure to their own: EncryptionKeyError here,
 * ChecksumError in the archive format). Bad key/nonce sizes still throw
 * EncryptionKeyError.
 */
export function openOrFail(key: Uint8Array, nonce: Uint8Array, sealed: Uint8Array, aad?: Uint8Array): OpenResult {
  assertKey(key);
  checkNonce(nonce);
  if (sealed.length < TAG_BYTES) return { ok: false, reason: 'short' };
  const body = sealed.subarray(0, sealed.length - TAG_BYTES);
  const tag = sealed.subarray(sealed.length - TAG_BYTES);
  const decipher = createDecipheriv('aes-256-gcm', key, nonce, { authTagLength: TAG_BYTES });
  decipher.setAuthTag(tag);
  if (aad) decipher.setAAD(aad);
  const head = decipher.update(body);
  try {
    const tail = decipher.final();
    return { ok: true, plain: tail.length === 0 ? head : Buffer.concat([head, tail]) };
  } catch (err) {
    return { ok: false, reason: 'auth', cause: err };
  }
}

/**
 * Decrypts ciphertext||tag made by seal(). Throws EncryptionKeyError when
 * authentication fails: a wrong key, a wrong nonce/aad, or altered bytes.
 */
export function open(key: Uint8Array, nonce: Uint8Array, sealed: Uint8Array, aad?: Uint8Array): Buffer {
  const r = openOrFail(key, nonce, sealed, aad);
  if (r.ok) return r.plain;
  if (r.reason === 'short') throw new EncryptionKeyError(`sealed data of ${sealed.length} bytes is shorter than the GCM tag`);
  throw new EncryptionKeyError(
    `decryption failed (GCM authentication): wrong key (fingerprint ${keyFingerprint(key)}) or altered data`,
    { cause: r.cause },
  );
}

export const FINGERPRINT_BYTES = 16;

/** First 16 bytes of SHA-256(key): identifies a key without revealing it. */
export function keyFingerprintBytes(key: Uint8Array): Buffer {
  return sha256(key).subarray(0, FINGERPRINT_BYTES);
}

/** Hex of keyFingerprintBytes (32 lowercase hex digits). */
export function keyFingerprint(key: Uint8Array): string {
  return keyFingerprintBytes(key).toString('hex');
}

export interface KeyFileInfo {
  path: string;
  fingerprint: string;
}

/**
 * Writes 32 random bytes to `path` with mode 0600. Refuses to overwrite an
 * existing file (O_EXCL): replacing a key would orphan every archive it sealed.
 */
export async function createKeyFile(path: string): Promise<KeyFileInfo> {
  const key = randomBytes(KEY_BYTES);
  let fh;
  try {
    fh = await openFile(path, 'wx', 0o600);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EEXIST') throw new EncryptionKeyError(`refusing to overwrite existing key file ${path}`, { cause: err });
    throw new EncryptionKeyError(`cannot create key file ${path}: ${(err as Error).message}`, { cause: err });
  }
  try {
    // The umask can only remove bits from 0600, but chmod anyway so the mode
    // is exactly 0600 on every platform.
    await fh.chmod(0o600);
    await fh.writeFile(key);
    await fh.sync();
  } finally {
    await fh.close();
  }
  return { path, fingerprint: keyFingerprint(key) };
}

/** Reads a key file, which must be exactly 32 bytes (checked before reading). */
export async function readKeyFile(path: string): Promise<Buffer> {
  let size: number;
  try {
    const st = await stat(path);
    if (!st.isFile()) throw new EncryptionKeyError(`key file ${path} is not a regular file`);
    size = st.size;
  } catch (err) {
    if (err instanceof EncryptionKeyError) throw err;
    throw new EncryptionKeyError(`cannot read key file ${path}: ${(err as Error).message}`, { cause: err });
  }
  if (size !== KEY_BYTES) {
    throw new EncryptionKeyError(`key file ${path} must be exactly ${KEY_BYTES} bytes, it has ${size}`);
  }
  const fh = await openFile(path, 'r');
  try {
    const buf = Buffer.alloc(KEY_BYTES + 1);
    const { bytesRead } = await fh.read(buf, 0, KEY_BYTES + 1, 0);
    if (bytesRead !== KEY_BYTES) {
      throw new EncryptionKeyError(`key file ${path} must be exactly ${KEY_BYTES} bytes, read ${bytesRead}`);
    }
    return buf.subarray(0, KEY_BYTES);
  } finally {
    await fh.close();
  }
}
