/**
 * AES-256-GCM sealing (node:crypto) and key files (32 raw bytes, or wrapped
 * under a passphrase with scrypt).
 *
 * Pure helpers: where the nonce and tag live in an archive is the format's
 * business (docs/FORMAT.md). This is the project's only AES-256-GCM and key
 * fingerprint implementation; src/format/encryption.ts adapts it to the
 * format's argument order and error types. GCM needs a nonce that is never reused with the
 * same key (NIST SP 800-38D §8); callers use randomNonce() per extent — with
 * 96 random bits the collision risk stays below 2^-32 for up to 2^32 extents.
 */
import { createCipheriv, createDecipheriv, randomBytes, scrypt, webcrypto } from 'node:crypto';
import { open as openFile, rename, stat, unlink } from 'node:fs/promises';
import { EncryptionKeyError } from '../errors.js';
import { sha256 } from './hash.js';
import { checkPrivateMode, passphraseFromEnvironment, type PassphraseSource } from './passphrase.js';

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

const FINGERPRINT_BYTES = 16;

/** First 16 bytes of SHA-256(key): identifies a key without revealing it. */
function keyFingerprintBytes(key: Uint8Array): Buffer {
  assertKey(key);
  return sha256(key).subarray(0, FINGERPRINT_BYTES);
}

/** Hex of keyFingerprintBytes (32 lowercase hex digits). */
export function keyFingerprint(key: Uint8Array): string {
  return keyFingerprintBytes(key).toString('hex');
}

export interface KeyFileInfo {
  path: string;
  fingerprint: string;
  /** True when the key is wrapped under a passphrase. */
  wrapped: boolean;
}

/** Passphrase-wrapped key file (JSON, docs/security.md "Key files"). */
const WRAPPED_FORMAT = 'cowstream-wrapped-key';
/** scrypt cost: N = 2^17, r = 8, p = 1 (128 MiB, OWASP's recommendation for scrypt). */
const SCRYPT = { N: 2 ** 17, r: 8, p: 1 } as const;
/** A hostile key file may not make us spend more than this on scrypt (128·N·r bytes). */
const SCRYPT_MAX_MEM = 256 * 1024 * 1024;
const MAX_KEY_FILE = 4096;

interface WrappedKeyFile {
  format: typeof WRAPPED_FORMAT;
  version: 1;
  kdf: 'scrypt';
  N: number;
  r: number;
  p: number;
  salt: string;
  nonce: string;
  sealed: string;
  fingerprint: string;
}

function scryptKey(passphrase: string, salt: Buffer, N: number, r: number, p: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    scrypt(passphrase.normalize('NFC'), salt, KEY_BYTES, { N, r, p, maxmem: SCRYPT_MAX_MEM + 1024 * 1024 }, (err, k) => (err ? reject(err) : resolve(k)));
  });
}

/** The associated data binds the KDF parameters: editing them fails authentication. */
function wrapAad(w: Pick<WrappedKeyFile, 'N' | 'r' | 'p' | 'salt'>): Buffer {
  return Buffer.from(`${WRAPPED_FORMAT} v1 scrypt N=${w.N} r=${w.r} p=${w.p} salt=${w.salt}`, 'utf8');
}

/** Seals `key` under a key derived from `passphrase` (scrypt, fresh salt and nonce). */
export async function wrapKey(key: Buffer, passphrase: string): Promise<string> {
  assertKey(key);
  if (passphrase.length === 0) throw new EncryptionKeyError('the passphrase is empty');
  const salt = randomBytes(16);
  const kek = await scryptKey(passphrase, salt, SCRYPT.N, SCRYPT.r, SCRYPT.p);
  const nonce = randomNonce();
  const head = { N: SCRYPT.N, r: SCRYPT.r, p: SCRYPT.p, salt: salt.toString('base64') };
  const file: WrappedKeyFile = {
    format: WRAPPED_FORMAT,
    version: 1,
    kdf: 'scrypt',
    ...head,
    nonce: nonce.toString('base64'),
    sealed: seal(kek, nonce, key, wrapAad(head)).toString('base64'),
    fingerprint: keyFingerprint(key),
  };
  return JSON.stringify(file, null, 2) + '\n';
}

function parseWrapped(text: string, path: string): WrappedKeyFile {
  let w: WrappedKeyFile;
  try {
    w = JSON.parse(text) as WrappedKeyFile;
  } catch {
    throw new EncryptionKeyError(`key file ${path} is neither a 32-byte key nor a passphrase-wrapped key file`);
  }
  const pow2 = (n: number): boolean => Number.isInteger(n) && n > 1 && (n & (n - 1)) === 0;
  if (w === null || typeof w !== 'object' || w.format !== WRAPPED_FORMAT || w.version !== 1 || w.kdf !== 'scrypt') {
    throw new EncryptionKeyError(`key file ${path} is neither a 32-byte key nor a passphrase-wrapped key file`);
  }
  if (!pow2(w.N) || !Number.isInteger(w.r) || w.r < 1 || !Number.isInteger(w.p) || w.p < 1 || w.p > 16 || 128 * w.N * w.r > SCRYPT_MAX_MEM) {
    throw new EncryptionKeyError(`key file ${path}: scrypt parameters out of range (N=${w.N} r=${w.r} p=${w.p})`);
  }
  if (typeof w.salt !== 'string' || typeof w.nonce !== 'string' || typeof w.sealed !== 'string' || typeof w.fingerprint !== 'string') {
    throw new EncryptionKeyError(`key file ${path}: malformed wrapped key`);
  }
  return w;
}

/** Opens a wrapped key file's text with `passphrase`; a wrong passphrase is an EncryptionKeyError. */
export async function unwrapKey(text: string, passphrase: string, path: string): Promise<Buffer> {
  const w = parseWrapped(text, path);
  const kek = await scryptKey(passphrase, Buffer.from(w.salt, 'base64'), w.N, w.r, w.p);
  const r = openOrFail(kek, Buffer.from(w.nonce, 'base64'), Buffer.from(w.sealed, 'base64'), wrapAad(w));
  if (!r.ok || r.plain.length !== KEY_BYTES) throw new EncryptionKeyError(`key file ${path}: wrong passphrase (or the file was altered)`);
  if (keyFingerprint(r.plain) !== w.fingerprint) throw new EncryptionKeyError(`key file ${path}: the unwrapped key does not match the recorded fingerprint`);
  return r.plain;
}

/** Creates `path` exclusively with mode 0600 and writes `data` (fsynced). */
async function writeNewPrivateFile(path: string, data: string | Buffer, what: string): Promise<void> {
  let fh;
  try {
    fh = await openFile(path, 'wx', 0o600);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EEXIST') throw new EncryptionKeyError(`refusing to overwrite existing ${what} ${path}`, { cause: err });
    throw new EncryptionKeyError(`cannot create ${what} ${path}: ${(err as Error).message}`, { cause: err });
  }
  try {
    // The umask can only remove bits from 0600, but chmod anyway so the mode
    // is exactly 0600 on every platform.
    await fh.chmod(0o600);
    await fh.writeFile(data);
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/**
 * Writes 32 random bytes to `path` with mode 0600 — wrapped under
 * `passphrase` when given. Refuses to overwrite an existing file (O_EXCL):
 * replacing a key would orphan every archive it sealed.
 */
export async function createKeyFile(path: string, opts: { passphrase?: string } = {}): Promise<KeyFileInfo> {
  const key = randomBytes(KEY_BYTES);
  const data = opts.passphrase !== undefined ? await wrapKey(key, opts.passphrase) : key;
  await writeNewPrivateFile(path, data, 'key file');
  return { path, fingerprint: keyFingerprint(key), wrapped: opts.passphrase !== undefined };
}

/** Reads a key file's bytes after checking it is a private regular file of a plausible size. */
async function readKeyFileBytes(path: string): Promise<Buffer> {
  let size: number;
  try {
    const st = await stat(path);
    if (!st.isFile()) throw new EncryptionKeyError(`key file ${path} is not a regular file`);
    checkPrivateMode(path, st.mode, 'key file');
    size = st.size;
  } catch (err) {
    if (err instanceof EncryptionKeyError) throw err;
    throw new EncryptionKeyError(`cannot read key file ${path}: ${(err as Error).message}`, { cause: err });
  }
  if (size !== KEY_BYTES && (size < 64 || size > MAX_KEY_FILE)) {
    throw new EncryptionKeyError(`key file ${path} must be exactly ${KEY_BYTES} bytes (or a passphrase-wrapped key file), it has ${size}`);
  }
  const fh = await openFile(path, 'r');
  try {
    const buf = Buffer.alloc(size + 1);
    const { bytesRead } = await fh.read(buf, 0, size + 1, 0);
    if (bytesRead !== size) throw new EncryptionKeyError(`key file ${path} changed while being read`);
    return buf.subarray(0, size);
  } finally {
    await fh.close();
  }
}

/**
 * Reads a key file: 32 raw bytes, or a passphrase-wrapped key (the
 * passphrase from `passphrase`, by default the environment or a prompt).
 * Refuses a file that group or others may read.
 */
export async function readKeyFile(path: string, passphrase: PassphraseSource = passphraseFromEnvironment()): Promise<Buffer> {
  const bytes = await readKeyFileBytes(path);
  if (bytes.length === KEY_BYTES) return bytes;
  const text = bytes.toString('utf8');
  parseWrapped(text, path); // not a key file: say so before asking for a passphrase
  return unwrapKey(text, await passphrase(`passphrase for key file ${path}`), path);
}

/**
 * Changes (or with `next` = null removes) the passphrase of a key file. The
 * key, and so its fingerprint, stays the same. The file is replaced
 * atomically (write a 0600 sibling, fsync, rename).
 */
export async function changeKeyPassphrase(path: string, current: PassphraseSource, next: string | null): Promise<KeyFileInfo> {
  const key = await readKeyFile(path, current);
  const data = next === null ? key : await wrapKey(key, next);
  const tmp = `${path}.tmp-${randomBytes(6).toString('hex')}`;
  await writeNewPrivateFile(tmp, data, 'key file');
  try {
    await rename(tmp, path);
  } catch (err) {
    await unlink(tmp).catch(() => undefined);
    throw new EncryptionKeyError(`cannot replace key file ${path}: ${(err as Error).message}`, { cause: err });
  }
  return { path, fingerprint: keyFingerprint(key), wrapped: next !== null };
}
