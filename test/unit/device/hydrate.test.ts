/**
 * Hydration: background copy of a source into a local target while the
 * hydration's device serves it. The target must end equal to the source plus
 * every write made meanwhile, stay sparse over holes, and be opened safely.
 */
import { randomBytes } from 'node:crypto';
import { chmod, chown, mkdtemp, open, readFile, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MemoryDevice } from '../../../src/device/memory-device.js';
import { HydrationCancelledError, startHydration } from '../../../src/device/hydrate.js';
import { openOverlay } from '../../../src/device/overlay-device.js';
import { mulberry32 } from '../../helpers/prng.js';
import { SlowMemoryDevice } from '../../helpers/slow-device.js';
import { widestLockDuring } from '../../helpers/lock-width.js';
import type { BlockDevice } from '../../../src/device/types.js';

const CS = 4096;

let dir: string;
let n = 0;
const fresh = (): string => join(dir, `t-${n++}`);
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cowstream-hydrate-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** 1 MiB + 5 bytes: data in a few places, holes elsewhere. */
function sparseImage(): Buffer {
  const b = Buffer.alloc(256 * CS + 5);
  randomBytes(3 * CS).copy(b, 0);
  randomBytes(100).copy(b, 100 * CS + 7);
  randomBytes(5).copy(b, 256 * CS);
  return b;
}

describe('startHydration', () => {
  it('copies every cluster, leaves holes sparse, reports progress, target 0600', async () => {
    const img = sparseImage();
    const source = new MemoryDevice(img, { readOnly: true });
    const target = fresh();
    const h = startHydration(source, target, { clusterSize: CS, concurrency: 3 });
    expect(h.device.size).toBe(img.length);
    expect(h.device.readOnly).toBe(true);
    const r = await h.done;
    expect((await readFile(target)).equals(img)).toBe(true);
    expect(r).toMatchObject({ target, bytesTotal: img.length, bytesCopied: 4 * CS + 5, bytesSkipped: img.length - 4 * CS - 5 });
    expect(h.progress()).toMatchObject({ state: 'complete', bytesDone: img.length, bytesTotal: img.length });
    const st = await stat(target);
    expect(st.mode & 0o777).toBe(0o600);
    expect(st.blocks * 512).toBeLessThan(64 * CS); // 1 MiB apparent, a few clusters allocated
    // After completion the device serves from the target.
    expect((await h.device.read(0, img.length)).equals(img)).toBe(true);
    await h.device.close();
  });

  it('a source without a map: zero clusters are detected by content and still left sparse', async () => {
    const img = sparseImage();
    const source = new MemoryDevice(img, { readOnly: true });
    Object.defineProperty(source, 'mapExtents', { value: undefined });
    const target = fresh();
    const h = startHydration(source, target, { clusterSize: CS });
    expect(h.device.mapExtents).toBeUndefined();
    await h.done;
    expect((await readFile(target)).equals(img)).toBe(true);
    expect((await stat(target)).blocks * 512).toBeLessThan(64 * CS);
    await h.device.close();
  });

  it('fixed order: a write while the copy of its cluster is in flight waits and lands in the target', async () => {
    const img = randomBytes(8 * CS);
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    let copying = false;
    class Gated extends MemoryDevice {
      override async read(offset: number, length: number): Promise<Buffer> {
        const b = await super.read(offset, length);
        if (offset === 2 * CS && !copying) {
          copying = true;
          await gate; // the copy read the old cluster 2 and is held before writing it
        }
        return b;
      }
    }
    const source = new Gated(img);
    const target = fresh();
    const h = startHydration(source, target, { clusterSize: CS, concurrency: 1 });
    while (!copying) await new Promise((r) => setTimeout(r, 2));
    let written = false;
    const w = h.device.write(2 * CS + 10, Buffer.alloc(20, 0x77)).then(() => (written = true));
    await new Promise((r) => setTimeout(r, 30));
    expect(written).toBe(false); // it waits for the cluster's copy
    release();
    await w;
    await h.done;
    const want = Buffer.from(img);
    want.fill(0x77, 2 * CS + 10, 2 * CS + 30);
    expect((await readFile(target)).equals(want)).toBe(true);
    expect(source.contents().equals(want)).toBe(true);
    await h.device.close();
  });

  it('fixed order: a write into a cluster the (stale) map called a hole is copied, not skipped', async () => {
    const img = Buffer.alloc(8 * CS); // all holes
    img.fill(1, 0, CS);
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    let held = false;
    class Gated extends MemoryDevice {
      override async read(offset: number, length: number): Promise<Buffer> {
        const b = await super.read(offset, length);
        if (offset === 0 && !held) {
          held = true;
          await gate; // the map of the whole window is already taken
        }
        return b;
      }
    }
    const source = new Gated(img);
    const target = fresh();
    const h = startHydration(source, target, { clusterSize: CS, concurrency: 1 });
    while (!held) await new Promise((r) => setTimeout(r, 2));
    await h.device.write(5 * CS + 1, Buffer.from('late data'));
    release();
    await h.done;
    const want = Buffer.from(img);
    Buffer.from('late data').copy(want, 5 * CS + 1);
    expect((await readFile(target)).equals(want)).toBe(true);
    await h.device.close();
  });

  it('a cluster a client reads before it is copied is copied next, ahead of the scan', async () => {
    const img = randomBytes(256 * CS);
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const copies: number[] = [];
    class Logged extends MemoryDevice {
      override async read(offset: number, length: number): Promise<Buffer> {
        if (length === CS) copies.push(offset / CS);
        if (length === CS && offset === 0) await gate;
        return super.read(offset, length);
      }
    }
    const h = startHydration(new Logged(img, { readOnly: true }), fresh(), { clusterSize: CS, concurrency: 1 });
    while (copies.length === 0) await new Promise((r) => setTimeout(r, 2));
    expect((await h.device.read(200 * CS + 5, 10)).equals(img.subarray(200 * CS + 5, 200 * CS + 15))).toBe(true);
    release();
    await h.done;
    expect(copies.slice(0, 3)).toEqual([0, 200, 1]);
    expect(copies.filter((c) => c === 200)).toHaveLength(1); // the scan skips it later
    await h.device.close();
  });

  for (const seed of [11, 12, 13, 14, 15, 16]) {
    it(`seeded stress: hydrating an overlay while writes, zeroes, trims and reads go on (seed ${seed})`, async () => {
      const rng = mulberry32(seed);
      const img = sparseImage();
      rng.bytes(20 * CS).copy(img, 30 * CS);
      const base = new SlowMemoryDevice(img, rng);
      const ov = await openOverlay(base, fresh(), { clusterSize: CS });
      const target = fresh();
      const h = startHydration(ov, target, { clusterSize: 2 * CS, concurrency: 3 });
      const model = Buffer.from(img);
      const size = img.length;
      let batches = 0;
      let finished = false;
      void h.done.then(() => (finished = true), () => (finished = true));
      while (batches < 25 || (!finished && batches < 2000)) {
        batches++;
        const taken: Array<[number, number]> = [];
        const ops: Array<Promise<void>> = [];
        for (let i = 0; i < 8; i++) {
          const len = rng.chance(0.2) ? rng.int(1, 3 * CS) : rng.int(1, 200);
          // Half the requests go just ahead of the copy frontier, where they race the copies.
          const frontier = Math.min(size - len, h.progress().bytesDone + rng.int(0, 8 * CS));
          const off = rng.chance(0.5) ? Math.max(0, frontier) : rng.int(0, size - len);
          if (taken.some(([s, e]) => off < e && s < off + len)) continue;
          taken.push([off, off + len]);
          const k = rng.int(0, 9);
          if (k < 4) {
            const data = rng.bytes(len);
            data.copy(model, off);
            ops.push(h.device.write(off, data));
          } else if (k < 5) {
            model.fill(0, off, off + len);
            ops.push(h.device.writeZeroes(off, len, { mayTrim: rng.chance(0.5) }));
          } else if (k < 6) {
            model.fill(0, off, off + len);
            ops.push(h.device.trim(off, len));
          } else {
            const want = Buffer.from(model.subarray(off, off + len));
            ops.push(h.device.read(off, len).then((got) => {
              expect(got.equals(want), `seed ${seed} batch ${batches} read ${off}+${len}`).toBe(true);
            }));
          }
        }
        await Promise.all(ops);
      }
      await h.done;
      expect((await readFile(target)).equals(model), `seed ${seed}: target after hydration`).toBe(true);
      // Writes after completion reach the target too.
      const late = rng.bytes(3000);
      await h.device.write(77 * CS + 3, late);
      late.copy(model, 77 * CS + 3);
      await h.device.flush();
      expect((await readFile(target)).equals(model), `seed ${seed}: target after a late write`).toBe(true);
      expect((await ov.read(0, size)).equals(model)).toBe(true);
      expect(base.contents().equals(img)).toBe(true);
      await h.device.close();
      await ov.close();
    });
  }

  it('cancel: done rejects, the device keeps serving (and writing) through the source', async () => {
    const img = randomBytes(64 * CS);
    const source = new SlowMemoryDevice(img, mulberry32(5), { readOnly: false });
    const target = fresh();
    const h = startHydration(source, target, { clusterSize: CS, concurrency: 1 });
    while (h.progress().bytesDone < 2 * CS) await new Promise((r) => setTimeout(r, 1));
    h.cancel();
    await expect(h.done).rejects.toThrow(HydrationCancelledError);
    expect(h.progress().state).toBe('cancelled');
    expect(h.progress().bytesDone).toBeLessThan(img.length);
    await h.device.write(CS, Buffer.alloc(10, 9));
    const want = Buffer.from(img);
    want.fill(9, CS, CS + 10);
    expect((await h.device.read(0, img.length)).equals(want)).toBe(true);
    await h.device.close();
  });

  it('a target that fails while serving a write ends hydration, not the write; reads then come from the source', async () => {
    const img = randomBytes(8 * CS);
    const source = new MemoryDevice(img);
    const target = fresh();
    const h = startHydration(source, target, { clusterSize: CS });
    await h.done;
    const probe = await open(target, 'r');
    const proto = Object.getPrototypeOf(probe) as { write: (...a: unknown[]) => Promise<unknown> };
    await probe.close();
    const origWrite = proto.write;
    proto.write = async (): Promise<never> => {
      throw Object.assign(new Error('no space left on device'), { code: 'ENOSPC' });
    };
    try {
      await h.device.write(3 * CS, Buffer.alloc(100, 0x42)); // succeeds: the source has it
    } finally {
      proto.write = origWrite;
    }
    expect(h.progress()).toMatchObject({ state: 'failed', error: expect.stringMatching(/no space left/) });
    const want = Buffer.from(img);
    want.fill(0x42, 3 * CS, 3 * CS + 100);
    expect((await h.device.read(0, img.length)).equals(want)).toBe(true);
    expect(source.contents().equals(want)).toBe(true);
    await h.device.close();
  });

  it('a failing source read fails the hydration with the cause; reads elsewhere still work', async () => {
    const img = randomBytes(16 * CS);
    class Broken extends MemoryDevice {
      override async read(offset: number, length: number): Promise<Buffer> {
        if (offset <= 9 * CS && offset + length > 9 * CS) throw new Error('extent 9 is corrupt');
        return super.read(offset, length);
      }
    }
    const h = startHydration(new Broken(img, { readOnly: true }), fresh(), { clusterSize: CS });
    await expect(h.done).rejects.toThrow(/extent 9 is corrupt/);
    expect(h.progress()).toMatchObject({ state: 'failed', error: expect.stringMatching(/extent 9 is corrupt/) });
    expect((await h.device.read(0, 4 * CS)).equals(img.subarray(0, 4 * CS))).toBe(true);
    await h.device.close();
  });
});

describe('startHydration refuses unsafe targets', () => {
  const source = new MemoryDevice(randomBytes(4 * CS), { readOnly: true });

  it('a symlink at the target path is not followed; its target is untouched', async () => {
    const victim = join(dir, 'victim');
    await writeFile(victim, 'precious', { mode: 0o600 });
    const t = fresh();
    await symlink(victim, t);
    const h = startHydration(source, t, { force: true });
    await expect(h.done).rejects.toThrow(/symbolic link/);
    expect(await readFile(victim, 'utf8')).toBe('precious');
    // Serving goes on from the source.
    expect((await h.device.read(0, 10)).equals(await source.read(0, 10))).toBe(true);
  });

  it('a non-empty file is refused unless forced; forced, it is replaced', async () => {
    const t = fresh();
    await writeFile(t, 'old contents', { mode: 0o600 });
    await expect(startHydration(source, t).done).rejects.toThrow(/not empty/);
    expect(await readFile(t, 'utf8')).toBe('old contents');
    await startHydration(source, t, { force: true }).done;
    expect((await readFile(t)).equals(source.contents())).toBe(true);
  });

  it('an existing empty file of ours is used', async () => {
    const t = fresh();
    await writeFile(t, '', { mode: 0o600 });
    await startHydration(source, t).done;
    expect((await readFile(t)).equals(source.contents())).toBe(true);
  });

  it('a group-readable or foreign file is refused even with force', async () => {
    const t = fresh();
    await writeFile(t, '', { mode: 0o600 });
    await chmod(t, 0o644);
    await expect(startHydration(source, t, { force: true }).done).rejects.toThrow(/group or others/);
    if (process.getuid?.() !== 0) return;
    await chmod(t, 0o600);
    await chown(t, 65534, 65534);
    await expect(startHydration(source, t, { force: true }).done).rejects.toThrow(/owned by uid 65534/);
  });

  it('bad options are refused up front', () => {
    expect(() => startHydration(source, fresh(), { clusterSize: 1000 })).toThrow(/power of two/);
    expect(() => startHydration(source, fresh(), { concurrency: 0 })).toThrow(/concurrency/);
  });
});

describe('startHydration under a huge payload-less request', () => {
  it('a 4 GiB trim in 4 KiB clusters holds a bounded number of cluster locks and still reaches the source whole', async () => {
    const trims: Array<[number, number]> = [];
    const source: BlockDevice = {
      size: 2 ** 33,
      readOnly: false,
      read: async (_o, l) => Buffer.alloc(l),
      write: async () => undefined,
      writeZeroes: async () => undefined,
      trim: async (o, l) => void trims.push([o, l]),
      flush: async () => undefined,
      close: async () => undefined,
      mapExtents: async (_o, l) => [{ length: l, hole: true, zero: true }],
    };
    const h = startHydration(source, fresh(), { clusterSize: CS, concurrency: 1 });
    const start = CS + 100;
    const len = 2 ** 32 - CS;
    const widest = await widestLockDuring(() => h.device.trim(start, len));
    expect(widest).toBeLessThanOrEqual(1024);
    // The source got the whole range, in order and without gaps.
    let pos = start;
    for (const [o, l] of trims) {
      expect(o).toBe(pos);
      pos += l;
    }
    expect(pos).toBe(start + len);
    await h.device.close();
    await h.done.catch(() => undefined);
  }, 60_000);
});
