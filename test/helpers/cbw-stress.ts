/**
 * One seeded run of the CBW consistency stress: random devices (odd sizes),
 * a slow capturing sink, several concurrent "guest" clients issuing random
 * overlapping writes / zeroes / trims through CbwDevice while the job runs.
 * Returns everything a test needs to assert consistency.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Bitmap } from '../../src/cbw/bitmap.js';
import { BackupJob, type BackupResult, type CbwErrorPolicy } from '../../src/cbw/backup-job.js';
import { CbwDevice, atQuiescentPoint } from '../../src/cbw/cbw-device.js';
import { CbwWriteError } from '../../src/cbw/errors.js';
import type { ClusterSink } from '../../src/format/sink.js';
import { CLUSTER_SIZE } from '../../src/format/constants.js';
import { mulberry32, type Rng } from './prng.js';
import { JitterMemDevice, jitter } from './cbw-memdev.js';
import { CaptureSink } from './cbw-sink.js';

export interface StressOptions {
  seed: number;
  fleecing: boolean;
  incremental: boolean;
  /** Builds the sink once the device sizes are known (e.g. a real ArchiveWriter); default a slow CaptureSink. */
  makeSink?: (devices: { id: number; size: number }[]) => Promise<ClusterSink>;
  maxDevices?: number;
  /** Low-entropy images (so a real compressor actually compresses). */
  compressible?: boolean;
}

export interface StressDevice {
  id: number;
  initial: Buffer;
  mem: JitterMemDevice;
  copyBitmap: Bitmap | null;
}

export interface StressRun {
  seed: number;
  result: BackupResult;
  devices: StressDevice[];
  sink: ClusterSink;
  captured: CaptureSink | null;
  opsApplied: number;
  opsRejected: number;
  unexpectedErrors: unknown[];
  policy: CbwErrorPolicy;
  fleecingMax: number | null;
}

/** A random initial image: random data with some all-zero clusters and an odd size. */
function randomImage(rng: Rng, compressible: boolean): Buffer {
  const clusters = rng.int(16, 56);
  const size = clusters * CLUSTER_SIZE - rng.int(1, CLUSTER_SIZE - 1); // never a cluster multiple
  const img = rng.bytes(size);
  if (compressible) for (let i = 0; i < size; i++) img[i]! &= 0x03;
  for (let c = 0; c < clusters; c++) {
    if (rng.chance(0.15)) img.fill(0, c * CLUSTER_SIZE, Math.min(size, (c + 1) * CLUSTER_SIZE));
  }
  return img;
}

async function client(rng: Rng, devs: { cbw: CbwDevice; size: number }[], job: BackupJob, run: StressRun): Promise<void> {
  // Keep writing while the job runs (plus a minimum so short jobs still see writes).
  for (let i = 0; i < 400 && (i < 12 || !job.isEnded); i++) {
    const d = rng.pick(devs);
    // Lengths from 1 byte to ~3 clusters, often unaligned, sometimes spanning clusters.
    const length = rng.chance(0.3) ? rng.int(1, 4096) : rng.int(1, 3 * CLUSTER_SIZE);
    const len = Math.min(length, d.size);
    const offset = rng.chance(0.3) ? rng.int(0, Math.floor((d.size - len) / 4096)) * 4096 : rng.int(0, d.size - len);
    const r = rng();
    try {
      if (r < 0.6) await d.cbw.write(offset, rng.bytes(len));
      else if (r < 0.8) await d.cbw.writeZeroes(offset, len);
      else await d.cbw.trim(offset, len);
      run.opsApplied++;
    } catch (err) {
      if (err instanceof CbwWriteError && err.errno === 5) run.opsRejected++;
      else run.unexpectedErrors.push(err);
    }
    await jitter(rng, 0.2);
  }
}

export async function runStress(opts: StressOptions): Promise<StressRun> {
  const rng = mulberry32(opts.seed);
  const nDev = rng.int(1, opts.maxDevices ?? 2);
  const devices: StressDevice[] = [];
  for (let id = 0; id < nDev; id++) {
    const initial = randomImage(rng, opts.compressible ?? false);
    const clusters = Math.ceil(initial.length / CLUSTER_SIZE);
    let copyBitmap: Bitmap | null = null;
    if (opts.incremental) {
      copyBitmap = new Bitmap(clusters);
      const p = rng.pick([0.1, 0.3, 0.6]);
      for (let c = 0; c < clusters; c++) if (rng.chance(p)) copyBitmap.set(c);
      if (rng.chance(0.5)) copyBitmap.set(clusters - 1); // exercise the partial last cluster
    }
    devices.push({ id, initial, mem: new JitterMemDevice(initial, mulberry32(opts.seed * 31 + id)), copyBitmap });
  }
  const captured = opts.makeSink ? null : new CaptureSink({ rng: mulberry32(opts.seed ^ 0x5eed), maxDelayMs: 2 });
  const sink = opts.makeSink ? await opts.makeSink(devices.map((d) => ({ id: d.id, size: d.initial.length }))) : captured!;
  // Fleecing: half the seeds get a tiny store with break-guest-write, so the
  // store fills up, guest writes get EIO and slots are reused under pressure.
  const tiny = opts.fleecing && rng.chance(0.5);
  const policy: CbwErrorPolicy = tiny ? 'break-guest-write' : 'break-snapshot';
  const fleecingMax = opts.fleecing ? (tiny ? rng.int(2, 6) * CLUSTER_SIZE : 200 * CLUSTER_SIZE) : null;
  const tmp = opts.fleecing ? await mkdtemp(join(tmpdir(), 'cbw-stress-')) : null;
  try {
    const job = await BackupJob.create({
      devices: devices.map((d) => ({ id: d.id, name: `d${d.id}`, device: d.mem, copyBitmap: d.copyBitmap ?? undefined })),
      sink,
      cbwTimeoutMs: 30_000,
      onCbwError: policy,
      fleecing: tmp ? { dir: tmp, maxBytes: fleecingMax! } : undefined,
      readBatchClusters: rng.int(1, 8),
    });
    const cbws = devices.map((d) => new CbwDevice(d.mem, { deviceId: d.id }));
    await atQuiescentPoint(cbws, () => cbws.forEach((c) => c.attach(job)));
    const run: StressRun = {
      seed: opts.seed,
      result: undefined as unknown as BackupResult,
      devices,
      sink,
      captured,
      opsApplied: 0,
      opsRejected: 0,
      unexpectedErrors: [],
      policy,
      fleecingMax,
    };
    const devsForClients = cbws.map((c) => ({ cbw: c, size: c.size }));
    const nClients = rng.int(2, 5);
    const clients = Array.from({ length: nClients }, (_, k) => client(mulberry32(opts.seed * 977 + k), devsForClients, job, run));
    // Start the background pass a little after the first writes, sometimes.
    if (rng.chance(0.5)) await jitter(rng, 0.5);
    job.start();
    run.result = await job.done;
    await Promise.all(clients);
    return run;
  } finally {
    if (tmp) await rm(tmp, { recursive: true, force: true });
  }
}
