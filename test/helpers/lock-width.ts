/** Measures how many clusters one ClusterLocks.lock() call takes at most while `fn` runs. */
import { ClusterLocks } from '../../src/device/cluster-locks.js';

export async function widestLockDuring(fn: () => Promise<void>): Promise<number> {
  const proto = ClusterLocks.prototype as unknown as { lock: (a: number, b: number) => Promise<() => void> };
  const orig = proto.lock;
  let widest = 0;
  proto.lock = function (this: ClusterLocks, a: number, b: number): Promise<() => void> {
    widest = Math.max(widest, b - a + 1);
    return orig.call(this, a, b);
  };
  try {
    await fn();
  } finally {
    proto.lock = orig;
  }
  return widest;
}
