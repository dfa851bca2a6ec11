import { describe, expect, it } from 'vitest';
import { Bitmap } from '../../../src/cbw/bitmap.js';
import { BitmapChecksumError, BitmapFormatError } from '../../../src/cbw/errors.js';
import { mulberry32 } from '../../helpers/prng.js';

/** Reference model: a plain boolean array. */
function model(b: Bitmap): boolean[] {
  return Array.from({ length: b.size }, (_, i) => b.test(i));
}

describe('Bitmap', () => {
  it('set/clear/test/count', () => {
    const b = new Bitmap(70);
    expect(b.count()).toBe(0);
    expect(b.set(3)).toBe(true);
    expect(b.set(3)).toBe(false);
    b.set(69);
    b.set(32);
    expect(b.count()).toBe(3);
    expect(b.test(3) && b.test(32) && b.test(69)).toBe(true);
    expect(b.test(4)).toBe(false);
    expect(b.test(70)).toBe(false);
    expect(b.clear(3)).toBe(true);
    expect(b.clear(3)).toBe(false);
    expect(b.count()).toBe(2);
    expect(() => b.set(70)).toThrow(RangeError);
  });

  it('ranges, nextSet, nextClear and setRange agree with a reference model (random)', () => {
    for (let seed = 1; seed <= 30; seed++) {
      const rng = mulberry32(seed);
      const n = rng.int(1, 300);
      const b = new Bitmap(n);
      const ref = new Array<boolean>(n).fill(false);
      for (let k = 0; k < 40; k++) {
        const s = rng.int(0, n - 1);
        const c = rng.int(1, n - s);
        const v = rng.chance(0.6);
        if (v) b.setRange(s, c);
        else b.clearRange(s, c);
        for (let i = s; i < s + c; i++) ref[i] = v;
      }
      expect(model(b), `seed ${seed}`).toEqual(ref);
      expect(b.count()).toBe(ref.filter(Boolean).length);
      const from = rng.int(0, n - 1);
      expect(b.nextSet(from)).toBe(ref.indexOf(true, from));
      expect(b.nextClear(from)).toBe(ref.indexOf(false, from));
      const rebuilt = new Array<boolean>(n).fill(false);
      let prevEnd = -1;
      for (const [s, c] of b.ranges()) {
        expect(s).toBeGreaterThan(prevEnd); // maximal, non-adjacent runs
        for (let i = s; i < s + c; i++) rebuilt[i] = true;
        prevEnd = s + c;
      }
      expect(rebuilt).toEqual(ref);
    }
  });

  it('setByteRange marks every touched cluster', () => {
    const b = new Bitmap(10);
    b.setByteRange(65535, 2, 65536);
    expect([...b.ranges()]).toEqual([[0, 2]]);
    b.setByteRange(5 * 65536, 65536, 65536);
    expect(b.test(5) && !b.test(6)).toBe(true);
    b.setByteRange(0, 0, 65536); // empty: no-op
    expect(b.count()).toBe(3);
  });

  it('or, clone, resized, equals', () => {
    const a = new Bitmap(40);
    const b = new Bitmap(40);
    a.setRange(0, 5);
    b.setRange(3, 10);
    const c = a.clone();
    c.or(b);
    expect([...c.ranges()]).toEqual([[0, 13]]);
    expect(c.count()).toBe(13);
    expect(a.count()).toBe(5); // clone is independent
    expect(c.equals(c.clone())).toBe(true);
    expect(c.equals(a)).toBe(false);
    expect(() => a.or(new Bitmap(41))).toThrow(RangeError);
    expect([...c.resized(10, false).ranges()]).toEqual([[0, 10]]);
    expect([...a.resized(8, true).ranges()]).toEqual([[0, 5]]); // shrinking never fills
    expect([...a.resized(45, true).ranges()]).toEqual([[0, 5], [40, 5]]);
  });

  it('serialize/deserialize round-trips and detects corruption', () => {
    const rng = mulberry32(7);
    for (const n of [0, 1, 31, 32, 33, 1000]) {
      const b = new Bitmap(n);
      for (let i = 0; i < n; i++) if (rng.chance(0.3)) b.set(i);
      const buf = b.serialize();
      expect(buf.length).toBe(Bitmap.serializedLength(n));
      const back = Bitmap.deserialize(buf);
      expect(back.equals(b)).toBe(true);
    }
    const b = Bitmap.full(100);
    const buf = b.serialize();
    const flipped = Buffer.from(buf);
    flipped[30]! ^= 1;
    expect(() => Bitmap.deserialize(flipped)).toThrow(BitmapChecksumError);
    expect(() => Bitmap.deserialize(buf.subarray(0, buf.length - 1))).toThrow(BitmapFormatError);
    const badMagic = Buffer.from(buf);
    badMagic[0] = 0;
    expect(() => Bitmap.deserialize(badMagic)).toThrow(BitmapFormatError);
    // A huge bit count in the header must be rejected before any allocation.
    const huge = Buffer.from(buf);
    huge.writeBigUInt64LE(2n ** 50n, 8);
    expect(() => Bitmap.deserialize(huge)).toThrow(BitmapFormatError);
    const lying = Buffer.from(buf);
    lying.writeBigUInt64LE(50n, 8);
    expect(() => Bitmap.deserialize(lying)).toThrow(BitmapFormatError);
  });
});
