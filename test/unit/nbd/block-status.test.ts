/**
 * descriptors(): device extents → base:allocation descriptors. A seeded
 * randomized check against a byte-level model: every descriptor is aligned,
 * the total never exceeds the request, and no descriptor claims HOLE or ZERO
 * for a byte the device did not report that way.
 */
import { describe, expect, it } from 'vitest';
import type { DeviceExtent } from '../../../src/device/types.js';
import { descriptors } from '../../../src/nbd/block-status.js';
import { NBD_STATE_HOLE, NBD_STATE_ZERO } from '../../../src/nbd/protocol.js';
import { mulberry32 } from '../../helpers/prng.js';

const SEED = 0x5eed_b5;

function flagsOf(e: DeviceExtent): number {
  return (e.hole ? NBD_STATE_HOLE | NBD_STATE_ZERO : 0) | (e.zero ? NBD_STATE_ZERO : 0);
}

describe('descriptors', () => {
  it('byte granularity: the map itself, adjacent equal states merged', () => {
    expect(descriptors([
      { length: 10, hole: true, zero: true }, { length: 5, hole: true, zero: true }, { length: 7, hole: false, zero: false },
    ], 22, 1)).toEqual([{ length: 15, flags: 3 }, { length: 7, flags: 0 }]);
  });

  it(`randomized maps and granularities never over-claim (seed ${SEED})`, () => {
    const rnd = mulberry32(SEED);
    for (let iter = 0; iter < 2000; iter++) {
      const g = 2 ** Math.floor(rnd() * 5); // 1..16
      const length = g * (1 + Math.floor(rnd() * 12));
      const extents: DeviceExtent[] = [];
      let covered = 0;
      const target = 1 + Math.floor(rnd() * length); // the map may stop short
      while (covered < target) {
        const n = Math.min(target - covered, 1 + Math.floor(rnd() * 2 * g));
        const hole = rnd() < 0.4;
        extents.push({ length: n, hole, zero: hole || rnd() < 0.5 });
        covered += n;
      }
      const perByte: number[] = [];
      for (const e of extents) for (let i = 0; i < e.length; i++) perByte.push(flagsOf(e));
      const out = descriptors(extents, length, g);
      expect(out.length).toBeGreaterThan(0);
      let pos = 0;
      for (const d of out) {
        expect(d.length).toBeGreaterThan(0);
        expect(d.length % g).toBe(0);
        for (let i = pos; i < pos + d.length; i++) {
          const actual = perByte[i] ?? 0; // unreported bytes: nothing may be claimed
          expect(d.flags & ~actual, `iter ${iter} byte ${i}`).toBe(0);
        }
        pos += d.length;
      }
      expect(pos).toBeLessThanOrEqual(length);
      // Not lossy where the map is aligned: a fully reported aligned run keeps its state.
      if (g === 1) expect(pos).toBe(covered);
    }
  });
});
