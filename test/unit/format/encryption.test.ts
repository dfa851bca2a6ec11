import { describe, expect, it } from 'vitest';
import { ChecksumError, EncryptionKeyError } from '../../../src/errors.js';
import { CLUSTER_SIZE } from '../../../src/format/constants.js';
import { decodeExtent } from '../../../src/format/extent.js';
import { keyFingerprint, open, seal } from '../../../src/format/encryption.js';
import { BufferRangeSource } from '../../../src/format/memory.js';
import { openArchive } from '../../../src/format/reader.js';
import { TestZstdCompressor } from '../../helpers/format-compressor.js';
import { buildArchive, makeImage } from '../../helpers/format-fixtures.js';

const compressor = new TestZstdCompressor();
const KEY = Buffer.from('00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff', 'hex');
const OTHER = Buffer.alloc(32, 9);

describe('AES-256-GCM encryption', () => {
  it('seal/open round trip; AAD and tag are authenticated', () => {
    const nonce = Buffer.alloc(12, 1);
    const sealed = seal(KEY, nonce, Buffer.from('hello'), Buffer.from('aad'));
    expect(sealed.length).toBe(5 + 16);
    expect(open(KEY, nonce, sealed, Buffer.from('aad'), 't').toString()).toBe('hello');
    expect(() => open(KEY, nonce, sealed, Buffer.from('aaD'), 't')).toThrow(ChecksumError);
    expect(() => open(OTHER, nonce, sealed, Buffer.from('aad'), 't')).toThrow(ChecksumError);
    expect(() => seal(Buffer.alloc(16), nonce, Buffer.alloc(1), Buffer.alloc(0))).toThrow(EncryptionKeyError);
    expect(keyFingerprint(KEY)).toMatch(/^[0-9a-f]{32}$/);
  });

  it('round trips an encrypted archive and never stores the key or plaintext', async () => {
    const img = makeImage(40 * CLUSTER_SIZE + 777, 11);
    const built = await buildArchive([{ id: 0, name: 'd', data: img }], { compressor, encryptionKey: KEY });
    expect(built.bytes.includes(KEY)).toBe(false);
    // Compressible text blocks of the image must not appear in clear.
    expect(built.bytes.includes(Buffer.from('block-11-'))).toBe(false);
    const r = await openArchive(new BufferRangeSource(built.bytes), { key: KEY, compressor });
    expect(r.header.encryption).toBe('aes-256-gcm');
    expect(r.header.keyFingerprint).toBe(keyFingerprint(KEY));
    const out = Buffer.alloc(img.length);
    for await (const c of r.clusters()) c.data.copy(out, c.cluster * CLUSTER_SIZE);
    expect(out.equals(img)).toBe(true);
    expect((await r.verify()).ok).toBe(true);
    // Unique nonce per extent.
    const nonces = new Set<string>();
    for (const x of r.index.extents) nonces.add(built.bytes.subarray(x.offset + 40, x.offset + 52).toString('hex'));
    expect(nonces.size).toBe(r.index.extents.length);
    expect(r.index.extents.length).toBeGreaterThan(0);
  });

  it('wrong key fails at open, naming the expected fingerprint', async () => {
    const built = await buildArchive([{ id: 0, name: 'd', data: makeImage(3 * CLUSTER_SIZE, 1) }], { compressor, encryptionKey: KEY });
    const err = await openArchive(new BufferRangeSource(built.bytes), { key: OTHER, compressor }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(EncryptionKeyError);
    expect((err as Error).message).toContain(keyFingerprint(KEY));
  });

  it('missing key: open and stored-payload verify work, decoding says which key is needed', async () => {
    const built = await buildArchive([{ id: 0, name: 'd', data: makeImage(3 * CLUSTER_SIZE, 1) }], { compressor, encryptionKey: KEY });
    const r = await openArchive(new BufferRangeSource(built.bytes), { compressor });
    const v = await r.verify();
    expect(v).toMatchObject({ ok: true, plaintextChecked: false });
    const x = r.index.extents[0];
    const err = await r.readExtent(x.offset, x.length).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(EncryptionKeyError);
    expect((err as Error).message).toContain(keyFingerprint(KEY));
    // decodeExtent on a slice with a wrong key and the expected fingerprint also names it.
    const slice = built.bytes.subarray(x.offset, x.offset + x.length);
    await expect(decodeExtent(slice, { key: OTHER, keyFingerprint: keyFingerprint(KEY), compressor })).rejects.toThrow(keyFingerprint(KEY));
    // Without the fingerprint a wrong key still fails authentication, typed.
    await expect(decodeExtent(slice, { key: OTHER, compressor })).rejects.toBeInstanceOf(ChecksumError);
    // v2: the associated data includes the header tag, so the extent only opens bound to its header.
    await expect(decodeExtent(slice, { key: KEY, compressor })).rejects.toBeInstanceOf(ChecksumError);
    expect((await decodeExtent(slice, { key: KEY, compressor, headerTag: r.headerTag })).length).toBe(x.clusterCount);
  });
});
