import { describe, expect, it } from 'vitest';
import { MAX_EXTENT_SIZE } from '../../../src/format/layout.js';
import { DecodeSlots, decodeSlots, rangeBufferSize, restoreMemoryBound, splitRange } from '../../../src/restore/memory.js';
import type { PlanRange } from '../../../src/restore/plan.js';
import { RestoreError } from '../../../src/errors.js';

const MiB = 1024 * 1024;

function range(lengths: number[], gap = 100, start = 1000): PlanRange {
  const extents = [];
  let off = start;
  for (const [i, length] of lengths.entries()) {
    extents.push({ offset: off, length, runs: [[0, 0, i, 1]] as [number, number, number, number][] });
    off += length + gap;
  }
  return { archive: 0, offset: start, length: off - gap - start, extents };
}

describe('splitRange', () => {
  it('cuts at extent boundaries into pieces of at most maxBytes, keeping every extent once, in order', () => {
    let seed = 7;
    for (let round = 0; round < 200; round++) {
      const lengths = Array.from({ length: 1 + (round % 40) }, () => ((seed = (seed * 48271) % 2147483647), 1 + (seed % (4 * MiB))));
      const max = MAX_EXTENT_SIZE + (round % 5) * 3 * MiB;
      const r = range(lengths);
      const pieces = splitRange(r, max);
      expect(pieces.flatMap((p) => p.extents)).toEqual(r.extents);
      for (const p of pieces) {
        expect(p.length).toBeLessThanOrEqual(max);
        expect(p.offset).toBe(p.extents[0]!.offset);
        const last = p.extents[p.extents.length - 1]!;
        expect(p.offset + p.length).toBe(last.offset + last.length);
      }
    }
  });

  it('keeps a range that fits as one piece', () => {
    const r = range([MiB, MiB, MiB]);
    expect(splitRange(r, 16 * MiB)).toEqual([r]);
  });

  it('refuses an extent longer than any extent can be, before a buffer is sized by it', () => {
    expect(() => splitRange(range([MiB, MAX_EXTENT_SIZE + 1]), 64 * MiB)).toThrow(RestoreError);
  });

  it('starts a new piece for an extent before the current one (a forged, unsorted plan)', () => {
    const r: PlanRange = { archive: 0, offset: 0, length: 3000, extents: [{ offset: 2000, length: 1000, runs: [] }, { offset: 0, length: 1000, runs: [] }] };
    const pieces = splitRange(r, 64 * MiB);
    expect(pieces.map((p) => [p.offset, p.length])).toEqual([[2000, 1000], [0, 1000]]);
  });
});

describe('restore memory configuration', () => {
  it('range buffers share the configured total but each holds at least one extent', () => {
    expect(rangeBufferSize(4, 32 * MiB)).toBe(8 * MiB);
    expect(rangeBufferSize(64, 32 * MiB)).toBe(MAX_EXTENT_SIZE);
  });

  it('the bound grows with configuration (parallelism, range buffers, --verify), never with anything else', () => {
    const base = restoreMemoryBound({ parallel: 4, poolBytes: 100 * MiB });
    expect(restoreMemoryBound({ parallel: 4, poolBytes: 100 * MiB, rangeBufferBytes: 64 * MiB })).toBe(base + 32 * MiB);
    expect(restoreMemoryBound({ parallel: 4, poolBytes: 100 * MiB, verify: true })).toBeGreaterThan(base);
  });

  it('decode slots: two per worker, never more than the ranges ask for', () => {
    expect(decodeSlots(4, { workerCount: 2 })).toBe(4);
    expect(decodeSlots(1, { workerCount: 8 })).toBe(2);
    expect(decodeSlots(3, {})).toBe(6);
  });

  it('DecodeSlots admits `size` holders; a release hands the slot to the next waiter in order', async () => {
    const slots = new DecodeSlots(2);
    await slots.acquire();
    await slots.acquire();
    const order: number[] = [];
    const a = slots.acquire().then(() => order.push(1));
    const b = slots.acquire().then(() => order.push(2));
    await Promise.resolve();
    expect(order).toEqual([]);
    slots.release();
    await a;
    expect(order).toEqual([1]);
    slots.release();
    await b;
    expect(order).toEqual([1, 2]);
  });
});
