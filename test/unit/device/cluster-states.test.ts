import { describe, expect, it } from 'vitest';
import { ClusterStates } from '../../../src/device/cluster-states.js';

describe('ClusterStates', () => {
  it('keeps clusters at and past 2^32 apart from the first ones (a 16 TiB disk in 4 KiB clusters)', () => {
    // 2^32 + 8 clusters: 1 GiB of states, zero-filled lazily, so only the touched pages cost memory.
    const count = 2 ** 32 + 8;
    const s = new ClusterStates(count);
    s.set(2 ** 32 + 1, 2);
    s.set(count - 1, 1);
    expect(s.get(0)).toBe(0);
    expect(s.get(1)).toBe(0);
    expect(s.get(2 ** 32 + 1)).toBe(2);
    expect(s.get(count - 1)).toBe(1);
    expect(s.nextNot(2 ** 32, count, 0)).toBe(2 ** 32 + 1);
    // The changed state page is the one at the array's end, not page 0.
    const pages = s.takeDirty(4096);
    expect(pages.map((p) => p.offset)).toEqual([Math.floor((2 ** 30) / 4096) * 4096]);
  });
});
