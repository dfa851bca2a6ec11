/**
 * The RangeSource contract (src/format/sink.ts), one suite run over every
 * implementation behind restores: exact bytes at any range, concurrent reads,
 * reads into a caller's buffer, and a typed error for ranges outside.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { StoreError } from '../../src/errors.js';
import type { RangeSource } from '../../src/format/sink.js';
import { mulberry32 as prng } from './prng.js';

export interface RangeSourceHarness {
  setup?(): Promise<void>;
  teardown?(): Promise<void>;
  /** A source over exactly `data`. */
  open(data: Buffer): Promise<RangeSource>;
}

const DATA = Buffer.from(Array.from({ length: 2 * 1024 * 1024 + 4093 }, (_, i) => (i * 131 + (i >> 9)) & 0xff));

export function runRangeSourceContract(name: string, harness: RangeSourceHarness): void {
  describe(`RangeSource contract: ${name}`, () => {
    let src: RangeSource;
    beforeAll(async () => {
      await harness.setup?.();
      src = await harness.open(DATA);
    });
    afterAll(async () => {
      await src?.close();
      await harness.teardown?.();
    });

    it('knows its size and name', () => {
      expect(src.size).toBe(DATA.length);
      expect(src.name.length).toBeGreaterThan(0);
    });

    it('returns the exact bytes of 64 seeded ranges read concurrently', async () => {
      const rand = prng(11);
      const ranges = Array.from({ length: 64 }, () => {
        const offset = Math.floor(rand() * DATA.length);
        return { offset, length: Math.floor(rand() * Math.min(300_000, DATA.length - offset)) };
      });
      const got = await Promise.all(ranges.map((r) => src.read(r.offset, r.length)));
      ranges.forEach((r, i) => expect(got[i]!.equals(DATA.subarray(r.offset, r.offset + r.length)), `range ${i}`).toBe(true));
    });

    it('reads the first byte, the last byte and an empty range at the end', async () => {
      expect((await src.read(0, 1))[0]).toBe(DATA[0]);
      expect((await src.read(DATA.length - 1, 1))[0]).toBe(DATA[DATA.length - 1]);
      expect((await src.read(DATA.length, 0)).length).toBe(0);
    });

    it("lands the bytes in the caller's buffer when one is given", async () => {
      const into = Buffer.alloc(100_000, 0xee);
      const got = await src.read(12_345, 50_000, into);
      expect(got.length).toBe(50_000);
      expect(got.buffer).toBe(into.buffer);
      expect(into.subarray(0, 50_000).equals(DATA.subarray(12_345, 62_345))).toBe(true);
    });

    it('refuses ranges outside the source with a StoreError', async () => {
      for (const [offset, length] of [
        [DATA.length - 10, 11],
        [DATA.length + 1, 0],
        [-1, 5],
        [0, -1],
        [0.5, 1],
      ] as const) {
        await expect(src.read(offset, length), `${offset}+${length}`).rejects.toBeInstanceOf(StoreError);
      }
    });
  });
}
