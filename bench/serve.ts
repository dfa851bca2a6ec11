/**
 * bench:serve — instant restore (`cowstream serve`, the real CLI) against ONE
 * local s3rver in one run, reached two ways side by side: directly on
 * loopback, and through the shaping proxy (bench/shaping-proxy.ts: 20 ms each
 * way, 100 MB/s per connection; BENCH_LATENCY_MS, BENCH_MBPS).
 *
 *   npm run bench:serve                         (1 GiB image, 3 pairs)
 *   BENCH_QUICK=1 npm run bench:serve           (smoke run: 128 MiB image, 1 pair)
 *   BENCH_PAIRS=5 BENCH_READS=400 ...           (pairs; random reads per latency run)
 *   BENCH_IMAGE_MIB=256 BENCH_SPARSE_GIB=1024 BENCH_PARALLEL=4 BENCH_JSON=path ...
 *   BENCH_READ_AHEAD=32M ...                    (serve --read-ahead; default serve's own)
 *   BENCH_ONLY=seq ...                          (parts: latency,seq,sparse; default all)
 *
 * Measured, per pair, on loopback and then through the proxy:
 *   first byte   from spawning `cowstream serve REF --json` to the first
 *                4 KiB READ answered (our NBD client, src/nbd/client.ts)
 *   random 4 KiB READs of allocated data, our NBD client on one connection:
 *                QD1 (one at a time) and QD16 (16 in flight); cold = a fresh
 *                serve process (each QD on its own), one read per 4 MiB
 *                region of data; warm = reads over offsets just read cold
 *                whose extents fit the memory cache. p50/p99 per run, every
 *                read checked against the image. Also: CPU seconds, GETs.
 *   sequential   `nbdcopy` of the whole export to a file, from spawning serve
 *                (its read-ahead) to nbdcopy's exit, paired with a full
 *                `cowstream restore --parallel N` of the same archive to a
 *                file through the same endpoint; both outputs compared with
 *                the image. Goal: serve ≥ 0.8× restore.
 *   1 TiB sparse a full archive of a BENCH_SPARSE_GIB GiB disk holding 48 MiB
 *                of data (16 MiB at the start, middle and end): serve start
 *                to the first READ answered (goal < 1 s) and the serve
 *                process's peak RSS (VmHWM).
 * The markdown table goes to stdout and next to the JSON (BENCH_JSON,
 * default bench/work/serve-results.json).
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { availableParallelism, cpus, loadavg, tmpdir, totalmem } from 'node:os';
import { join } from 'node:path';
import { ensureBenchImage, benchRoot as root, benchWork as work } from './image.js';
import { startEndpointProcess, stop } from './processes.js';
import { median, medianBy } from './stats.js';
import { NbdClient } from '../src/nbd/client.js';
import { DEFAULT_READ_AHEAD_BYTES } from '../src/serve/archive-exports.js';

const MiB = 1024 * 1024;
const READ = 4096;
const quick = process.env.BENCH_QUICK === '1';
const num = (name: string, fallback: number): number => {
  const v = process.env[name];
  const n = v === undefined || v === '' ? fallback : Number(v);
  if (!Number.isFinite(n) || n < 0) throw new Error(`${name} must be a number ≥ 0, got ${v}`);
  return n;
};
const imageMiB = num('BENCH_IMAGE_MIB', quick ? 128 : 1024);
const pairs = Math.max(1, num('BENCH_PAIRS', quick ? 1 : 3));
const reads = Math.max(2, num('BENCH_READS', quick ? 40 : 160));
const sparseGiB = num('BENCH_SPARSE_GIB', 1024);
const restoreParallel = num('BENCH_PARALLEL', 4);
const latencyMs = num('BENCH_LATENCY_MS', 20);
const linkMBps = num('BENCH_MBPS', 100);
const jsonPath = process.env.BENCH_JSON ?? join(work, 'serve-results.json');
/** Passed to every serve as --read-ahead (default: serve's own). */
const readAhead = process.env.BENCH_READ_AHEAD;
/** Which parts to run: latency, seq, sparse (comma-separated; default all). */
const only = new Set((process.env.BENCH_ONLY ?? 'latency,seq,sparse').split(',').map((x) => x.trim()));
const CLI = join(root, 'bin', 'cowstream.js');
const BUCKET = 'bench';

// ---------------------------------------------------------------- archives

/** Writes a full archive of one device through the multipart sink; `fill` supplies its clusters. */
async function writeArchive(endpoint: string, key: string, size: number, expectedBytes: number, fill: (w: import('../src/format/writer.js').ArchiveWriter) => Promise<void>, creds: { accessKeyId: string; secretAccessKey: string }): Promise<void> {
  const { ZstdPool } = await import('../src/codec/zstd-pool.js');
  const { ArchiveWriter } = await import('../src/format/writer.js');
  const { S3ArchiveSink } = await import('../src/store/s3-sink.js');
  const { createS3Client } = await import('../src/store/s3-client.js');
  const client = createS3Client({ bucket: BUCKET, prefix: '', endpoint, region: 'us-east-1', credentials: creds });
  const pool = new ZstdPool({ level: 1 });
  try {
    const uuid = key.replace(/^.*\//, '').replace(/\.cwa$/, '');
    const sink = new S3ArchiveSink({ client, bucket: BUCKET, key, expectedBytes, queueSize: 4, metadata: { uuid, hostId: 'bench', deviceNames: ['disk0'] } });
    const w = await ArchiveWriter.create({ hostId: 'bench', uuid, devices: [{ id: 0, name: 'disk0', size }], compressor: pool, output: sink });
    await fill(w);
    await w.finish();
  } finally {
    await pool.close();
    client.destroy();
  }
}

/** The bench image, cluster by cluster (the writer turns zero clusters into zero runs). */
async function fillFromImage(w: import('../src/format/writer.js').ArchiveWriter, image: string): Promise<void> {
  const { CLUSTER_SIZE } = await import('../src/format/constants.js');
  const size = statSync(image).size;
  const fh = await open(image, 'r');
  const buf = Buffer.alloc(4 * MiB);
  try {
    for (let off = 0; off < size; off += buf.length) {
      const { bytesRead } = await fh.read(buf, 0, Math.min(buf.length, size - off), off);
      for (let p = 0; p < bytesRead; p += CLUSTER_SIZE) await w.writeCluster(0, (off + p) / CLUSTER_SIZE, buf.subarray(p, Math.min(bytesRead, p + CLUSTER_SIZE)));
    }
  } finally {
    await fh.close();
  }
}

/** Where the sparse disk holds data: 16 MiB at its start, middle and end (taken from the image). */
function sparseRegions(size: number): number[] {
  const r = 16 * MiB;
  return [0, Math.floor(size / 2 / r) * r, size - r];
}

/** A sparse disk as a backup from block status would see it: data clusters, the rest one zero run per gap. */
async function fillSparse(w: import('../src/format/writer.js').ArchiveWriter, size: number, data: Buffer): Promise<void> {
  const { CLUSTER_SIZE } = await import('../src/format/constants.js');
  let next = 0;
  for (const start of sparseRegions(size)) {
    const c0 = start / CLUSTER_SIZE;
    if (c0 > next) await w.writeZeroes(0, next, c0 - next);
    for (let p = 0; p < data.length; p += CLUSTER_SIZE) await w.writeCluster(0, c0 + p / CLUSTER_SIZE, data.subarray(p, p + CLUSTER_SIZE));
    next = c0 + data.length / CLUSTER_SIZE;
  }
  const total = Math.ceil(size / CLUSTER_SIZE);
  if (total > next) await w.writeZeroes(0, next, total - next);
}

// ---------------------------------------------------------------- serve process

interface Served {
  proc: ChildProcess;
  socket: string;
  exportName: string;
  /** ms from spawn to its --json document. */
  readyMs: number;
  t0: number;
  stderr(): string;
}

function serveEnv(creds: { accessKeyId: string; secretAccessKey: string }, runDir: string): NodeJS.ProcessEnv {
  return { ...process.env, AWS_ACCESS_KEY_ID: creds.accessKeyId, AWS_SECRET_ACCESS_KEY: creds.secretAccessKey, AWS_REGION: 'us-east-1', AWS_PROFILE: '', COWSTREAM_S3_BUCKET: '', XDG_RUNTIME_DIR: runDir };
}

function storeArgs(endpoint: string): string[] {
  return ['--endpoint', endpoint, '--bucket', BUCKET, '--region', 'us-east-1'];
}

/** Spawns `cowstream serve s3://bench/KEY --json` and waits for its document. */
async function startServe(endpoint: string, key: string, env: NodeJS.ProcessEnv, extra: string[] = []): Promise<Served> {
  const t0 = performance.now();
  const ra = readAhead !== undefined ? ['--read-ahead', readAhead] : [];
  const proc = spawn(process.execPath, [CLI, 'serve', `s3://${BUCKET}/${key}`, ...storeArgs(endpoint), ...ra, ...extra, '--json'], { cwd: root, env, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  proc.stderr!.on('data', (b: Buffer) => (stderr += b.toString()));
  return new Promise<Served>((resolve, reject) => {
    const onData = (b: Buffer): void => {
      stdout += b.toString();
      let doc: { socket: string; exports: { name: string }[] };
      try {
        doc = JSON.parse(stdout) as typeof doc;
      } catch {
        return;
      }
      proc.stdout!.off('data', onData);
      proc.off('exit', onExit);
      resolve({ proc, socket: doc.socket, exportName: doc.exports[0]!.name, readyMs: performance.now() - t0, t0, stderr: () => stderr });
    };
    const onExit = (code: number | null): void => reject(new Error(`serve exited (${code}) before serving: ${stdout}${stderr}`));
    proc.stdout!.on('data', onData);
    proc.once('exit', onExit);
  });
}

/** A process and its descendants (bin/cowstream.js may hand over to a child Node). */
function processTree(pid: number): number[] {
  const out: number[] = [];
  const walk = (p: number): void => {
    out.push(p);
    try {
      for (const t of readdirSync(`/proc/${p}/task`)) {
        for (const c of readFileSync(`/proc/${p}/task/${t}/children`, 'utf8').trim().split(/\s+/).filter(Boolean)) walk(Number(c));
      }
    } catch {
      // the process is gone
    }
  };
  walk(pid);
  return out;
}

/** Reads a /proc file, or null when the process is gone. */
function procFile(pid: number, name: string): string | null {
  try {
    return readFileSync(`/proc/${pid}/${name}`, 'utf8');
  } catch {
    return null;
  }
}

/** Peak RSS (VmHWM) of the largest process of the tree, MiB. */
function peakRssMiB(pid: number): number {
  let max = 0;
  for (const p of processTree(pid)) {
    const m = /VmHWM:\s+(\d+) kB/.exec(procFile(p, 'status') ?? '');
    if (m) max = Math.max(max, Number(m[1]) / 1024);
  }
  return max;
}

/** CPU seconds (user + sys, all threads) of the tree so far (Linux /proc; CLK_TCK 100). */
function treeCpuSeconds(pid: number): number {
  let sum = 0;
  for (const p of processTree(pid)) {
    const f = procFile(p, 'stat')?.split(') ')[1]?.split(' ');
    if (f) sum += (Number(f[11]) + Number(f[12])) / 100;
  }
  return sum;
}

/** The stats of the "serve stopped" log line (GETs, bytes fetched, cache hits). */
async function stopServe(s: Served): Promise<Record<string, number> | null> {
  await stop(s.proc);
  for (const line of s.stderr().split('\n').reverse()) {
    if (!line.startsWith('{')) continue;
    try {
      const o = JSON.parse(line) as { msg?: string; message?: string; stats?: Record<string, number> };
      if (o.stats) return o.stats;
    } catch {
      // not a log line
    }
  }
  return null;
}

// ---------------------------------------------------------------- clients

async function connectTo(s: Served, maxInFlight: number): Promise<NbdClient> {
  return NbdClient.connect({ path: s.socket }, { exportName: s.exportName, maxInFlight });
}

/** Time from spawning serve to the first 4 KiB READ at `offset` answered, checked against `expect`. */
async function firstByte(s: Served, offset: number, expect: Buffer): Promise<{ ms: number; readyMs: number }> {
  const c = await connectTo(s, 1);
  const b = await c.read(offset, READ);
  const ms = performance.now() - s.t0;
  await c.close();
  if (!b.equals(expect)) throw new Error(`first read at ${offset} differs from the image`);
  return { ms, readyMs: s.readyMs };
}

interface Latency {
  qd: number;
  n: number;
  p50: number;
  p99: number;
  mean: number;
  seconds: number;
}

/** p-th percentile, nearest rank. */
function pct(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]!;
}

/** `offsets.length` 4 KiB READs with `qd` in flight on one connection; every answer compared with the image. */
async function randomReads(s: Served, offsets: number[], qd: number, image: Buffer | ((off: number) => Buffer)): Promise<Latency> {
  const c = await connectTo(s, qd);
  const lat: number[] = [];
  let next = 0;
  const t0 = performance.now();
  const expectAt = typeof image === 'function' ? image : (o: number): Buffer => image.subarray(o, o + READ);
  await Promise.all(
    Array.from({ length: qd }, async () => {
      while (next < offsets.length) {
        const off = offsets[next++]!;
        const t = performance.now();
        const b = await c.read(off, READ);
        lat.push(performance.now() - t);
        if (!b.equals(expectAt(off))) throw new Error(`read at ${off} differs from the image`);
      }
    }),
  );
  const seconds = (performance.now() - t0) / 1000;
  await c.close();
  lat.sort((a, b) => a - b);
  return { qd, n: lat.length, p50: pct(lat, 50), p99: pct(lat, 99), mean: lat.reduce((a, b) => a + b, 0) / lat.length, seconds };
}

/** Seeded PRNG (mulberry32), so every run reads the same offsets. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const REGION = 4 * MiB;

/**
 * Up to `n` 4 KiB-aligned offsets of data (non-zero) blocks of the image, in
 * random order, each in a different 4 MiB region (an extent holds 4 MiB of
 * data at most), so that on a fresh serve almost every read is a miss.
 */
function dataOffsets(img: Buffer, n: number, seed: number): number[] {
  const r = rng(seed);
  const regions = Array.from({ length: Math.floor(img.length / REGION) }, (_, i) => i);
  for (let i = regions.length - 1; i > 0; i--) {
    const j = Math.floor(r() * (i + 1));
    [regions[i], regions[j]] = [regions[j]!, regions[i]!];
  }
  const out: number[] = [];
  for (const g of regions) {
    if (out.length >= n) break;
    for (let tries = 0; tries < 64; tries++) {
      const o = g * REGION + Math.floor(r() * (REGION / READ)) * READ;
      if (img.subarray(o, o + READ).some((x) => x !== 0)) {
        out.push(o);
        break;
      }
    }
  }
  return out;
}

/** Runs a command to its end under GNU time: wall ms and CPU seconds (user + sys, children included). */
function run(cmd: string, args: string[], env: NodeJS.ProcessEnv): { ms: number; cpuSeconds: number; stderr: string } {
  const t = performance.now();
  const r = spawnSync('/usr/bin/time', ['-f', 'CPUSEC %U %S', cmd, ...args], { cwd: root, env, encoding: 'utf8', maxBuffer: 64 * MiB });
  const ms = performance.now() - t;
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.status}): ${(r.stderr ?? '').slice(-2000)}`);
  const m = /CPUSEC ([\d.]+) ([\d.]+)/.exec(r.stderr ?? '');
  return { ms, cpuSeconds: m ? Number(m[1]) + Number(m[2]) : NaN, stderr: r.stderr ?? '' };
}

// ---------------------------------------------------------------- one pair, one endpoint

interface LatencyPart {
  firstByteMs: number;
  serveReadyMs: number;
  cold: { qd1: Latency; qd16: Latency };
  warm: { qd1: Latency; qd16: Latency };
  coldStats: { qd1: Record<string, number> | null; qd16: Record<string, number> | null };
  serveRssMiB: number;
}

interface SeqPart {
  serveSeconds: number;
  nbdcopySeconds: number;
  restoreSeconds: number;
  /** CPU seconds of the serve process (start to stop) plus nbdcopy's. */
  serveCpuSeconds: number;
  nbdcopyCpuSeconds: number;
  restoreCpuSeconds: number;
  serveStats: Record<string, number> | null;
  serveRssMiB: number;
  identical: boolean;
}

interface SparsePart {
  firstByteMs: number;
  serveReadyMs: number;
  lastRegionMs: number;
  rssMiB: number;
}

interface EndpointRun {
  endpoint: 'loopback' | 'proxy';
  /** Baseline of every start: `cowstream serve --help` (Node start and the CLI's modules), ms. */
  cliStartMs: number;
  latency?: LatencyPart;
  seq?: SeqPart;
  sparse?: SparsePart;
}

interface Ctx {
  img: Buffer;
  imagePath: string;
  imageKey: string;
  sparseKey: string;
  sparseSize: number;
  sparseData: Buffer;
  env: NodeJS.ProcessEnv;
  tmp: string;
}

type Say = (m: string) => void;

/**
 * Warm reads: the last WARM_SET offsets read cold (each pulled one extent of
 * ≤ 4 MiB of clusters into the memory cache, 256 MiB by default), over and
 * over in a shuffled order. A larger set would not fit the cache and measure
 * evictions instead.
 */
const WARM_SET = 32;

function warmOffsets(cold: number[], n: number, seed: number): number[] {
  const set = cold.slice(-WARM_SET);
  const r = rng(seed);
  return Array.from({ length: n }, () => set[Math.floor(r() * set.length)]!);
}

/**
 * serve #1: first byte, then cold QD1 (its GETs counted on their own);
 * serve #2: cold QD16, then warm QD1 and QD16 over offsets it has just read.
 */
async function latencyPart(endpoint: string, x: Ctx, pair: number, say: Say): Promise<LatencyPart> {
  const offsetsA = dataOffsets(x.img, reads, 1000 + pair);
  const offsetsB = dataOffsets(x.img, reads, 2000 + pair);
  let s = await startServe(endpoint, x.imageKey, x.env);
  const fb = await firstByte(s, 0, x.img.subarray(0, READ));
  say(`first byte ${fb.ms.toFixed(0)} ms (serve ready ${fb.readyMs.toFixed(0)} ms)`);
  const coldQd1 = await randomReads(s, offsetsA, 1, x.img);
  const statsQd1 = await stopServe(s);
  say(`cold QD1 p50 ${coldQd1.p50.toFixed(1)} p99 ${coldQd1.p99.toFixed(1)} ms (${statsQd1?.gets} GETs for ${coldQd1.n} reads + the first one)`);
  s = await startServe(endpoint, x.imageKey, x.env);
  const coldQd16 = await randomReads(s, offsetsB, 16, x.img);
  const warm = warmOffsets(offsetsB, offsetsB.length, 3000 + pair);
  const warmQd1 = await randomReads(s, warm, 1, x.img);
  const warmQd16 = await randomReads(s, warm, 16, x.img);
  const serveRssMiB = peakRssMiB(s.proc.pid!);
  const statsQd16 = await stopServe(s);
  say(`cold QD16 p50 ${coldQd16.p50.toFixed(1)} p99 ${coldQd16.p99.toFixed(1)} ms; warm QD1 p50 ${warmQd1.p50.toFixed(2)}, QD16 p50 ${warmQd16.p50.toFixed(2)} ms (${statsQd16?.gets} GETs in all)`);
  return { firstByteMs: fb.ms, serveReadyMs: fb.readyMs, cold: { qd1: coldQd1, qd16: coldQd16 }, warm: { qd1: warmQd1, qd16: warmQd16 }, coldStats: { qd1: statsQd1, qd16: statsQd16 }, serveRssMiB };
}

/** serve + nbdcopy of the whole export vs a full restore, back to back; both outputs compared with the image. */
async function seqPart(endpoint: string, x: Ctx, say: Say): Promise<SeqPart> {
  const copyOut = join(x.tmp, 'copy.raw');
  const restoreOut = join(x.tmp, 'restore.raw');
  rmSync(copyOut, { force: true });
  rmSync(restoreOut, { force: true });
  const s = await startServe(endpoint, x.imageKey, x.env);
  const uri = `nbd+unix:///${encodeURIComponent(s.exportName)}?socket=${s.socket}`;
  const nc = run('nbdcopy', [uri, copyOut], x.env);
  const serveSeconds = (performance.now() - s.t0) / 1000;
  const serveRssMiB = peakRssMiB(s.proc.pid!);
  const serveCpu = treeCpuSeconds(s.proc.pid!);
  const serveStats = await stopServe(s);
  const rs = run(process.execPath, [CLI, 'restore', `s3://${BUCKET}/${x.imageKey}`, '--to', restoreOut, '--parallel', String(restoreParallel), ...storeArgs(endpoint)], x.env);
  const identical = spawnSync('cmp', ['-s', x.imagePath, copyOut]).status === 0 && spawnSync('cmp', ['-s', x.imagePath, restoreOut]).status === 0;
  rmSync(copyOut, { force: true });
  rmSync(restoreOut, { force: true });
  say(`sequential: serve+nbdcopy ${serveSeconds.toFixed(2)} s (nbdcopy ${(nc.ms / 1000).toFixed(2)} s, ${serveStats?.gets} GETs), restore ${(rs.ms / 1000).toFixed(2)} s, identical ${identical}`);
  return { serveSeconds, nbdcopySeconds: nc.ms / 1000, restoreSeconds: rs.ms / 1000, serveCpuSeconds: serveCpu, nbdcopyCpuSeconds: nc.cpuSeconds, restoreCpuSeconds: rs.cpuSeconds, serveStats, serveRssMiB, identical };
}

/** The sparse disk's archive: serve start to the first read, a read near the end, peak RSS. */
async function sparsePart(endpoint: string, x: Ctx, say: Say): Promise<SparsePart> {
  const s = await startServe(endpoint, x.sparseKey, x.env);
  const fb = await firstByte(s, 0, x.sparseData.subarray(0, READ));
  const last = sparseRegions(x.sparseSize)[2]!;
  const tail = await randomReads(s, [last + 8 * MiB], 1, () => x.sparseData.subarray(8 * MiB, 8 * MiB + READ));
  const rssMiB = peakRssMiB(s.proc.pid!);
  await stopServe(s);
  say(`sparse ${sparseGiB} GiB: first read ${fb.ms.toFixed(0)} ms (ready ${fb.readyMs.toFixed(0)} ms), RSS ${rssMiB.toFixed(0)} MiB`);
  return { firstByteMs: fb.ms, serveReadyMs: fb.readyMs, lastRegionMs: tail.p50, rssMiB };
}

async function endpointRun(name: 'loopback' | 'proxy', endpoint: string, x: Ctx, pair: number): Promise<EndpointRun> {
  const say: Say = (m) => void process.stderr.write(`[pair ${pair + 1}/${pairs} ${name}] ${m}\n`);
  const cliStartMs = run(process.execPath, [CLI, 'serve', '--help'], x.env).ms;
  return {
    endpoint: name,
    cliStartMs,
    ...(only.has('latency') ? { latency: await latencyPart(endpoint, x, pair, say) } : {}),
    ...(only.has('seq') ? { seq: await seqPart(endpoint, x, say) } : {}),
    ...(only.has('sparse') ? { sparse: await sparsePart(endpoint, x, say) } : {}),
  };
}

// ---------------------------------------------------------------- report

interface Pair {
  loopback: EndpointRun;
  proxy: EndpointRun;
}

function report(ps: Pair[], size: number, startedAt: string, load0: number[]): { md: string; summary: Record<string, unknown> } {
  const f = (x: number, d = 1): string => x.toFixed(d);
  const spread = (xs: number[], d = 2): string => (xs.length > 1 ? `${f(median(xs), d)} (${f(Math.min(...xs), d)}–${f(Math.max(...xs), d)})` : f(xs[0]!, d));
  const mbps = (s: number): number => size / 1e6 / s;
  const lines: string[] = [];
  const cpu = cpus()[0]?.model ?? '?';
  const n = ps[0]?.loopback.latency?.cold.qd1.n ?? 0;
  lines.push(`${startedAt} – ${new Date().toISOString()}, node ${process.version}, ${availableParallelism()} cores (${cpu}), ${(totalmem() / 2 ** 30).toFixed(0)} GiB; load average at start ${load0.map((x) => f(x)).join(' ')}, at end ${loadavg().map((x) => f(x)).join(' ')}`);
  lines.push(
    `image ${imageMiB} MiB (${f(size / 1e6, 0)} MB, 68 % data); ${pairs} pair(s) (loopback then proxy); ${n} random 4 KiB reads per latency run; proxy ${latencyMs} ms each way, ${linkMBps} MB/s per connection; ` +
      `restore --parallel ${restoreParallel}; serve --read-ahead ${readAhead ?? `default (${DEFAULT_READ_AHEAD_BYTES / MiB}M)`}`,
  );
  lines.push('');
  lines.push(`Each cell: median of the pairs (min–max). Latency client: cowstream's NBD client (src/nbd/client.ts), one connection to serve's Unix socket; cold = fresh serve, one read per 4 MiB region of data; warm = after cold QD16, reads over the last ${WARM_SET} offsets it read (their extents fit the 256 MiB memory cache).`);
  lines.push('');
  lines.push('| measure | loopback | proxy | proxy / loopback (median of pairs) | goal |');
  lines.push('|---|---:|---:|---:|---|');
  const row = (label: string, get: (r: EndpointRun) => number | undefined, d = 1, goal = ''): void => {
    const l = ps.map((p) => get(p.loopback));
    const r = ps.map((p) => get(p.proxy));
    if (l.some((v) => v === undefined || Number.isNaN(v)) || r.some((v) => v === undefined || Number.isNaN(v))) return;
    const ratio = ps.map((_, i) => r[i]! / l[i]!);
    lines.push(`| ${label} | ${spread(l as number[], d)} | ${spread(r as number[], d)} | ${f(median(ratio), 2)}× | ${goal} |`);
  };
  row('baseline: `cowstream serve --help` (Node + CLI start), ms', (r) => r.cliStartMs, 0);
  row('serve start → first 4 KiB read answered, ms', (r) => r.latency?.firstByteMs, 0);
  row('  of which serve start → exports printed, ms', (r) => r.latency?.serveReadyMs, 0);
  for (const [t, k] of [['cold', 'cold'], ['warm', 'warm']] as const) {
    for (const qd of ['qd1', 'qd16'] as const) {
      for (const p of ['p50', 'p99'] as const) row(`random 4 KiB read, ${t}, ${qd.toUpperCase()}: ${p} ms`, (r) => r.latency?.[k][qd][p], t === 'warm' ? 2 : 1);
    }
  }
  row('cold QD1: GETs per read (first read included)', (r) => (r.latency ? (r.latency.coldStats.qd1?.gets ?? NaN) / (r.latency.cold.qd1.n + 1) : undefined), 2);
  row('serve peak RSS after the latency runs, MiB', (r) => r.latency?.serveRssMiB, 0);
  row('sequential: serve start + `nbdcopy` of the export, MB/s', (r) => (r.seq ? mbps(r.seq.serveSeconds) : undefined), 0);
  row('sequential: `nbdcopy` alone (serve already up), MB/s', (r) => (r.seq ? mbps(r.seq.nbdcopySeconds) : undefined), 0);
  row(`sequential: \`cowstream restore --parallel ${restoreParallel}\` of the archive, MB/s`, (r) => (r.seq ? mbps(r.seq.restoreSeconds) : undefined), 0);
  row('sequential: serve / restore throughput (per pair)', (r) => (r.seq ? r.seq.restoreSeconds / r.seq.serveSeconds : undefined), 2, '≥ 0.8×');
  row('sequential: CPU-s of serve (whole process) + nbdcopy', (r) => (r.seq ? r.seq.serveCpuSeconds + r.seq.nbdcopyCpuSeconds : undefined), 2);
  row('  of which nbdcopy', (r) => r.seq?.nbdcopyCpuSeconds, 2);
  row('sequential: CPU-s of restore', (r) => r.seq?.restoreCpuSeconds, 2);
  row('serve peak RSS during nbdcopy, MiB', (r) => r.seq?.serveRssMiB, 0);
  row(`${sparseGiB} GiB sparse archive: serve start → first read answered, ms`, (r) => r.sparse?.firstByteMs, 0, '< 1000 ms');
  row(`  of which serve start → exports printed, ms`, (r) => r.sparse?.serveReadyMs, 0);
  row(`${sparseGiB} GiB sparse archive: a read near its end, ms`, (r) => r.sparse?.lastRegionMs, 0);
  row(`${sparseGiB} GiB sparse archive: serve peak RSS, MiB`, (r) => r.sparse?.rssMiB, 0);
  lines.push('');
  const summary: Record<string, unknown> = {};
  if (only.has('seq')) {
    const seqRatio = (e: 'loopback' | 'proxy'): number[] => ps.map((p) => p[e].seq!.restoreSeconds / p[e].seq!.serveSeconds);
    const identical = ps.every((p) => p.loopback.seq!.identical && p.proxy.seq!.identical);
    lines.push(`nbdcopy and restore outputs byte-identical to the image: ${identical ? 'yes' : 'NO'}`);
    lines.push(`serve vs restore, sequential, through the proxy: ${spread(seqRatio('proxy'))}× (pairs ${seqRatio('proxy').map((x) => f(x, 2)).join(', ')})   goal ≥ 0.8×`);
    lines.push(`serve vs restore, sequential, loopback:          ${spread(seqRatio('loopback'))}× (pairs ${seqRatio('loopback').map((x) => f(x, 2)).join(', ')})`);
    Object.assign(summary, { seqServeVsRestoreProxy: median(seqRatio('proxy')), seqServeVsRestoreLoopback: median(seqRatio('loopback')), identical });
    const mid = medianBy(ps, (p) => p.proxy.seq!.restoreSeconds / p.proxy.seq!.serveSeconds);
    summary.seqMedianPairProxy = mid.proxy.seq;
  }
  if (only.has('sparse')) {
    const sp = ps.map((p) => p.proxy.sparse!.firstByteMs);
    lines.push(`${sparseGiB} GiB sparse, first read through the proxy: ${spread(sp, 0)} ms   goal < 1000 ms`);
    Object.assign(summary, { sparseFirstReadProxyMs: median(sp), sparsePeakRssMiB: Math.max(...ps.flatMap((p) => [p.loopback.sparse!.rssMiB, p.proxy.sparse!.rssMiB])) });
  }
  return { md: lines.join('\n') + '\n', summary };
}

// ---------------------------------------------------------------- main

async function main(): Promise<void> {
  const startedAt = new Date().toISOString();
  const load0 = loadavg();
  const imagePath = await ensureBenchImage(work, imageMiB);
  const img = readFileSync(imagePath);
  const tmp = mkdtempSync(join(tmpdir(), 'cowstream-bench-serve-'));
  const s3 = await startEndpointProcess([process.execPath, CLI, 's3', 'serve', '--state', tmp, '--bucket', BUCKET, '--json']);
  const shaped = await startEndpointProcess([process.execPath, join(root, 'node_modules', 'tsx', 'dist', 'cli.mjs'), 'bench/shaping-proxy.ts', '--target', s3.endpoint, '--latency-ms', String(latencyMs), '--mbps', String(linkMBps), '--json']);
  try {
    const { readEmbeddedCredentials } = await import('../src/store/embedded-credentials.js');
    const creds = (await readEmbeddedCredentials(tmp)).s3;
    const env = serveEnv(creds, tmp);
    process.stderr.write(`image ${imagePath}, s3rver ${s3.endpoint}, proxy ${shaped.endpoint} (${latencyMs} ms each way, ${linkMBps} MB/s per connection)\n`);
    const imageKey = 'bench/archives/01900000-0000-7000-8000-00000000c001.cwa';
    const sparseKey = 'bench/archives/01900000-0000-7000-8000-00000000c002.cwa';
    const sparseSize = sparseGiB * 1024 * MiB;
    const sparseData = img.subarray(0, 16 * MiB);
    let t = performance.now();
    await writeArchive(s3.endpoint, imageKey, img.length, img.length, (w) => fillFromImage(w, imagePath), creds);
    process.stderr.write(`archive of the image written in ${((performance.now() - t) / 1000).toFixed(1)} s\n`);
    t = performance.now();
    await writeArchive(s3.endpoint, sparseKey, sparseSize, 64 * MiB, (w) => fillSparse(w, sparseSize, sparseData), creds);
    process.stderr.write(`archive of the ${sparseGiB} GiB sparse disk written in ${((performance.now() - t) / 1000).toFixed(1)} s\n`);
    const x: Ctx = { img, imagePath, imageKey, sparseKey, sparseSize, sparseData, env, tmp };
    const ps: Pair[] = [];
    for (let i = 0; i < pairs; i++) {
      const loopback = await endpointRun('loopback', s3.endpoint, x, i);
      const proxy = await endpointRun('proxy', shaped.endpoint, x, i);
      ps.push({ loopback, proxy });
    }
    const { md, summary } = report(ps, img.length, startedAt, load0);
    process.stdout.write(md);
    const config = { imageMiB, pairs, reads, sparseGiB, readAhead: readAhead ?? null, only: [...only], restoreParallel, latencyMs, linkMBps, quick, node: process.version, cores: availableParallelism(), cpu: cpus()[0]?.model, load: { start: load0, end: loadavg() } };
    writeFileSync(jsonPath, JSON.stringify({ startedAt, finishedAt: new Date().toISOString(), config, summary, pairs: ps }, null, 2) + '\n');
    writeFileSync(jsonPath.replace(/\.json$/, '') + '.md', md);
    process.stderr.write(`results: ${jsonPath} (+ .md)\n`);
    if (summary.identical === false) process.exitCode = 1;
  } finally {
    await stop(shaped.proc);
    await stop(s3.proc);
    rmSync(tmp, { recursive: true, force: true });
  }
}

await main();
