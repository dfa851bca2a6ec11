/**
 * OverlayDevice: a writable view over a read-only base. Checked against a
 * byte-level model, across reopen, against a hostile file system neighbour,
 * and under seeded concurrent partial writes that share clusters.
 */
import { randomBytes } from 'node:crypto';
import { chmod, chown, lstat, mkdtemp, open, readFile, rm, stat, symlink, truncate, writeFile } from 'node:fs/promises';
import { execFileSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DeviceClosedError, OverlayError } from '../../../src/device/errors.js';
import { MemoryDevice } from '../../../src/device/memory-device.js';
import { BASE, DATA, ZERO, openOverlay, type OverlayDevice } from '../../../src/device/overlay-device.js';
import { OutOfRangeError } from '../../../src/errors.js';
import { mulberry32 } from '../../helpers/prng.js';
import { SlowMemoryDevice } from '../../helpers/slow-device.js';
import type { BlockDevice } from '../../../src/device/types.js';
import { widestLockDuring } from '../../helpers/lock-width.js';
import { zeroDevice } from '../../helpers/zero-device.js';

const CS = 4096;
const SIZE = 64 * CS + 123; // the last cluster is partial

let dir: string;
let n = 0;
const fresh = (): string => join(dir, `ovl-${n++}`);

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cowstream-overlay-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('OverlayDevice', () => {
  it('reads merge base and overlay; writes, zeroes and trims never reach the base', async () => {
    const init = randomBytes(SIZE);
    const base = new MemoryDevice(init, { readOnly: true });
    const ov = await openOverlay(base, fresh(), { clusterSize: CS });
    const model = Buffer.from(init);
    expect(ov.size).toBe(SIZE);
    expect(ov.readOnly).toBe(false);
    expect((await ov.read(0, SIZE)).equals(model)).toBe(true);

    const w1 = randomBytes(100);
    await ov.write(CS + 10, w1); // partial: copy-on-write of cluster 1
    w1.copy(model, CS + 10);
    const w2 = randomBytes(3 * CS);
    await ov.write(4 * CS, w2); // whole clusters
    w2.copy(model, 4 * CS);
    const w3 = randomBytes(2 * CS + 7);
    await ov.write(10 * CS - 5, w3); // partial head and tail, one whole cluster
    w3.copy(model, 10 * CS - 5);
    await ov.writeZeroes(20 * CS + 1, 3 * CS); // partial + 2 whole → ZERO state
    model.fill(0, 20 * CS + 1, 23 * CS + 1);
    await ov.trim(30 * CS, 2 * CS);
    model.fill(0, 30 * CS, 32 * CS);
    await ov.writeZeroes(40 * CS, CS, { mayTrim: false }); // NO_HOLE: real zeroes
    model.fill(0, 40 * CS, 41 * CS);
    const tail = randomBytes(50);
    await ov.write(SIZE - 50, tail, { fua: true }); // the partial last cluster
    tail.copy(model, SIZE - 50);
    await ov.write(20 * CS + 100, Buffer.from('abc')); // partial write into a ZERO cluster
    Buffer.from('abc').copy(model, 20 * CS + 100);

    expect((await ov.read(0, SIZE)).equals(model)).toBe(true);
    expect((await ov.read(CS + 5, 200)).equals(model.subarray(CS + 5, CS + 205))).toBe(true);
    expect(base.contents().equals(init)).toBe(true);
    expect(ov.clusterState(1)).toBe(DATA);
    expect(ov.clusterState(21)).toBe(ZERO);
    expect(ov.clusterState(40)).toBe(DATA);
    expect(ov.clusterState(2)).toBe(BASE);
    await expect(ov.write(SIZE - 1, Buffer.alloc(2))).rejects.toThrow(OutOfRangeError);
    await expect(ov.read(-1, 1)).rejects.toThrow(OutOfRangeError);
    await ov.close();
    await ov.close(); // idempotent
    await expect(ov.read(0, 1)).rejects.toThrow(DeviceClosedError);
    await expect(ov.write(0, Buffer.alloc(1))).rejects.toThrow(DeviceClosedError);
    await expect(ov.flush()).rejects.toThrow(DeviceClosedError);
    await expect(ov.mapExtents(0, 1)).rejects.toThrow(DeviceClosedError);
  });

  it('flushed writes survive a reopen; unflushed states are not persisted; the file is 0600', async () => {
    const init = randomBytes(SIZE);
    const base = new MemoryDevice(init, { readOnly: true });
    const path = fresh();
    const ov = await openOverlay(base, path, { clusterSize: CS });
    expect((await stat(path)).mode & 0o777).toBe(0o600);
    const model = Buffer.from(init);
    const w = randomBytes(5000);
    await ov.write(3 * CS + 1, w);
    w.copy(model, 3 * CS + 1);
    await ov.trim(8 * CS, 4 * CS);
    model.fill(0, 8 * CS, 12 * CS);
    await ov.flush();
    // A write after the flush: its data is in the file, its state only in memory.
    await ov.write(50 * CS, Buffer.alloc(CS, 0xee));
    const second = await openOverlay(base, path);
    expect((await second.read(0, SIZE)).equals(model)).toBe(true);
    expect(second.clusterSize).toBe(CS);
    await second.close();
    // close() flushes: now the last write is visible after a reopen too.
    await ov.close();
    Buffer.alloc(CS, 0xee).copy(model, 50 * CS);
    const third = await openOverlay(base, path, { clusterSize: CS });
    expect((await third.read(0, SIZE)).equals(model)).toBe(true);
    expect(third.stats()).toEqual({ clusters: 65, written: 3, zeroed: 4 });
    await third.close();
    expect(base.contents().equals(init)).toBe(true);
  });

  it('flush: data is synced before the state pages, and a write finishing during the flush waits for the next one', async () => {
    const init = randomBytes(16 * CS);
    const base = new MemoryDevice(init, { readOnly: true });
    const path = fresh();
    const ov = await openOverlay(base, path, { clusterSize: CS });
    await ov.write(5 * CS, Buffer.alloc(CS, 0x55));
    // Trace the file operations of every handle (FileHandle.prototype), in order.
    const probe = await open(path, 'r');
    const proto = Object.getPrototypeOf(probe) as { datasync: () => Promise<void>; write: (...a: unknown[]) => Promise<unknown> };
    await probe.close();
    const origSync = proto.datasync;
    const origWrite = proto.write;
    const trace: string[] = [];
    let late: Promise<void> | null = null;
    proto.datasync = async function (this: unknown): Promise<void> {
      trace.push('sync');
      if (late === null) {
        // A write that completes while the flush's first sync is running.
        late = ov.write(9 * CS, Buffer.alloc(CS, 0x99));
        await late;
      }
      return origSync.call(this);
    };
    proto.write = function (this: unknown, ...a: unknown[]): Promise<unknown> {
      trace.push(`write@${String(a[3])}`);
      return origWrite.apply(this, a);
    };
    try {
      await ov.flush();
    } finally {
      proto.datasync = origSync;
      proto.write = origWrite;
    }
    const stateWrites = trace.map((t, i) => [t, i] as const).filter(([t]) => t === 'write@4096').map(([, i]) => i);
    expect(stateWrites.length).toBe(1);
    expect(trace.indexOf('sync')).toBeLessThan(stateWrites[0]!);
    expect(trace.at(-1)).toBe('sync');
    // What is on disk now: cluster 5 written, cluster 9 not yet (its state missed the snapshot).
    const peek = await openOverlay(base, path);
    expect(peek.clusterState(5)).toBe(DATA);
    expect(peek.clusterState(9)).toBe(BASE);
    expect((await peek.read(9 * CS, CS)).equals(init.subarray(9 * CS, 10 * CS))).toBe(true);
    await peek.close();
    await ov.flush();
    const after = await openOverlay(base, path);
    expect((await after.read(9 * CS, CS)).every((b) => b === 0x99)).toBe(true);
    await after.close();
    await ov.close();
  });

  it('after a failed fdatasync no later flush succeeds, so no state page ever vouches for data that writeback lost', async () => {
    const init = randomBytes(16 * CS);
    const base = new MemoryDevice(init, { readOnly: true });
    const path = fresh();
    const ov = await openOverlay(base, path, { clusterSize: CS });
    await ov.write(3 * CS, Buffer.alloc(CS, 0x33));
    const probe = await open(path, 'r');
    const proto = Object.getPrototypeOf(probe) as { datasync: () => Promise<void> };
    await probe.close();
    const origSync = proto.datasync;
    let failures = 1;
    // The kernel reports a writeback error once (and drops the dirty pages); the next fdatasync "succeeds".
    proto.datasync = async function (this: unknown): Promise<void> {
      if (failures-- > 0) throw Object.assign(new Error('EIO: i/o error, fdatasync'), { code: 'EIO' });
      return origSync.call(this);
    };
    try {
      await expect(ov.flush()).rejects.toThrow(/fdatasync/);
      await expect(ov.flush()).rejects.toThrow(/earlier fdatasync failed/);
      await expect(ov.close()).rejects.toThrow(/earlier fdatasync failed/);
    } finally {
      proto.datasync = origSync;
    }
    // On disk the cluster is still BASE: nothing claims the data that may be gone.
    const after = await openOverlay(base, path);
    expect(after.clusterState(3)).toBe(BASE);
    await after.close();
  });

  it('mapExtents merges the base map with written and zeroed clusters', async () => {
    const init = Buffer.alloc(16 * CS);
    init.fill(7, 2 * CS, 6 * CS); // base: data in clusters 2..5, holes elsewhere
    const base = new MemoryDevice(init, { readOnly: true });
    const ov = await openOverlay(base, fresh(), { clusterSize: CS });
    await ov.write(10 * CS + 1, Buffer.from([1])); // hole cluster 10 becomes data
    await ov.trim(3 * CS, 2 * CS); // data clusters 3..4 become zero
    expect(await ov.mapExtents(0, 16 * CS)).toEqual([
      { length: 2 * CS, hole: true, zero: true },
      { length: CS, hole: false, zero: false },
      { length: 2 * CS, hole: true, zero: true },
      { length: CS, hole: false, zero: false },
      { length: 4 * CS, hole: true, zero: true },
      { length: CS, hole: false, zero: false },
      { length: 5 * CS, hole: true, zero: true },
    ]);
    expect(await ov.mapExtents(CS + 100, 200)).toEqual([{ length: 200, hole: true, zero: true }]);
    await ov.close();
  });
});

/** A read-only 1 TiB base of zeroes that costs no memory. */
const hugeBase = (): BlockDevice => zeroDevice(2 ** 40);

describe('OverlayDevice allocation map of a huge, fragmented range', () => {
  it('looks at a bounded number of runs per call, whatever the request length (1 TiB base, 4 GiB request)', async () => {
    let baseMaps = 0;
    const base: BlockDevice = {
      ...hugeBase(),
      mapExtents: async (_o, l) => {
        baseMaps++;
        return [{ length: l, hole: true, zero: true }];
      },
    };
    const ov = await openOverlay(base, fresh(), { clusterSize: CS });
    // Every other cluster trimmed (ZERO) between base holes: 40,000 runs that all merge into one hole.
    const runs = 40_000;
    await Promise.all(Array.from({ length: runs / 2 }, (_, i) => ov.trim(2 * i * CS, CS)));
    const len = 2 ** 32 - CS; // the largest NBD request a block-status may cover
    const map = await ov.mapExtents(0, len);
    expect(baseMaps).toBeLessThanOrEqual(16 * 1024);
    // A shorter answer is allowed; what it says must be right and contiguous from the offset.
    const covered = map.reduce((a, e) => a + e.length, 0);
    expect(covered).toBeGreaterThan(0);
    expect(covered).toBeLessThanOrEqual(len);
    expect(map.every((e) => e.hole && e.zero)).toBe(true);
    await ov.close();
  }, 60_000);
});

describe('OverlayDevice under a huge payload-less request', () => {
  it('a 4 GiB trim in 4 KiB clusters holds a bounded number of cluster locks and lets timers run meanwhile', async () => {
    const base = hugeBase();
    const ov = await openOverlay(base, fresh(), { clusterSize: CS });
    let trimDone = false;
    let timerSawTrimRunning: boolean | null = null;
    const timer = setTimeout(() => (timerSawTrimRunning = !trimDone), 0);
    const widest = await widestLockDuring(async () => {
      await ov.trim(CS + 100, 2 ** 32 - CS);
      trimDone = true;
    });
    clearTimeout(timer);
    expect(widest).toBeLessThanOrEqual(1024);
    expect(timerSawTrimRunning).toBe(true);
    // The trim did its work: whole clusters are ZERO, the partial ends were read-modify-written.
    expect(ov.clusterState(1)).toBe(DATA);
    expect(ov.clusterState(2)).toBe(ZERO);
    expect(ov.clusterState(2 ** 20 - 1)).toBe(ZERO);
    expect(ov.clusterState(2 ** 20)).toBe(DATA);
    expect(ov.clusterState(2 ** 20 + 1)).toBe(BASE);
    await ov.close();
  }, 60_000);
});

describe('OverlayDevice refuses files that are not safely its own', () => {
  const base = new MemoryDevice(randomBytes(SIZE), { readOnly: true });

  it('a symlink planted at the path is not followed, and its target is untouched', async () => {
    const victim = join(dir, 'victim');
    await writeFile(victim, 'precious', { mode: 0o600 });
    const path = fresh();
    await symlink(victim, path);
    await expect(openOverlay(base, path)).rejects.toThrow(/symbolic link/);
    expect(await readFile(victim, 'utf8')).toBe('precious');
    expect((await lstat(path)).isSymbolicLink()).toBe(true);
  });

  it('a dangling symlink does not make the overlay be created at its target', async () => {
    const target = join(dir, 'created-through-link');
    const path = fresh();
    await symlink(target, path);
    await expect(openOverlay(base, path)).rejects.toThrow(OverlayError);
    await expect(stat(target)).rejects.toThrow(/ENOENT/);
  });

  it('a file readable by group or others is refused', async () => {
    const path = fresh();
    await (await openOverlay(base, path)).close();
    await chmod(path, 0o640);
    await expect(openOverlay(base, path)).rejects.toThrow(/group or others/);
  });

  it('a file owned by another user is refused', async () => {
    const path = fresh();
    const ov = await openOverlay(base, path);
    await ov.close();
    if (process.getuid?.() !== 0) return; // only root can give a file away
    await chown(path, 65534, 65534);
    await expect(openOverlay(base, path)).rejects.toThrow(/owned by uid 65534/);
  });

  it('a file that is not an overlay is refused and left as it was', async () => {
    const path = fresh();
    const junk = randomBytes(100_000);
    await writeFile(path, junk, { mode: 0o600 });
    await expect(openOverlay(base, path)).rejects.toThrow(/not a usable cowstream overlay/);
    expect((await readFile(path)).equals(junk)).toBe(true);
  });

  it('an overlay made for another base size, or with another cluster size, is refused', async () => {
    const path = fresh();
    await (await openOverlay(base, path, { clusterSize: CS })).close();
    await expect(openOverlay(new MemoryDevice(SIZE + 1), path)).rejects.toThrow(/made for a base of \d+ bytes/);
    await expect(openOverlay(base, path, { clusterSize: 2 * CS })).rejects.toThrow(/cluster size is 4096/);
    await expect(openOverlay(base, fresh(), { clusterSize: 3000 })).rejects.toThrow(/power of two/);
  });

  it('an overlay made over another base of the same size is refused; over its own base it opens', async () => {
    const path = fresh();
    const ov = await openOverlay(base, path, { clusterSize: CS, baseId: 'archive-a/vda' });
    await ov.write(0, Buffer.alloc(CS, 0x5a));
    await ov.close();
    // Another archive of the same disk: same size, other contents.
    await expect(openOverlay(new MemoryDevice(SIZE), path, { baseId: 'archive-b/vda' })).rejects.toThrow(/made over "archive-a\/vda", not over "archive-b\/vda"/);
    const again = await openOverlay(base, path, { baseId: 'archive-a/vda' });
    expect((await again.read(0, CS)).equals(Buffer.alloc(CS, 0x5a))).toBe(true);
    await again.close();
    // The identity is covered by the header's checksum: editing it in place is refused too.
    const fh = await open(path, 'r+');
    await fh.write(Buffer.from('b'), 0, 1, 82 + 'archive-'.length);
    await fh.close();
    await expect(openOverlay(base, path, { baseId: 'archive-b/vda' })).rejects.toThrow(/header checksum mismatch/);
    await expect(openOverlay(base, fresh(), { baseId: 'x'.repeat(1025) })).rejects.toThrow(/longer than 1024 bytes/);
  });

  it('a truncated overlay, or one with damaged states, is refused', async () => {
    const path = fresh();
    await (await openOverlay(base, path, { clusterSize: CS })).close();
    const full = (await stat(path)).size;
    await truncate(path, full - 1);
    await expect(openOverlay(base, path)).rejects.toThrow(/truncated/);
    await truncate(path, full);
    const fh = await open(path, 'r+');
    await fh.write(Buffer.from([0xff]), 0, 1, 4096); // state 3 does not exist
    await fh.close();
    await expect(openOverlay(base, path)).rejects.toThrow(/damaged/);
  });

  it('a FIFO at the path is refused without hanging', async () => {
    const path = fresh();
    execFileSync('mkfifo', ['-m', '600', path]);
    await expect(openOverlay(base, path)).rejects.toThrow(/not a regular file/);
  });

  it('the created file is 0600 whatever the umask', async () => {
    const old = process.umask(0);
    try {
      const path = fresh();
      await (await openOverlay(base, path)).close();
      expect((await stat(path)).mode & 0o777).toBe(0o600);
    } finally {
      process.umask(old);
    }
  });
});

describe('OverlayDevice under concurrency', () => {
  it('fixed order: two partial writes to one base cluster both land (the second waits for the first copy)', async () => {
    const init = randomBytes(4 * CS);
    let releaseRead!: () => void;
    const gate = new Promise<void>((r) => (releaseRead = r));
    class GatedBase extends MemoryDevice {
      override async read(offset: number, length: number): Promise<Buffer> {
        const b = await super.read(offset, length);
        await gate; // the first copy of cluster 1 is held here
        return b;
      }
    }
    const base = new GatedBase(init, { readOnly: true });
    const ov = await openOverlay(base, fresh(), { clusterSize: CS });
    const a = ov.write(CS + 10, Buffer.alloc(10, 0xaa));
    const b = ov.write(CS + 100, Buffer.alloc(10, 0xbb));
    await new Promise((r) => setTimeout(r, 20));
    // A read while the copy is in flight sees the base for that cluster.
    releaseRead();
    await Promise.all([a, b]);
    const got = await ov.read(CS, CS);
    const want = Buffer.from(init.subarray(CS, 2 * CS));
    want.fill(0xaa, 10, 20);
    want.fill(0xbb, 100, 110);
    expect(got.equals(want)).toBe(true);
    await ov.close();
  });

  for (const seed of [1, 2, 3, 0xc0ffee]) {
    it(`seeded stress against a model: concurrent writes, zeroes, trims, reads, flushes, reopens (seed ${seed})`, async () => {
      const rng = mulberry32(seed);
      const init = rng.bytes(SIZE);
      const base = new SlowMemoryDevice(init, rng);
      const path = fresh();
      let ov: OverlayDevice = await openOverlay(base, path, { clusterSize: CS });
      const model = Buffer.from(init);
      for (let batch = 0; batch < 40; batch++) {
        // Byte-disjoint requests that often share clusters: the races RMW must survive.
        const taken: Array<[number, number]> = [];
        const ops: Array<() => Promise<void>> = [];
        for (let i = 0; i < 12; i++) {
          const len = rng.chance(0.3) ? rng.int(1, 3 * CS) : rng.int(1, 300);
          // Half the requests crowd into a few hot clusters, so RMW copies collide.
          const span = rng.chance(0.5) ? Math.min(SIZE, 6 * CS) : SIZE;
          const off = rng.int(0, Math.max(0, span - len));
          if (taken.some(([s, e]) => off < e && s < off + len)) continue;
          taken.push([off, off + len]);
          const kind = rng.int(0, 9);
          if (kind < 4) {
            const data = rng.bytes(len);
            data.copy(model, off);
            ops.push(() => ov.write(off, data, { fua: rng.chance(0.05) }));
          } else if (kind < 5) {
            model.fill(0, off, off + len);
            const mayTrim = rng.chance(0.7);
            ops.push(() => ov.writeZeroes(off, len, { mayTrim }));
          } else if (kind < 6) {
            model.fill(0, off, off + len);
            ops.push(() => ov.trim(off, len));
          } else {
            const want = Buffer.from(model.subarray(off, off + len));
            ops.push(async () => {
              const got = await ov.read(off, len);
              expect(got.equals(want), `seed ${seed} batch ${batch} read ${off}+${len}`).toBe(true);
            });
          }
        }
        if (rng.chance(0.2)) ops.push(() => ov.flush());
        await Promise.all(ops.map((f) => f()));
        if (rng.chance(0.1)) {
          await ov.close();
          ov = await openOverlay(base, path, { clusterSize: CS });
        }
      }
      expect((await ov.read(0, SIZE)).equals(model), `seed ${seed} final`).toBe(true);
      await ov.close();
      const again = await openOverlay(base, path);
      expect((await again.read(0, SIZE)).equals(model), `seed ${seed} after reopen`).toBe(true);
      await again.close();
      expect(base.contents().equals(init)).toBe(true);
    });
  }
});
