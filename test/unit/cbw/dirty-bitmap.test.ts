import { appendFile, mkdtemp, readdir, rename, rm, utimes, writeFile, copyFile, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { CbwDevice } from '../../../src/cbw/cbw-device.js';
import { DirtyBitmapStore, type PersistentDirtyBitmap } from '../../../src/cbw/dirty-bitmap.js';
import { BackupBusyError, BitmapInvalidError } from '../../../src/cbw/errors.js';
import { startBackup } from '../../../src/cbw/session.js';
import { CLUSTER_SIZE } from '../../../src/format/constants.js';
import { JitterMemDevice } from '../../helpers/cbw-memdev.js';
import { mulberry32 } from '../../helpers/prng.js';
import { CaptureSink } from '../../helpers/cbw-sink.js';

const C = CLUSTER_SIZE;
const SIZE = 10 * C - 123;
let dir: string;
let disk: string;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cbw-dirty-'));
  disk = join(dir, 'vda.raw');
  await writeFile(disk, Buffer.alloc(SIZE));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

function bits(bm: PersistentDirtyBitmap): number[] {
  const out: number[] = [];
  const s = bm.snapshot();
  for (let c = s.nextSet(0); c !== -1; c = s.nextSet(c + 1)) out.push(c);
  return out;
}

async function openBm(): Promise<PersistentDirtyBitmap> {
  return new DirtyBitmapStore(join(dir, 'state')).open({ name: 'vda', path: disk, size: SIZE });
}

/** Full backup that succeeds: the bitmap becomes valid and empty (no writes during it). */
async function makeValid(bm: PersistentDirtyBitmap): Promise<void> {
  bm.beginBackup('full');
  await bm.completeBackup(true, { uuid: 'u-full' });
}

describe('PersistentDirtyBitmap: validity', () => {
  it('starts invalid ("no full backup yet") and refuses incrementals until a full succeeded', async () => {
    const bm = await openBm();
    expect(bm.isValid).toBe(false);
    expect(bm.invalidReason).toBe('no full backup yet');
    expect(() => bm.beginBackup('incremental')).toThrow(BitmapInvalidError);
    expect(bm.isFrozen).toBe(false);
    await makeValid(bm);
    expect(bm.isValid).toBe(true);
    expect(bm.status()).toMatchObject({ valid: true, invalidReason: null, dirtyClusters: 0, lastBackup: { uuid: 'u-full', mode: 'full' } });
  });

  it('a clean shutdown keeps the bits valid across a restart', async () => {
    const bm = await openBm();
    await makeValid(bm);
    bm.markRange(C + 5, 10);
    bm.markRange(9 * C, SIZE - 9 * C);
    await bm.shutdown();
    const again = await openBm();
    expect(again.isValid).toBe(true);
    expect(bits(again)).toEqual([1, 9]);
  });

  it('an unclean stop (no shutdown) invalidates: "agent stopped uncleanly"', async () => {
    const bm = await openBm();
    await makeValid(bm);
    bm.markRange(0, 1);
    // simulate SIGKILL: no shutdown(); the file on disk still says 'running'
    const again = await openBm();
    expect(again.isValid).toBe(false);
    expect(again.invalidReason).toMatch(/agent stopped uncleanly/);
    expect(() => again.beginBackup('incremental')).toThrow(/agent stopped uncleanly/);
    // …and stays invalid across a later clean restart until a full backup.
    await again.shutdown();
    const third = await openBm();
    expect(third.isValid).toBe(false);
    expect(third.invalidReason).toMatch(/agent stopped uncleanly/);
    await makeValid(third);
    expect(third.isValid).toBe(true);
  });

  it('a disk whose size changed while stopped invalidates', async () => {
    const bm = await openBm();
    await makeValid(bm);
    await bm.shutdown();
    await appendFile(disk, Buffer.alloc(C));
    const store = new DirtyBitmapStore(join(dir, 'state'));
    const again = await store.open({ name: 'vda', path: disk, size: SIZE + C });
    expect(again.isValid).toBe(false);
    expect(again.invalidReason).toMatch(/disk file changed \(size/);
  });

  it('a disk modified while stopped (mtime) invalidates', async () => {
    const bm = await openBm();
    await makeValid(bm);
    await bm.shutdown();
    await utimes(disk, new Date(), new Date(Date.now() + 5000));
    const again = await openBm();
    expect(again.isValid).toBe(false);
    expect(again.invalidReason).toMatch(/disk file changed \(modified while the agent was stopped/);
  });

  it('a replaced disk file (new inode) invalidates', async () => {
    const bm = await openBm();
    await makeValid(bm);
    await bm.shutdown();
    const copy = join(dir, 'copy.raw');
    await copyFile(disk, copy);
    await rename(copy, disk);
    const again = await openBm();
    expect(again.isValid).toBe(false);
    expect(again.invalidReason).toMatch(/disk file changed/);
  });

  it('a corrupt bitmap file invalidates instead of crashing', async () => {
    const bm = await openBm();
    await makeValid(bm);
    await bm.shutdown();
    const f = bm.file;
    const raw = await readFile(f);
    raw[raw.length - 40]! ^= 0xff;
    await writeFile(f, raw);
    const again = await openBm();
    expect(again.isValid).toBe(false);
    expect(again.invalidReason).toMatch(/unreadable.*checksum/);
    await writeFile(f, 'garbage');
    expect((await openBm()).invalidReason).toMatch(/unreadable/);
  });

  it('persists atomically (no temp files left behind)', async () => {
    const bm = await openBm();
    await makeValid(bm);
    await bm.shutdown();
    const files = await readdir(join(dir, 'state', 'bitmaps'));
    expect(files).toHaveLength(1);
    expect(files[0]).toMatch(/^vda-[0-9a-f]{8}\.bitmap$/);
  });
});

describe('PersistentDirtyBitmap: successor and reclaim', () => {
  async function validWith(dirty: number[]): Promise<PersistentDirtyBitmap> {
    const bm = await openBm();
    await makeValid(bm);
    for (const c of dirty) bm.markRange(c * C, 1);
    return bm;
  }

  it('incremental success: the frozen bits are dropped, the successor becomes the bitmap', async () => {
    const bm = await validWith([1, 2]);
    const copy = bm.beginBackup('incremental')!;
    expect([...copy.ranges()]).toEqual([[1, 2]]);
    expect(() => bm.beginBackup('incremental')).toThrow(BackupBusyError);
    bm.markRange(5 * C, 1); // write during the backup → successor
    bm.markRange(2 * C, 1);
    expect(bits(bm)).toEqual([1, 2, 5]);
    await bm.completeBackup(true);
    expect(bits(bm)).toEqual([2, 5]);
    expect(bm.isValid).toBe(true);
  });

  it('incremental failure or cancel: frozen is merged back, no bit lost', async () => {
    const bm = await validWith([1, 2]);
    bm.beginBackup('incremental');
    bm.markRange(7 * C, 1);
    await bm.completeBackup(false);
    expect(bits(bm)).toEqual([1, 2, 7]);
    expect(bm.isValid).toBe(true);
    await bm.shutdown();
    expect(bits(await openBm())).toEqual([1, 2, 7]); // and it was persisted
  });

  it('full success: bitmap = writes during the backup only; full failure: frozen ∪ successor, invalid stays invalid', async () => {
    const bm = await openBm(); // invalid
    bm.markRange(3 * C, 1);
    bm.beginBackup('full');
    bm.markRange(4 * C, 1);
    await bm.completeBackup(false);
    expect(bm.isValid).toBe(false);
    expect(bits(bm)).toEqual([3, 4]);
    bm.beginBackup('full');
    bm.markRange(6 * C, 1);
    await bm.completeBackup(true);
    expect(bm.isValid).toBe(true);
    expect(bits(bm)).toEqual([6]);
  });

  it('shutdown during a backup reclaims first', async () => {
    const bm = await validWith([1]);
    bm.beginBackup('incremental');
    bm.markRange(8 * C, 1);
    await bm.shutdown();
    const again = await openBm();
    expect(again.isValid).toBe(true);
    expect(bits(again)).toEqual([1, 8]);
  });
});

describe('startBackup sessions: full + incrementals through CbwDevice', () => {
  it('each incremental captures exactly the clusters written since the previous success; a failed one loses nothing', async () => {
    const rng = mulberry32(42);
    const mem = new JitterMemDevice(rng.bytes(SIZE), rng);
    const bm = await openBm();
    const dev = new CbwDevice(mem, { deviceId: 0, dirty: bm });
    const image = (): Buffer => Buffer.from(mem.data);

    // Writes before the first full backup are irrelevant.
    await dev.write(0, Buffer.alloc(10, 1));
    await expect(startBackup({ disks: [{ id: 0, name: 'vda', device: dev, dirty: bm }], mode: 'incremental', sink: new CaptureSink() })).rejects.toThrow(BitmapInvalidError);

    // Full.
    let restored: Buffer = Buffer.alloc(SIZE);
    const full = new CaptureSink();
    let s = await startBackup({ disks: [{ id: 0, name: 'vda', device: dev, dirty: bm }], mode: 'full', sink: full });
    const atFull = image();
    const during = dev.write(3 * C, Buffer.alloc(100, 2)); // during the backup → successor
    expect((await s.done).status).toBe('done');
    await during;
    await s.complete(true, { uuid: 'full' });
    restored = full.reconstruct(0, restored);
    expect(restored.equals(atFull)).toBe(true);
    expect(bits(bm)).toEqual([3]);

    // Writes, then an incremental whose sink fails mid-way.
    await dev.write(5 * C + 3, Buffer.alloc(C, 3)); // clusters 5, 6
    const failing = new CaptureSink();
    failing.failWith = new Error('network down');
    s = await startBackup({ disks: [{ id: 0, name: 'vda', device: dev, dirty: bm }], mode: 'incremental', sink: failing });
    await dev.write(8 * C, Buffer.alloc(10, 4)); // during the failed backup
    expect((await s.done).status).toBe('error');
    await s.complete(false);
    expect(bits(bm)).toEqual([3, 5, 6, 8]);

    // The next incremental still captures every change since the full.
    await dev.trim(9 * C, SIZE - 9 * C);
    const inc = new CaptureSink();
    s = await startBackup({ disks: [{ id: 0, name: 'vda', device: dev, dirty: bm }], mode: 'incremental', sink: inc });
    const atInc = image();
    expect((await s.done).status).toBe('done');
    await s.complete(true, { uuid: 'inc' });
    expect([...inc.clusters.keys()].sort()).toEqual(['0:3', '0:5', '0:6', '0:8', '0:9']);
    restored = inc.reconstruct(0, restored);
    expect(restored.equals(atInc)).toBe(true);
    expect(bm.isFrozen).toBe(false);
    expect(dev.attachedJob).toBeNull();
    expect(bm.status().lastBackup).toMatchObject({ uuid: 'inc', mode: 'incremental' });
    await bm.shutdown();
  });

  it('a cancelled full backup reclaims, and a concurrent second start is refused', async () => {
    const mem = new JitterMemDevice(Buffer.alloc(SIZE, 1), null);
    const bm = await openBm();
    await makeValid(bm);
    bm.markRange(2 * C, 1);
    const dev = new CbwDevice(mem, { deviceId: 0, dirty: bm });
    const sink = new CaptureSink();
    sink.block();
    const s = await startBackup({ disks: [{ id: 0, name: 'vda', device: dev, dirty: bm }], mode: 'full', sink });
    await expect(startBackup({ disks: [{ id: 0, name: 'vda', device: dev, dirty: bm }], mode: 'full', sink })).rejects.toThrow(BackupBusyError);
    s.job.cancel();
    expect((await s.done).status).toBe('cancelled');
    await s.complete(false);
    sink.release();
    expect(bits(bm)).toEqual([2]);
    expect(bm.isValid).toBe(true);
  });
});
