/**
 * A restore checks the plaintext digest end to end and, without --verify,
 * skips the stored-payload digest (DecodeExtentOptions.checkStoredDigest).
 * That is safe only if (1) a change to any byte of a stored extent either
 * fails the decode or leaves what it returns exactly as it was (a bit of the
 * zstd frame header that changes nothing decoded: the stored digest would
 * flag it, `verify` still does), and (2) decompression of a forged payload is bounded:
 * it fails fast, allocates nothing sized by what the frame claims.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { ZstdPool, nativeZstdAvailable } from '../../../src/codec/zstd-pool.js';
import { CowstreamError } from '../../../src/errors.js';
import { CLUSTER_SIZE } from '../../../src/format/constants.js';
import { decodeExtentLeased } from '../../../src/format/extent.js';
import { BufferRangeSource } from '../../../src/format/memory.js';
import { openArchive } from '../../../src/format/reader.js';
import { buildArchive } from '../../helpers/format-fixtures.js';

const describeNative = describe.skipIf(!nativeZstdAvailable());
const pool = nativeZstdAvailable() ? new ZstdPool({ backend: 'native', workers: 1 }) : undefined;
afterAll(async () => pool?.close());

/** A few-KB archive of compressible text (stored compressed) or of noise (stored raw). */
async function archiveBytes(kind: 'text' | 'noise'): Promise<Buffer> {
  const data = kind === 'noise' ? randomBytes(2 * CLUSTER_SIZE) : Buffer.alloc(3 * CLUSTER_SIZE);
  if (kind === 'text') for (let i = 0; i < data.length; i += 64) data.write(`block ${i % 7} of a compressible cluster `, i);
  const built = await buildArchive([{ id: 1, name: kind, data }], { compressor: pool!, seed: 5 });
  return built.bytes;
}

describeNative('restore without the stored-payload digest (plaintext digest only)', () => {
  it.each(['text', 'noise'] as const)('a change to any byte of an extent fails its decode or changes nothing it returns (%s extent)', async (kind) => {
    const bytes = await archiveBytes(kind);
    const reader = await openArchive(new BufferRangeSource(bytes), { compressor: pool! });
    const extents = reader.index.extents;
    expect(extents.length).toBeGreaterThan(0);
    let harmless = 0;
    let tried = 0;
    for (const x of extents) {
      const good = bytes.subarray(x.offset, x.offset + x.length);
      // Stored compressed when compressible, raw otherwise.
      expect(good.length < 2 * CLUSTER_SIZE).toBe(kind === 'text');
      const ok = await decodeExtentLeased(Buffer.from(good), { compressor: pool!, checkStoredDigest: false });
      const want = ok.clusters.map((c) => Buffer.from(c.data).toString('hex'));
      ok.release();
      // Every byte of the header, the digests and the frame header, then a sample of the body and its end.
      for (let i = 0; i < good.length; i += i < 512 || i >= good.length - 64 ? 1 : 97) {
        const bad = Buffer.from(good);
        bad[i]! ^= 1 << (i % 8);
        tried++;
        const got = await decodeExtentLeased(bad, { compressor: pool!, checkStoredDigest: false }).then(
          (l) => {
            const out = l.clusters.map((c) => Buffer.from(c.data).toString('hex'));
            l.release();
            return out;
          },
          (e: unknown) => e,
        );
        if (Array.isArray(got)) {
          // Decoded after all: only if it is exactly the original plaintext (e.g. a flag bit zstd ignores).
          expect(got, `byte ${i} of the extent at ${x.offset} decoded to other data`).toEqual(want);
          harmless++;
        } else {
          expect(got, `byte ${i} of the extent at ${x.offset}`).toBeInstanceOf(CowstreamError);
        }
      }
    }
    // A handful at most: bits of the zstd frame header that do not change what it decodes to.
    expect(harmless).toBeLessThanOrEqual(Math.ceil(tried / 50));
  }, 300_000);

  it('forged frames (any content size and window the header claims) fail as CodecError or ChecksumError, without large allocations', async () => {
    const plainLength = 4 * 1024 * 1024;
    const rss0 = process.memoryUsage().rss;
    for (let i = 0; i < 300; i++) {
      // zstd magic, then a frame header descriptor with a content-size field and
      // a window descriptor of the largest exponent, then random "blocks".
      const fhd = [0xc0, 0xe0, 0x80, 0x40][i % 4]!;
      const header = Buffer.from([0x28, 0xb5, 0x2f, 0xfd, fhd, 0xf8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]);
      const payload = Buffer.concat([randomBytes(32), header, randomBytes(i % 200)]);
      const err = await pool!.unpackPayload(payload, { compressed: true, plainLength, checkPlain: true }).then(
        () => null,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(CowstreamError);
      expect(['CODEC', 'CHECKSUM']).toContain((err as CowstreamError).code);
    }
    // Each attempt is bounded by the pool's buffers (≤ plainLength + slack each), not by what a header claims.
    expect(process.memoryUsage().rss - rss0).toBeLessThan(64 * 1024 * 1024);
  });
});
