import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BackupJob, type BackupJobOptions } from '../../../src/cbw/backup-job.js';
import { Bitmap } from '../../../src/cbw/bitmap.js';
import { CbwDevice, atQuiescentPoint } from '../../../src/cbw/cbw-device.js';
import { CbwTimeoutError, CbwWriteError, FleecingFullError } from '../../../src/cbw/errors.js';
import { TokenBucket } from '../../../src/cbw/rate-limit.js';
import { BackupCancelledError, OutOfRangeError } from '../../../src/errors.js';
import { CLUSTER_SIZE } from '../../../src/format/constants.js';
import { JitterMemDevice } from '../../helpers/cbw-memdev.js';
import { mulberry32 } from '../../helpers/prng.js';
import { CaptureSink } from '../../helpers/cbw-sink.js';

const C = CLUSTER_SIZE;
let tmp: string;

beforeEach(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'cbw-job-'));
});
afterEach(async () => {
  await rm(tmp, { recursive: true, force: true });
});

function image(clusters: number, tail = 1000, seed = 1): Buffer {
  return mulberry32(seed).bytes(clusters * C - tail);
}

async function setup(
  init: Buffer,
  opts: Partial<BackupJobOptions> = {},
): Promise<{ mem: JitterMemDevice; cbw: CbwDevice; sink: CaptureSink; job: BackupJob }> {
  const mem = new JitterMemDevice(init, null);
  const sink = (opts.sink as CaptureSink | undefined) ?? new CaptureSink();
  const job = await BackupJob.create({ devices: [{ id: 0, name: 'vda', device: mem }], sink, readBatchClusters: 1, ...opts });
  const cbw = new CbwDevice(mem, { deviceId: 0 });
  await atQuiescentPoint([cbw], () => cbw.attach(job));
  return { mem, cbw, sink, job };
}

/** Resolves 'pending' if `p` has not settled within `ms`. */
async function settledWithin<T>(p: Promise<T>, ms: number): Promise<'resolved' | 'rejected' | 'pending'> {
  return Promise.race([
    p.then(
      () => 'resolved' as const,
      () => 'rejected' as const,
    ),
    new Promise<'pending'>((res) => setTimeout(() => res('pending'), ms)),
  ]);
}

function expectBackupEquals(sink: CaptureSink, init: Buffer): void {
  expect(sink.duplicates).toEqual([]);
  expect(sink.reconstruct(0, Buffer.alloc(init.length)).equals(init)).toBe(true);
}

describe('BackupJob basics', () => {
  it('copies every cluster once, including the partial last one, and counts zero bytes', async () => {
    const init = image(10, 777);
    init.fill(0, 2 * C, 4 * C); // two zero clusters
    const { sink, job } = await setup(init);
    job.start();
    const r = await job.done;
    expect(r.status).toBe('done');
    expect(r.total).toBe(init.length);
    expect(r.transferred).toBe(init.length);
    expect(r.zeroBytes).toBe(2 * C);
    expect(sink.get(0, 9)!.length).toBe(C - 777);
    expectBackupEquals(sink, init);
    expect(r.endTime).not.toBeNull();
  });

  it('an incremental copy bitmap limits what is copied', async () => {
    const init = image(8);
    const bm = new Bitmap(8);
    bm.set(1);
    bm.set(7);
    const mem = new JitterMemDevice(init, null);
    const sink = new CaptureSink();
    const job = new BackupJob({ devices: [{ id: 3, name: 'x', device: mem, copyBitmap: bm }], sink });
    job.start();
    const r = await job.done;
    expect(r.status).toBe('done');
    expect([...sink.clusters.keys()].sort()).toEqual(['3:1', '3:7']);
    expect(r.total).toBe(C + (init.length - 7 * C));
    expect(bm.count()).toBe(2); // the caller's bitmap is not modified
  });

  it('an empty incremental (nothing dirty) completes at once with nothing delivered', async () => {
    const mem = new JitterMemDevice(image(5), null);
    const sink = new CaptureSink();
    const job = new BackupJob({ devices: [{ id: 0, name: 'v', device: mem, copyBitmap: new Bitmap(5) }], sink });
    const cbw = new CbwDevice(mem, { deviceId: 0 });
    cbw.attach(job);
    job.start();
    const r = await job.done;
    expect(r).toMatchObject({ status: 'done', total: 0, transferred: 0 });
    expect(sink.calls).toBe(0);
    expect(cbw.attachedJob).toBeNull();
  });

  it('a guest write before the background pass reaches a cluster copies the OLD data first', async () => {
    const init = image(6);
    const { cbw, sink, job, mem } = await setup(init);
    await cbw.write(4 * C + 10, Buffer.alloc(C, 0xab)); // touches clusters 4 and 5
    expect(sink.get(0, 4)!.equals(init.subarray(4 * C, 5 * C))).toBe(true);
    expect(sink.get(0, 5)!.equals(init.subarray(5 * C))).toBe(true);
    expect(mem.data[4 * C + 10]).toBe(0xab);
    job.start();
    const r = await job.done;
    expect(r.cbwClusters).toBe(2);
    expectBackupEquals(sink, init);
  });

  it('a whole-device TRIM is captured in bounded windows, old data first', async () => {
    const init = image(200, 5);
    for (const fleecing of [false, true]) {
      const { cbw, sink, job, mem } = await setup(init, fleecing ? { fleecing: { dir: tmp, maxBytes: 300 * C } } : {});
      await cbw.trim(0, init.length);
      expect(mem.data.equals(Buffer.alloc(init.length))).toBe(true);
      job.start();
      const r = await job.done;
      expect(r.status).toBe('done');
      expect(r.cbwClusters).toBe(200);
      expectBackupEquals(sink, init);
    }
  });

  it('backpressure: without fleecing a guest write waits for the sink', async () => {
    const init = image(4);
    const sink = new CaptureSink();
    sink.block();
    const { cbw, job } = await setup(init, { sink });
    const w = cbw.write(2 * C, Buffer.alloc(100, 1));
    expect(await settledWithin(w, 50)).toBe('pending');
    sink.release();
    await w;
    job.start();
    expect((await job.done).status).toBe('done');
    expectBackupEquals(sink, init);
  });

  it('writes to clusters already copied or outside the copy set do not wait', async () => {
    const init = image(4);
    const bm = new Bitmap(4);
    bm.set(0);
    const sink = new CaptureSink();
    const mem = new JitterMemDevice(init, null);
    const job = new BackupJob({ devices: [{ id: 0, name: 'v', device: mem, copyBitmap: bm }], sink });
    const cbw = new CbwDevice(mem, { deviceId: 0 });
    cbw.attach(job);
    sink.block();
    expect(await settledWithin(cbw.write(2 * C, Buffer.alloc(10)), 50)).toBe('resolved');
    sink.release();
    job.cancel();
  });

  it('cancel ends the job, releases waiting guest writes and detaches', async () => {
    const init = image(4);
    const sink = new CaptureSink();
    sink.block();
    const { cbw, job, mem } = await setup(init, { sink });
    const w = cbw.write(3 * C, Buffer.alloc(10, 7));
    expect(await settledWithin(w, 30)).toBe('pending');
    job.cancel();
    await w; // proceeds once the snapshot is gone
    const r = await job.done;
    expect(r.status).toBe('cancelled');
    expect(r.errorObject).toBeInstanceOf(BackupCancelledError);
    expect(mem.data[3 * C]).toBe(7);
    expect(cbw.attachedJob).toBeNull();
    await job.beforeWrite(0, 0, 100); // no-op after the end
    sink.release();
  });

  it('an AbortSignal cancels', async () => {
    const ac = new AbortController();
    const sink = new CaptureSink();
    sink.block();
    const { job } = await setup(image(4), { sink, signal: ac.signal });
    job.start();
    ac.abort();
    expect((await job.done).status).toBe('cancelled');
  });

  it('a failing sink fails the job with the cause', async () => {
    const sink = new CaptureSink();
    sink.failWith = new Error('disk full on target');
    const { job } = await setup(image(4), { sink });
    job.start();
    const r = await job.done;
    expect(r.status).toBe('error');
    expect(r.error).toMatch(/disk full on target/);
  });

  it('a failing source read fails the job', async () => {
    const { job, mem } = await setup(image(4));
    mem.failReads = new Error('EIO from source');
    job.start();
    const r = await job.done;
    expect(r.status).toBe('error');
    expect(r.error).toMatch(/EIO from source/);
  });

  it('CbwDevice rejects out-of-range requests before anything else', async () => {
    const { cbw, job } = await setup(image(2));
    await expect(cbw.write(2 * C, Buffer.alloc(1))).rejects.toBeInstanceOf(OutOfRangeError);
    await expect(cbw.trim(-1, 1)).rejects.toBeInstanceOf(OutOfRangeError);
    job.cancel();
  });

  it('rejects bad options with typed errors', () => {
    const mem = new JitterMemDevice(image(2), null);
    const sink = new CaptureSink();
    expect(() => new BackupJob({ devices: [], sink })).toThrow(/at least one device/);
    expect(() => new BackupJob({ devices: [{ id: 0, name: 'a', device: mem, copyBitmap: new Bitmap(5) }], sink })).toThrow(/bits/);
    expect(() => new BackupJob({ devices: [{ id: 0, name: 'a', device: mem }, { id: 0, name: 'b', device: mem }], sink })).toThrow(/duplicate/);
    expect(() => new BackupJob({ devices: [{ id: 0, name: 'a', device: mem }], sink, speedBytesPerSec: -1 })).toThrow(/speed/);
  });
});

describe('cbwTimeoutMs and onCbwError', () => {
  it('break-snapshot: on timeout the job fails and the guest write proceeds', async () => {
    const init = image(4);
    const sink = new CaptureSink();
    sink.block();
    const { cbw, job, mem } = await setup(init, { sink, cbwTimeoutMs: 80, onCbwError: 'break-snapshot' });
    await cbw.write(2 * C + 5, Buffer.from('new data'));
    expect(mem.data.subarray(2 * C + 5, 2 * C + 13).toString()).toBe('new data');
    const r = await job.done;
    expect(r.status).toBe('error');
    expect(r.error).toMatch(/did not complete within 80 ms/);
    // Detached: later writes go straight through even though the sink still hangs.
    expect(await settledWithin(cbw.write(0, Buffer.alloc(10, 9)), 50)).toBe('resolved');
    expect(mem.data[0]).toBe(9);
    sink.release();
  });

  it('break-guest-write: on timeout the write fails with EIO and the snapshot stays intact', async () => {
    const init = image(4);
    const sink = new CaptureSink();
    sink.block();
    const { cbw, job, mem } = await setup(init, { sink, cbwTimeoutMs: 80, onCbwError: 'break-guest-write' });
    const err = await cbw.write(2 * C + 5, Buffer.from('new data')).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CbwTimeoutError);
    expect(err).toBeInstanceOf(CbwWriteError);
    expect((err as CbwWriteError).errno).toBe(5);
    expect((err as CbwWriteError).errnoName).toBe('EIO');
    expect(mem.data.subarray(2 * C, 3 * C).equals(init.subarray(2 * C, 3 * C))).toBe(true); // not written
    expect(job.isEnded).toBe(false);
    sink.release();
    job.start();
    const r = await job.done;
    expect(r.status).toBe('done');
    expectBackupEquals(sink, init);
    // The guest's retry now succeeds.
    await cbw.write(2 * C + 5, Buffer.from('new data'));
  });

  it('break-guest-write: a sink error gives EIO and fails the job', async () => {
    const sink = new CaptureSink();
    sink.failWith = new Error('upload failed');
    const { cbw, job } = await setup(image(4), { sink, onCbwError: 'break-guest-write' });
    const err = await cbw.write(C, Buffer.alloc(4)).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CbwWriteError);
    expect((err as CbwWriteError).errno).toBe(5);
    const r = await job.done;
    expect(r.status).toBe('error');
    expect(r.error).toMatch(/upload failed/);
  });

  it('break-snapshot: a sink error fails the job and the write proceeds', async () => {
    const sink = new CaptureSink();
    sink.failWith = new Error('upload failed');
    const { cbw, job, mem } = await setup(image(4), { sink, onCbwError: 'break-snapshot' });
    await cbw.write(C, Buffer.alloc(4, 3));
    expect(mem.data[C]).toBe(3);
    expect((await job.done).status).toBe('error');
  });
});

describe('fleecing', () => {
  it('guest writes complete while the sink is blocked; the backup still equals the snapshot', async () => {
    const init = image(12);
    const sink = new CaptureSink();
    sink.block();
    const { cbw, job, mem } = await setup(init, { sink, fleecing: { dir: tmp, maxBytes: 8 * C } });
    job.start();
    for (const c of [3, 5, 7, 10]) {
      expect(await settledWithin(cbw.write(c * C + 1, Buffer.alloc(C, c)), 5000)).toBe('resolved');
    }
    expect(mem.data[3 * C + 1]).toBe(3);
    const during = job.progress().fleecing!;
    expect(during.usedSlots).toBeGreaterThan(0);
    expect((await readdir(tmp)).length).toBe(1);
    sink.release();
    const r = await job.done;
    expect(r.status).toBe('done');
    expectBackupEquals(sink, init);
    expect(r.fleecing!.peakUsedBytes).toBeLessThanOrEqual(8 * C);
    expect(r.fleecing!.usedSlots).toBe(0);
    expect(await readdir(tmp)).toEqual([]); // scratch file removed
  });

  it('scratch slots are reused after the cluster reached the sink (drain is not rate-limited)', async () => {
    const init = image(16);
    const sink = new CaptureSink();
    // 64 KiB/s: the background pass copies at most ~1 cluster during this test,
    // so nearly every cluster goes through CBW → scratch → drain.
    const { cbw, job } = await setup(init, { sink, fleecing: { dir: tmp, maxBytes: 2 * C }, speedBytesPerSec: C });
    job.start();
    for (let c = 15; c >= 0; c--) {
      await cbw.write(c * C, Buffer.alloc(10, 1));
      // Wait until the drainer has handed the cluster to the sink and freed its slot.
      for (let i = 0; i < 2000 && job.progress().fleecing!.usedSlots > 0; i++) await new Promise((res) => setTimeout(res, 1));
    }
    const r = await job.done;
    expect(r.status, r.error ?? '').toBe('done');
    expect(r.fleecing!.stored).toBeGreaterThanOrEqual(14);
    expect(r.fleecing!.highWaterBytes).toBeLessThanOrEqual(2 * C);
    expect(r.fleecing!.peakUsedBytes).toBeLessThanOrEqual(2 * C);
    expectBackupEquals(sink, init);
  });

  it('a full store is a CBW error: break-guest-write → EIO, snapshot intact', async () => {
    const init = image(16);
    const sink = new CaptureSink();
    sink.block();
    const { cbw, job, mem } = await setup(init, { sink, fleecing: { dir: tmp, maxBytes: 2 * C }, onCbwError: 'break-guest-write' });
    job.start(); // the background pass blocks on cluster 0 in the sink
    await cbw.write(10 * C, Buffer.alloc(10, 1));
    await cbw.write(11 * C, Buffer.alloc(10, 1));
    const err = await cbw.write(12 * C, Buffer.alloc(10, 1)).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(FleecingFullError);
    expect((err as FleecingFullError).errno).toBe(5);
    expect(mem.data[12 * C]).toBe(init[12 * C]);
    expect(job.isEnded).toBe(false);
    expect(job.progress().fleecing!.usedBytes).toBe(2 * C);
    sink.release();
    const r = await job.done;
    expect(r.status).toBe('done');
    expectBackupEquals(sink, init);
  });

  it('a full store is a CBW error: break-snapshot → the job fails, the write proceeds', async () => {
    const init = image(16);
    const sink = new CaptureSink();
    sink.block();
    const { cbw, job, mem } = await setup(init, { sink, fleecing: { dir: tmp, maxBytes: C }, onCbwError: 'break-snapshot' });
    job.start();
    await cbw.write(10 * C, Buffer.alloc(10, 1));
    await cbw.write(12 * C, Buffer.alloc(10, 2));
    expect(mem.data[12 * C]).toBe(2);
    const r = await job.done;
    expect(r.status).toBe('error');
    expect(r.error).toMatch(/fleecing store full/);
    sink.release();
  });

  it('rejects a maxBytes below one cluster', async () => {
    await expect(BackupJob.create({ devices: [{ id: 0, name: 'a', device: new JitterMemDevice(image(1), null) }], sink: new CaptureSink(), fleecing: { dir: tmp, maxBytes: 100 } })).rejects.toThrow(/at least/);
  });
});

describe('speed', () => {
  it('limits the background pass but never a CBW copy (upper bounds only: no timing flakiness)', async () => {
    const init = image(16);
    const { cbw, job, sink } = await setup(init, { speedBytesPerSec: C }); // 1 cluster per second
    job.start();
    await new Promise((res) => setTimeout(res, 200));
    expect(job.progress().transferred).toBeLessThanOrEqual(C); // the initial burst only
    // A guest write is not held back by the rate limit: its CBW copies at once.
    await cbw.write(8 * C, Buffer.alloc(3 * C, 1));
    expect(sink.get(0, 8)).toBeDefined();
    expect(sink.get(0, 10)).toBeDefined();
    job.cancel();
    expect((await job.done).status).toBe('cancelled');
  });
});

describe('TokenBucket', () => {
  it('computes delays from a fake clock and lets charges go into debt', () => {
    let now = 0;
    const b = new TokenBucket(1000, 100, () => now); // 1000 B/s, capacity max(100, 100)
    expect(b.delayFor(100)).toBe(0);
    b.charge(100);
    expect(b.delayFor(100)).toBeCloseTo(100); // 100 bytes at 1000 B/s
    b.charge(500); // a CBW copy: debt of 500
    expect(b.delayFor(100)).toBeCloseTo(600);
    now = 600;
    expect(b.delayFor(100)).toBe(0);
  });
});
