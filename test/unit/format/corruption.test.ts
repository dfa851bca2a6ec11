/**
 * Damage detection: every single-byte flip, every truncation, garbage,
 * wrong magic/version and absurd lengths/counts must produce a typed
 * CowstreamError (FormatError family), never go unnoticed, never crash.
 */
import { describe, expect, it } from 'vitest';
import { CowstreamError, FormatError, TruncatedArchiveError } from '../../../src/errors.js';
import { CLUSTER_SIZE } from '../../../src/format/constants.js';
import { decodeExtent } from '../../../src/format/extent.js';
import { FOOTER_SIZE, MAX_TRAILER_SIZE } from '../../../src/format/layout.js';
import { BufferRangeSource } from '../../../src/format/memory.js';
import { openArchive } from '../../../src/format/reader.js';
import type { RangeSource } from '../../../src/format/sink.js';
import { TestZstdCompressor } from '../../helpers/format-compressor.js';
import { footerStart, resealFooter, resealHeader, resealTrailer, trailerStart } from '../../helpers/format-craft.js';
import { buildArchive, rng } from '../../helpers/format-fixtures.js';

const compressor = new TestZstdCompressor();
const KEY = Buffer.alloc(32, 0x42);

/**
 * A small (few KB) archive that still has every structure: 2 extents (so
 * contiguity matters), partial clusters, partially-zero clusters, zero runs,
 * two devices and a config blob.
 */
async function smallArchive(key?: Buffer): Promise<Buffer> {
  const a = Buffer.alloc(70 * CLUSTER_SIZE);
  for (let c = 0; c < 70; c++) {
    if (c % 9 === 4) continue; // whole zero cluster
    a.write(`cluster ${c % 3} says hello`, c * CLUSTER_SIZE + ((c * 4096) % CLUSTER_SIZE));
  }
  const b = Buffer.alloc(5000);
  b.write('tail data', 4100);
  const built = await buildArchive(
    [
      { id: 1, name: 'a', data: a },
      { id: 2, name: 'b', data: b },
    ],
    { compressor, encryptionKey: key, configs: [{ name: 'c.conf', data: Buffer.from('x=1\n') }], seed: 3 },
  );
  return built.bytes;
}

type Outcome = { kind: 'open'; err: unknown } | { kind: 'verify'; ok: boolean; offset?: number; code?: string } | { kind: 'verify-threw'; err: unknown };

async function probe(bytes: Buffer, key?: Buffer): Promise<Outcome> {
  let r;
  try {
    r = await openArchive(new BufferRangeSource(bytes), { compressor, key });
  } catch (err) {
    return { kind: 'open', err };
  }
  try {
    const v = await r.verify();
    return { kind: 'verify', ok: v.ok, offset: v.firstBad?.offset, code: v.firstBad?.code };
  } catch (err) {
    return { kind: 'verify-threw', err };
  }
}

async function exhaustiveFlips(key?: Buffer): Promise<{ atOpen: number; atVerify: number; size: number }> {
  const good = await smallArchive(key);
  const clean = await probe(good, key);
  expect(clean).toEqual({ kind: 'verify', ok: true, offset: undefined, code: undefined });
  const r = await openArchive(new BufferRangeSource(good), { compressor, key });
  const extents = r.index.extents;
  let atOpen = 0;
  let atVerify = 0;
  const missed: number[] = [];
  for (let off = 0; off < good.length; off++) {
    for (const mask of [0x01, 0x80]) {
      const bad = Buffer.from(good);
      bad[off] ^= mask;
      const o = await probe(bad, key);
      if (o.kind === 'open') {
        // Must be a typed format error, never a TypeError/RangeError.
        if (!(o.err instanceof FormatError)) throw new Error(`offset ${off}: untyped error ${String(o.err)}`);
        atOpen++;
      } else if (o.kind === 'verify' && !o.ok) {
        // verify must point at the extent holding the flipped byte.
        const x = extents.find((e) => off >= e.offset && off < e.offset + e.length);
        expect(x, `flip at ${off} outside extents reported by verify`).toBeDefined();
        expect(o.offset).toBe(x?.offset);
        atVerify++;
      } else {
        if (o.kind === 'verify-threw') throw new Error(`offset ${off}: verify threw ${String(o.err)}`);
        missed.push(off);
      }
    }
  }
  expect(missed).toEqual([]);
  return { atOpen, atVerify, size: good.length };
}

describe('single-byte flips (exhaustive)', () => {
  it('every flip of an unencrypted archive is detected at open or by verify', async () => {
    const s = await exhaustiveFlips();
    expect(s.size).toBeLessThan(8192); // "a few KB"
    expect(s.atOpen + s.atVerify).toBe(2 * s.size);
    expect(s.atVerify).toBeGreaterThan(0);
    expect(s.atOpen).toBeGreaterThan(0);
  });

  it('every flip of an encrypted archive is detected', async () => {
    const s = await exhaustiveFlips(KEY);
    expect(s.atOpen + s.atVerify).toBe(2 * s.size);
  });

  it('verify without key or compressor still detects every payload flip (stored-payload SHA-256)', async () => {
    const good = await smallArchive(KEY);
    const r0 = await openArchive(new BufferRangeSource(good));
    const x = r0.index.extents[0];
    for (let off = x.offset; off < x.offset + x.length; off++) {
      const bad = Buffer.from(good);
      bad[off] ^= 0x10;
      const r = await openArchive(new BufferRangeSource(bad));
      const v = await r.verify();
      expect(v.plaintextChecked).toBe(false);
      expect(v.ok).toBe(false);
      expect(v.firstBad?.offset).toBe(x.offset);
    }
  });
});

describe('truncation', () => {
  it('every truncated prefix is rejected with a FormatError (mostly TruncatedArchiveError)', async () => {
    const good = await smallArchive();
    let truncated = 0;
    for (let len = 0; len < good.length; len++) {
      const err = await openArchive(new BufferRangeSource(good.subarray(0, len))).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err, `prefix of ${len} bytes accepted`).toBeInstanceOf(FormatError);
      if (err instanceof TruncatedArchiveError) truncated++;
    }
    expect(truncated).toBe(good.length); // no prefix ends in a footer magic
  });

  it('bytes appended after the footer are rejected', async () => {
    const good = await smallArchive();
    await expect(openArchive(new BufferRangeSource(Buffer.concat([good, Buffer.from('x')])))).rejects.toBeInstanceOf(TruncatedArchiveError);
  });
});

describe('garbage and crafted fields', () => {
  it('random garbage of many sizes gives a typed error', async () => {
    const rand = rng(77);
    for (const size of [0, 1, 100, 143, 144, 145, 1000, 4096, 100_000]) {
      const buf = Buffer.alloc(size);
      for (let i = 0; i < size; i++) buf[i] = Math.floor(rand() * 256);
      await expect(openArchive(new BufferRangeSource(buf))).rejects.toBeInstanceOf(TruncatedArchiveError);
      // Garbage that happens to end in a footer magic still fails typed.
      if (size >= FOOTER_SIZE) {
        buf.write('CWSFOOT1', size - FOOTER_SIZE, 'ascii');
        await expect(openArchive(new BufferRangeSource(buf))).rejects.toBeInstanceOf(FormatError);
        resealFooter(buf);
        await expect(openArchive(new BufferRangeSource(buf))).rejects.toBeInstanceOf(FormatError);
      }
    }
  });

  it('wrong header magic, header version and footer version are rejected clearly', async () => {
    const good = await smallArchive();
    const magic = Buffer.from(good);
    magic.write('XXXXXXXX', 0, 'ascii');
    await expect(openArchive(new BufferRangeSource(resealHeader(magic)))).rejects.toThrow(/bad header magic/);
    const hv = Buffer.from(good);
    hv.writeUInt16LE(3, 8);
    await expect(openArchive(new BufferRangeSource(resealHeader(hv)))).rejects.toThrow(/unsupported archive format version 3/);
    const fv = Buffer.from(good);
    fv.writeUInt16LE(9, footerStart(fv) + 8);
    await expect(openArchive(new BufferRangeSource(resealFooter(fv)))).rejects.toThrow(/unsupported archive format version 9/);
  });

  it('absurd header counts/lengths are rejected without reading past the header', async () => {
    const good = await smallArchive();
    const cfg = Buffer.from(good);
    // Config data length is the u32 after the config name length byte; find it via the name.
    const at = cfg.indexOf('c.conf') - 5;
    expect(cfg.readUInt32LE(at + 1)).toBe(4);
    cfg.writeUInt32LE(0xffffffff, at + 1);
    await expect(openArchive(new BufferRangeSource(resealHeader(cfg)))).rejects.toBeInstanceOf(FormatError);
    const dev = Buffer.from(good);
    dev.writeUInt8(255, 66); // 255 devices in a tiny header
    await expect(openArchive(new BufferRangeSource(resealHeader(dev)))).rejects.toBeInstanceOf(FormatError);
    const cs = Buffer.from(good);
    cs.writeUInt32LE(1 << 20, 56); // cluster size
    await expect(openArchive(new BufferRangeSource(resealHeader(cs)))).rejects.toThrow(/cluster size/);
  });

  it('absurd trailer counts are rejected before allocating', async () => {
    const good = await smallArchive();
    const t = Buffer.from(good);
    const off = trailerStart(t);
    t.writeUInt32LE(0xffffffff, off + 8); // data-run count
    await expect(openArchive(new BufferRangeSource(resealTrailer(t)))).rejects.toThrow(/do not match/);
    const e = Buffer.from(good);
    e.writeUInt32LE(0xfffffff0, trailerStart(e) + 4); // extent count
    await expect(openArchive(new BufferRangeSource(resealTrailer(e)))).rejects.toBeInstanceOf(FormatError);
  });

  it('absurd footer lengths on a huge source are rejected after one 144-byte read', async () => {
    const good = await smallArchive();
    const footer = Buffer.from(good.subarray(footerStart(good)));
    const reads: number[] = [];
    const huge = (f: Buffer): RangeSource => ({
      name: 'huge',
      size: 2 ** 50,
      async read(offset: number, length: number): Promise<Buffer> {
        reads.push(length);
        if (length > 1 << 20) throw new Error(`test source: refused ${length}-byte read`);
        return offset === 2 ** 50 - FOOTER_SIZE ? f : Buffer.alloc(length);
      },
      async close(): Promise<void> {},
    });
    for (const [field, value] of [
      [12, 0xffffffff], // header length
      [24, MAX_TRAILER_SIZE + 1], // trailer length
      [24, 0xffffffff],
    ] as const) {
      const f = Buffer.from(footer);
      f.writeUInt32LE(value, field);
      const padded = Buffer.concat([Buffer.alloc(0), f]);
      resealFooter(padded);
      reads.length = 0;
      await expect(openArchive(huge(padded))).rejects.toBeInstanceOf(FormatError);
      expect(reads).toEqual([FOOTER_SIZE]);
    }
    const f = Buffer.from(footer);
    f.writeBigUInt64LE(2n ** 62n, 16); // trailer offset beyond 2^53
    resealFooter(f);
    await expect(openArchive(huge(f))).rejects.toBeInstanceOf(FormatError);
  });

  it('decodeExtent rejects garbage and absurd cluster counts with typed errors', async () => {
    const rand = rng(5);
    for (const size of [0, 10, 56, 2000]) {
      const buf = Buffer.alloc(size);
      for (let i = 0; i < size; i++) buf[i] = Math.floor(rand() * 256);
      if (size >= 8) buf.write('CWX1', 0, 'ascii');
      if (size >= 8) buf.writeUInt16LE(0xffff, 6);
      const err = await decodeExtent(buf, { compressor }).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(CowstreamError);
      expect(err).toBeInstanceOf(FormatError);
    }
  });

  it('crafted fields with valid checksums (header, trailer, footer) only ever give typed errors', async () => {
    const good = await smallArchive();
    const headerLen = good.readUInt32LE(12);
    const tStart = trailerStart(good);
    const fStart = footerStart(good);
    const targets: [number, number, (b: Buffer) => Buffer][] = [
      [0, headerLen - 32, (b) => resealHeader(b, headerLen)],
      [tStart, fStart - 32, resealTrailer],
      [fStart, fStart + 112, resealFooter],
    ];
    let opened = 0;
    let rejected = 0;
    for (const [from, to, reseal] of targets) {
      for (let off = from; off < to; off++) {
        for (const v of [0x00, 0x01, 0x7f, 0xff]) {
          if (good[off] === v) continue;
          const bad = Buffer.from(good);
          bad[off] = v;
          reseal(bad);
          try {
            const r = await openArchive(new BufferRangeSource(bad), { compressor });
            opened++;
            // Whatever opened must verify or fail typed; clusters() must not crash.
            await r.verify().catch((e: unknown) => {
              expect(e, `verify after crafted byte ${off}=${v}`).toBeInstanceOf(CowstreamError);
            });
          } catch (err) {
            expect(err, `crafted byte ${off}=${v}`).toBeInstanceOf(CowstreamError);
            rejected++;
          }
        }
      }
    }
    expect(rejected).toBeGreaterThan(opened); // most crafted values are invalid
  });
});
