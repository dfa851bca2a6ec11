/**
 * CBW benchmark (npm run bench:cbw): guest 4 KiB random-write latency and
 * backup throughput, in three scenarios from the same run:
 *   idle              no backup running (the baseline)
 *   backup            backup to a slow sink (~20 MB/s), no fleecing:
 *                     a write to an uncopied cluster waits for the sink
 *   backup+fleecing   same backup with a local fleecing store: a write waits
 *                     only for local I/O (read 64 KiB + write 64 KiB scratch)
 * Each scenario is measured at the engine level (CbwDevice over a FileDevice)
 * and, when the NBD server exists, through NBD with a minimal client (one
 * connection, simple replies, queue depth QD).
 *
 * Env: CBW_BENCH_MB (disk size, default 256), CBW_BENCH_QD (default 2),
 *      CBW_BENCH_IOPS (guest write rate, default 200), CBW_BENCH_SINK_MBPS (20),
 *      CBW_BENCH_IDLE_S (idle window, default 5), CBW_BENCH_DIR (temp dir parent),
 *      CBW_BENCH_BATCH (background read batch in clusters, default 16),
 *      CBW_BENCH_NBD=0 to skip the NBD variant.
 * Goal: fleecing p99 ≤ 1.5 × idle p99.
 */
import { mkdtemp, rm, open } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { BackupJob, CbwDevice, atQuiescentPoint, type BackupResult } from '../src/cbw/index.js';
import type { BlockDevice } from '../src/device/types.js';
import { FileDevice } from '../src/device/file-device.js';
import type { ClusterSink } from '../src/format/sink.js';
import { CLUSTER_SIZE } from '../src/format/constants.js';
import { MiniNbdClient } from '../test/helpers/cbw-nbd-client.js';

export { MiniNbdClient };

// ───────────────────────── reusable pieces (exported) ─────────────────────────

/** A ClusterSink that accepts data at most `bytesPerSec` (sleeps to hold the rate), discarding it. */
export class ThrottledSink implements ClusterSink {
  private next = 0;
  bytes = 0;
  constructor(private readonly bytesPerSec: number) {}
  async writeCluster(_deviceId: number, _cluster: number, data: Buffer): Promise<void> {
    const now = performance.now();
    this.next = Math.max(this.next, now) + (data.length / this.bytesPerSec) * 1000;
    this.bytes += data.length;
    const wait = this.next - now;
    if (wait >= 1) await new Promise((res) => setTimeout(res, wait));
  }
}

export interface LatencyStats {
  /** Raw samples (ms), for pooling rounds. */
  samples: number[];
  count: number;
  p50: number;
  p99: number;
  max: number;
  mean: number;
  /** Writes that failed (e.g. EIO under break-guest-write). */
  errors: number;
}

/** Percentiles in milliseconds. */
export function latencyStats(samples: number[], errors = 0): LatencyStats {
  const s = [...samples].sort((a, b) => a - b);
  const at = (q: number): number => (s.length ? s[Math.min(s.length - 1, Math.floor(q * s.length))]! : NaN);
  return { samples: s, count: s.length, p50: at(0.5), p99: at(0.99), max: s.length ? s[s.length - 1]! : NaN, mean: s.reduce((a, b) => a + b, 0) / (s.length || 1), errors };
}

/** Anything that accepts a guest write. */
export type WriteFn = (offset: number, data: Buffer) => Promise<void>;

/**
 * Issues paced 4 KiB random writes (like a guest: `iops` in total, `qd`
 * workers) until `until()` is true or `maxMs` elapsed; returns latencies.
 */
export async function runWriteLoad(write: WriteFn, diskSize: number, opts: { qd: number; iops: number; until: () => boolean; maxMs: number; seed?: number }): Promise<LatencyStats> {
  const lat: number[] = [];
  let errors = 0;
  let seed = opts.seed ?? 12345;
  const rand = (): number => {
    seed ^= seed << 13;
    seed ^= seed >>> 17;
    seed ^= seed << 5;
    return (seed >>> 0) / 4294967296;
  };
  const blocks = Math.floor(diskSize / 4096);
  const data = Buffer.alloc(4096, 0x5a);
  const t0 = performance.now();
  const interval = (1000 / opts.iops) * opts.qd; // per worker
  const worker = async (k: number): Promise<void> => {
    let next = t0 + (interval / opts.qd) * k;
    while (!opts.until() && performance.now() - t0 < opts.maxMs) {
      const now = performance.now();
      if (next > now) await new Promise((res) => setTimeout(res, next - now));
      next += interval;
      const off = Math.floor(rand() * blocks) * 4096;
      const s = performance.now();
      try {
        await write(off, data);
        lat.push(performance.now() - s);
      } catch {
        errors++;
      }
    }
  };
  await Promise.all(Array.from({ length: opts.qd }, (_, k) => worker(k)));
  return latencyStats(lat, errors);
}

// ─────────────────────────────────── the run ───────────────────────────────────

interface ScenarioResult {
  name: string;
  via: 'engine' | 'nbd';
  latency: LatencyStats;
  backup: { seconds: number; mbps: number; status: string; cbwClusters: number; scratchPeakMiB: number | null } | null;
}

const env = (k: string, d: number): number => (process.env[k] ? Number(process.env[k]) : d);

async function makeDisk(path: string, size: number): Promise<void> {
  // Non-zero data (so nothing is skipped as zero), written in 4 MiB chunks.
  const fh = await open(path, 'w');
  const chunk = Buffer.alloc(4 * 1024 * 1024);
  for (let i = 0; i < chunk.length; i += 4) chunk.writeUInt32LE((i * 2654435761) >>> 0, i);
  for (let off = 0; off < size; off += chunk.length) await fh.write(chunk, 0, Math.min(chunk.length, size - off), off);
  await fh.sync();
  await fh.close();
}

async function scenario(
  name: string,
  via: 'engine' | 'nbd',
  raw: BlockDevice,
  cbw: CbwDevice,
  write: WriteFn,
  cfg: { qd: number; iops: number; idleMs: number; sinkBps: number; dir: string; backup: null | { fleecing: boolean } },
): Promise<ScenarioResult> {
  if (!cfg.backup) {
    const latency = await runWriteLoad(write, raw.size, { qd: cfg.qd, iops: cfg.iops, until: () => false, maxMs: cfg.idleMs });
    return { name, via, latency, backup: null };
  }
  const sink = new ThrottledSink(cfg.sinkBps);
  const job = await BackupJob.create({
    devices: [{ id: 0, name: 'disk', device: raw }],
    sink,
    cbwTimeoutMs: 60_000,
    onCbwError: 'break-snapshot',
    fleecing: cfg.backup.fleecing ? { dir: cfg.dir, maxBytes: raw.size } : undefined,
    ...(process.env.CBW_BENCH_BATCH ? { readBatchClusters: Number(process.env.CBW_BENCH_BATCH) } : {}),
  });
  await atQuiescentPoint([cbw], () => cbw.attach(job));
  const t0 = performance.now();
  job.start();
  let ended = false;
  const done = job.done.then((r: BackupResult) => {
    ended = true;
    return r;
  });
  const latency = await runWriteLoad(write, raw.size, { qd: cfg.qd, iops: cfg.iops, until: () => ended, maxMs: 10 * 60_000 });
  const r = await done;
  const seconds = (performance.now() - t0) / 1000;
  return {
    name,
    via,
    latency,
    backup: {
      seconds,
      mbps: r.transferred / 1e6 / seconds,
      status: r.status,
      cbwClusters: r.cbwClusters,
      scratchPeakMiB: r.fleecing ? r.fleecing.peakUsedBytes / 1048576 : null,
    },
  };
}

/** Pools the rounds of one scenario: latency over all samples, backup figures summed. */
function pool(name: string, via: 'engine' | 'nbd', rs: ScenarioResult[]): ScenarioResult {
  const samples = rs.flatMap((r) => r.latency.samples);
  const errors = rs.reduce((a, r) => a + r.latency.errors, 0);
  const bs = rs.map((r) => r.backup).filter((b): b is NonNullable<ScenarioResult['backup']> => b !== null);
  const backup = bs.length
    ? {
        seconds: bs.reduce((a, b) => a + b.seconds, 0) / bs.length,
        mbps: bs.reduce((a, b) => a + b.mbps * b.seconds, 0) / bs.reduce((a, b) => a + b.seconds, 0),
        status: [...new Set(bs.map((b) => b.status))].join('/'),
        cbwClusters: Math.round(bs.reduce((a, b) => a + b.cbwClusters, 0) / bs.length),
        scratchPeakMiB: bs[0]!.scratchPeakMiB === null ? null : Math.max(...bs.map((b) => b.scratchPeakMiB ?? 0)),
      }
    : null;
  return { name, via, latency: latencyStats(samples, errors), backup };
}

function fmt(r: ScenarioResult, idle: ScenarioResult | undefined): string {
  const l = r.latency;
  const ratio = idle ? (l.p99 / idle.latency.p99).toFixed(2) + '×' : '';
  const b = r.backup ? `${r.backup.mbps.toFixed(1)} MB/s in ${r.backup.seconds.toFixed(1)} s (${r.backup.status}, ${r.backup.cbwClusters} CBW clusters${r.backup.scratchPeakMiB !== null ? `, scratch peak ${r.backup.scratchPeakMiB.toFixed(1)} MiB` : ''})` : '-';
  return `| ${r.via} | ${r.name} | ${l.count} | ${l.p50.toFixed(3)} | ${l.p99.toFixed(3)} | ${ratio} | ${l.max.toFixed(1)} | ${l.errors} | ${b} |`;
}

async function main(): Promise<void> {
  const mb = env('CBW_BENCH_MB', 128);
  const qd = env('CBW_BENCH_QD', 2);
  const iops = env('CBW_BENCH_IOPS', 200);
  const sinkBps = env('CBW_BENCH_SINK_MBPS', 20) * 1e6;
  const idleMs = env('CBW_BENCH_IDLE_S', 4) * 1000;
  const rounds = env('CBW_BENCH_ROUNDS', 3);
  const dir = await mkdtemp(join(process.env.CBW_BENCH_DIR ?? tmpdir(), 'cbw-bench-'));
  const results: ScenarioResult[] = [];
  try {
    const path = join(dir, 'disk.raw');
    const size = mb * 1024 * 1024 - 4096 * 3; // not a cluster multiple, on purpose
    process.stderr.write(`preparing ${mb} MiB disk in ${dir}…\n`);
    await makeDisk(path, size);
    const raw = await FileDevice.open(path);
    const cbw = new CbwDevice(raw, { deviceId: 0 });
    const cfg = { qd, iops, idleMs, sinkBps, dir };
    const plan: Array<[string, null | { fleecing: boolean }]> = [
      ['idle', null],
      ['backup, slow sink', { fleecing: false }],
      ['backup, slow sink + fleecing', { fleecing: true }],
    ];
    // Scenarios are interleaved over several rounds and the samples pooled, so
    // background load on a shared machine hits all scenarios alike.
    const runAll = async (via: 'engine' | 'nbd', write: WriteFn): Promise<void> => {
      const perScenario = new Map<string, ScenarioResult[]>();
      for (let round = 0; round < rounds; round++) {
        for (const [name, backup] of plan) {
          const r = await scenario(name, via, raw, cbw, write, { ...cfg, backup });
          perScenario.set(name, [...(perScenario.get(name) ?? []), r]);
          process.stderr.write(`  ${via} round ${round + 1}/${rounds}: ${name}: p50 ${r.latency.p50.toFixed(3)} p99 ${r.latency.p99.toFixed(3)} ms\n`);
        }
      }
      for (const [name, rs] of perScenario) results.push(pool(name, via, rs));
    };
    process.stderr.write(`engine level: QD ${qd}, ${iops} writes/s of 4 KiB, sink ${sinkBps / 1e6} MB/s, clusters ${Math.ceil(size / CLUSTER_SIZE)}, ${rounds} rounds\n`);
    await runAll('engine', (o, d) => cbw.write(o, d));

    if (process.env.CBW_BENCH_NBD !== '0') {
      let NbdServer: typeof import('../src/nbd/server.js').NbdServer | null = null;
      try {
        ({ NbdServer } = await import('../src/nbd/server.js'));
      } catch (err) {
        process.stderr.write(`NBD server not available, skipping NBD variant (${(err as Error).message})\n`);
      }
      if (NbdServer) {
        const server = new NbdServer({ exports: new Map([['disk', { device: cbw }]]), tcp: { host: '127.0.0.1', port: 0 } });
        const addr = await server.listen();
        const client = await MiniNbdClient.connect('127.0.0.1', addr.tcp!.port, 'disk');
        try {
          process.stderr.write(`NBD level (127.0.0.1:${addr.tcp!.port})\n`);
          await runAll('nbd', (o, d) => client.write(o, d));
        } finally {
          await client.close().catch(() => undefined);
          await server.close();
        }
      }
    }
    await raw.close();
  } finally {
    await rm(dir, { recursive: true, force: true });
  }

  const lines = [
    `CBW bench: ${mb} MiB disk, 4 KiB random writes at ${iops}/s, QD ${qd}, sink ${sinkBps / 1e6} MB/s, ${rounds} interleaved rounds pooled, node ${process.version}`,
    '',
    '| via | scenario | writes | p50 ms | p99 ms | p99 vs idle | max ms | errors | backup |',
    '|---|---|---|---|---|---|---|---|---|',
  ];
  for (const r of results) lines.push(fmt(r, results.find((x) => x.via === r.via && x.backup === null)));
  const goal = results
    .filter((r) => r.name.includes('fleecing'))
    .map((r) => {
      const idle = results.find((x) => x.via === r.via && x.backup === null)!;
      const ratio = r.latency.p99 / idle.latency.p99;
      return `${r.via}: fleecing p99 = ${ratio.toFixed(2)} × idle p99 → goal (≤ 1.5×) ${ratio <= 1.5 ? 'MET' : 'NOT MET'}`;
    });
  lines.push('', ...goal);
  process.stdout.write(lines.join('\n') + '\n');
  if (process.argv.includes('--json')) {
    process.stdout.write(JSON.stringify(results.map((r) => ({ ...r, latency: { ...r.latency, samples: undefined } })), null, 2) + '\n');
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((err) => {
    process.stderr.write(`bench failed: ${(err as Error).stack ?? String(err)}\n`);
    process.exit(1);
  });
}
