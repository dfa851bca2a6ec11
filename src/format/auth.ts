/**
 * Format v2 authentication (docs/FORMAT.md "Version 2"): the per-archive MAC
 * key, the header and index tags, and sealed config blobs. Pure functions
 * over node:crypto; AES-GCM itself lives in src/codec/crypto.ts.
 */
import { createHmac, hkdfSync } from 'node:crypto';
import { parse as parseUuid } from 'uuid';
import { openOrFail, randomNonce, seal, NONCE_BYTES, TAG_BYTES } from '../codec/crypto.js';
import { digestEquals } from './checksum.js';
import { AuthenticationError } from './errors.js';
import { TAG_SIZE } from './layout.js';

const MAC_INFO = Buffer.from('cowstream archive v2 mac', 'ascii');
const HEADER_LABEL = Buffer.from('cowstream archive v2 header', 'ascii');
const INDEX_LABEL = Buffer.from('cowstream archive v2 index', 'ascii');
const CONFIG_LABEL = Buffer.from('cowstream archive v2 config', 'ascii');

/** K_mac = HKDF-SHA256(key, salt = archive uuid, info) (RFC 5869): one MAC key per archive. */
export function macKey(key: Uint8Array, archiveUuid: string): Buffer {
  return Buffer.from(hkdfSync('sha256', key, parseUuid(archiveUuid), MAC_INFO, TAG_SIZE));
}

function hmac(k: Uint8Array, ...parts: Uint8Array[]): Buffer {
  const h = createHmac('sha256', k);
  for (const p of parts) h.update(p);
  return h.digest();
}

/** headerTag over the header bytes before the tag. */
export function headerTag(kMac: Uint8Array, headerBody: Uint8Array): Buffer {
  return hmac(kMac, HEADER_LABEL, headerBody);
}

/**
 * indexTag over the header tag, the footer fields other than the trailer
 * digest (`footer[8,32)` and `footer[64,112)`) and the trailer before the tag.
 */
export function indexTag(kMac: Uint8Array, hTag: Uint8Array, footerBody: Uint8Array, trailerBody: Uint8Array): Buffer {
  return hmac(kMac, INDEX_LABEL, hTag, footerBody.subarray(8, 32), footerBody.subarray(64, 112), trailerBody);
}

/** Constant-time tag check; `what` names the part in the AuthenticationError. */
export function checkTag(expected: Uint8Array, stored: Uint8Array, what: string): void {
  if (!digestEquals(expected, stored)) {
    throw new AuthenticationError(`${what}: authentication failed (HMAC-SHA256 tag mismatch): altered without the key`);
  }
}

function configAad(archiveUuid: string, name: string): Buffer {
  return Buffer.concat([CONFIG_LABEL, parseUuid(archiveUuid), Buffer.from(name, 'utf8')]);
}

/** nonce || AES-256-GCM(key, nonce, aad, data) || tag. */
export function sealConfig(key: Uint8Array, archiveUuid: string, name: string, data: Uint8Array): Buffer {
  const nonce = randomNonce();
  return Buffer.concat([nonce, seal(key, nonce, data, configAad(archiveUuid, name))]);
}

export function openConfig(key: Uint8Array, archiveUuid: string, name: string, sealed: Uint8Array, what: string): Buffer {
  if (sealed.length < NONCE_BYTES + TAG_BYTES) throw new AuthenticationError(`${what}: sealed config shorter than nonce and tag`);
  const r = openOrFail(key, sealed.subarray(0, NONCE_BYTES), sealed.subarray(NONCE_BYTES), configAad(archiveUuid, name));
  if (!r.ok) throw new AuthenticationError(`${what}: authentication failed (AES-256-GCM): wrong key or altered without the key`, { cause: r.cause });
  return r.plain;
}
