/**
 * Memory of copy-before-write over a long backup: every slow-path
 * beforeWrite (a guest write that hits a not-yet-copied cluster) must leave
 * nothing behind once it returns. Measured as heap growth after a forced GC
 * over many such writes; memory has to be bounded by configuration, never
 * by how many writes a backup sees.
 */
import { describe, expect, it } from 'vitest';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { BackupJob } from '../../../src/cbw/backup-job.js';
import { CLUSTER_SIZE } from '../../../src/format/constants.js';
import type { BlockDevice } from '../../../src/device/types.js';

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

/** A large device that stores nothing: every read is zeroes (a fresh buffer, as a real read would be). */
function virtualDevice(size: number): BlockDevice {
  return {
    size,
    readOnly: false,
    read: async (_o, len) => Buffer.alloc(len),
    write: async () => undefined,
    writeZeroes: async () => undefined,
    trim: async () => undefined,
    flush: async () => undefined,
    close: async () => undefined,
  };
}

function heapAfterGc(): number {
  gc();
  gc();
  return process.memoryUsage().heapUsed;
}

describe('copy-before-write memory', () => {
  it('does not grow with the number of slow-path writes (60,000 CBW captures)', async () => {
    const WARM = 10_000;
    const N = 50_000;
    const device = virtualDevice((WARM + N + 16) * CLUSTER_SIZE);
    const job = new BackupJob({
      devices: [{ id: 0, name: 'v', device }],
      sink: { writeCluster: async () => undefined },
      // The background pass barely moves: the clusters stay NEED for the guest writes to capture.
      speedBytesPerSec: 1,
    });
    job.start();
    const writes = async (from: number, to: number): Promise<void> => {
      for (let c = from; c < to; c += 16) {
        const batch = [];
        for (let i = c; i < Math.min(to, c + 16); i++) batch.push(job.beforeWrite(0, i * CLUSTER_SIZE + 512, 4096));
        await Promise.all(batch);
      }
    };
    await writes(0, WARM);
    const before = heapAfterGc();
    await writes(WARM, WARM + N);
    const after = heapAfterGc();
    expect(job.progress().cbwClusters).toBeGreaterThanOrEqual(WARM + N - 16);
    expect(job.progress().status).toBe('active');
    const perWrite = (after - before) / N;
    // Before the fix each write left ~700 B reachable from the job; allow 40 B of noise.
    expect(perWrite, `heap growth ${perWrite.toFixed(1)} B per write`).toBeLessThan(40);
    console.log(`cbw-memory: heap growth ${perWrite.toFixed(1)} B per slow-path write over ${N} writes`);
    job.cancel();
    await job.done;
  }, 120_000);
});
