/**
 * bench:s3 — archives to S3 and back, against ONE local s3rver in one run,
 * reached two ways: directly on loopback, and through a shaping proxy that
 * makes it behave like a remote endpoint (bench/shaping-proxy.ts: 20 ms each
 * way, 100 MB/s per connection; BENCH_LATENCY_MS, BENCH_MBPS).
 *
 *   npm run bench:s3                       (~1 GiB image, cached in bench/work/)
 *   BENCH_IMAGE_MIB=256 npm run bench:s3   (smaller image)
 *   BENCH_PARALLEL=8 ...                   (restore parallelism, default 8)
 *   BENCH_PAIRS=3 ...                      (paired runs, see below)
 *   BENCH_RESTIC=1 ...                     (also restic backup --stdin, once, loopback)
 *
 * Backup of the same image, each in its own process (peak RSS = largest process, /usr/bin/time):
 *   cowstream   image → ArchiveWriter (ZstdPool, zstd -1) → S3ArchiveSink (multipart)
 *   (a)         plain lib-storage Upload of the raw image
 *   (b)         zstd -1 -T0 -c image | Upload   (the vzdump-style pipeline)
 *   (c)         restic backup --stdin to the same endpoint (BENCH_RESTIC=1)
 * Restore of the cowstream archive:
 *   parallel    restoreArchive (coalesced ranged GETs, ZstdPool, positional writes)
 *   sequential  one GetObject stream, extents decoded one at a time, written in order
 *
 * Pairs, each pair back to back: loopback cowstream backup / (b); proxied
 * cowstream backup / proxied (a); loopback sequential / parallel restore;
 * proxied sequential / parallel restore. The s3rver runs as `cowstream s3
 * serve` in its own process with --trace-gc: the run reports its CPU seconds
 * and its full (mark-compact) and young (scavenge) GCs per GiB it received.
 * Throughput is MB/s of disk data (image bytes / seconds).
 */
import { spawnSync } from 'node:child_process';
import { copyFileSync, createReadStream, mkdtempSync, readFileSync, statSync, rmSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { availableParallelism, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { CreateBucketCommand, GetObjectCommand, ListObjectsV2Command, type S3Client } from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import { benchImage as image, benchImageMiB as imageMiB, benchRoot as root, benchWork as work, ensureBenchImage } from './image.js';
import { startEndpointProcess, stop } from './processes.js';
import { median, medianBy } from './stats.js';

const MiB = 1024 * 1024;
const parallel = Number(process.env.BENCH_PARALLEL ?? 8);
const pairs = Number(process.env.BENCH_PAIRS ?? 3);
const latencyMs = Number(process.env.BENCH_LATENCY_MS ?? 20);
const linkMBps = Number(process.env.BENCH_MBPS ?? 100);
/** The embedded server's generated keys (`s3 serve --state`), set once the server is up. */
const CREDS: Record<string, string> = { AWS_REGION: 'us-east-1' };
let KEYS = { accessKeyId: '', secretAccessKey: '' };

interface ChildResult {
  seconds: number;
  [k: string]: unknown;
}

async function client(endpoint: string): Promise<S3Client> {
  const { createS3Client } = await import('../src/store/s3-client.js');
  // The parent reads the keys from the server's state; child processes get them in their environment.
  const credentials = KEYS.accessKeyId ? KEYS : { accessKeyId: process.env.AWS_ACCESS_KEY_ID ?? '', secretAccessKey: process.env.AWS_SECRET_ACCESS_KEY ?? '' };
  return createS3Client({ bucket: 'bench', prefix: '', endpoint, region: 'us-east-1', credentials });
}

// ---------------------------------------------------------------- child modes

async function childBackup(endpoint: string, key: string): Promise<ChildResult> {
  const { ZstdPool } = await import('../src/codec/zstd-pool.js');
  const { ArchiveWriter } = await import('../src/format/writer.js');
  const { S3ArchiveSink } = await import('../src/store/s3-sink.js');
  const { CLUSTER_SIZE } = await import('../src/format/constants.js');
  const c = await client(endpoint);
  const size = statSync(image).size;
  const t0 = performance.now();
  const pool = new ZstdPool({ level: 1 });
  const uuid = key.replace(/^.*\//, '').replace(/\.cwa$/, '');
  const sink = new S3ArchiveSink({ client: c, bucket: 'bench', key, expectedBytes: size, queueSize: 4, metadata: { uuid, hostId: 'bench', deviceNames: ['disk0'] } });
  const w = await ArchiveWriter.create({ hostId: 'bench', uuid, devices: [{ id: 0, name: 'disk0', size }], compressor: pool, output: sink });
  const fh = await open(image, 'r');
  const buf = Buffer.alloc(4 * MiB);
  for (let off = 0; off < size; off += buf.length) {
    const { bytesRead } = await fh.read(buf, 0, Math.min(buf.length, size - off), off);
    for (let p = 0; p < bytesRead; p += CLUSTER_SIZE) {
      await w.writeCluster(0, (off + p) / CLUSTER_SIZE, buf.subarray(p, Math.min(bytesRead, p + CLUSTER_SIZE)));
    }
  }
  await fh.close();
  const summary = await w.finish();
  await pool.close();
  return { seconds: (performance.now() - t0) / 1000, storedBytes: summary.bytesWritten, memoryBound: sink.memoryBound };
}

async function childUpload(endpoint: string, key: string, from: string): Promise<ChildResult> {
  const c = await client(endpoint);
  const t0 = performance.now();
  const body = from === '-' ? process.stdin : createReadStream(from, { highWaterMark: MiB });
  await new Upload({ client: c, params: { Bucket: 'bench', Key: key, Body: body }, partSize: 8 * MiB, queueSize: 4 }).done();
  return { seconds: (performance.now() - t0) / 1000 };
}

async function childRestore(endpoint: string, key: string, out: string, mode: 'parallel' | 'sequential'): Promise<ChildResult> {
  const { ZstdPool } = await import('../src/codec/zstd-pool.js');
  const c = await client(endpoint);
  const pool = new ZstdPool({ level: 1 });
  const t0 = performance.now();
  if (mode === 'parallel') {
    const { buildRestorePlan, sourceOpener } = await import('../src/restore/locate.js');
    const { restoreArchive } = await import('../src/restore/engine.js');
    const ctx = { store: { bucket: 'bench', prefix: '', endpoint }, client: c };
    const plan = await buildRestorePlan(`s3://bench/${key}`, ctx);
    await restoreArchive({ plan, openSource: sourceOpener(ctx), target: out, compressor: pool, parallel });
  } else {
    // Baseline: one sequential GetObject stream; each extent decoded (one at a
    // time) as soon as its bytes have arrived; clusters written in order.
    const { openArchive } = await import('../src/format/reader.js');
    const { S3RangeSource } = await import('../src/store/s3-source.js');
    const { decodeExtentLeased } = await import('../src/format/extent.js');
    const { CLUSTER_SIZE } = await import('../src/format/constants.js');
    const src = await S3RangeSource.open(c, 'bench', key);
    const reader = await openArchive(src, { compressor: pool });
    const size = reader.header.devices[0]!.size;
    const fh = await open(out, 'w');
    await fh.truncate(size);
    const xs = reader.index.extents;
    const first = xs[0]!.offset;
    const last = xs[xs.length - 1]!;
    const res = await c.send(new GetObjectCommand({ Bucket: 'bench', Key: key, Range: `bytes=${first}-${last.offset + last.length - 1}` }));
    let pending: Buffer[] = [];
    let have = 0;
    let pos = first;
    let i = 0;
    for await (const chunk of res.Body as AsyncIterable<Buffer>) {
      pending.push(chunk);
      have += chunk.length;
      while (i < xs.length && pos + have >= xs[i]!.offset + xs[i]!.length) {
        const all = Buffer.concat(pending);
        const x = xs[i]!;
        const bytes = all.subarray(x.offset - pos, x.offset - pos + x.length);
        // Same decode and write primitives as the parallel engine: one worker
        // job per extent, recycled plaintext buffers, one writev per run of
        // consecutive clusters. Only the concurrency differs.
        const leased = await decodeExtentLeased(bytes, { compressor: pool, archiveUuid: reader.header.uuid });
        const cls = leased.clusters;
        for (let a = 0; a < cls.length; ) {
          let b = a + 1;
          while (b < cls.length && cls[b]!.cluster === cls[b - 1]!.cluster + 1) b++;
          await fh.writev(cls.slice(a, b).map((x) => x.data), cls[a]!.cluster * CLUSTER_SIZE);
          a = b;
        }
        leased.release();
        const rest = all.subarray(x.offset + x.length - pos);
        pending = [rest];
        have = rest.length;
        pos = x.offset + x.length;
        i++;
      }
    }
    await fh.close();
  }
  await pool.close();
  return { seconds: (performance.now() - t0) / 1000 };
}

async function child(argv: string[]): Promise<void> {
  const [mode, endpoint, key, extra] = argv;
  let r: ChildResult;
  if (mode === 'backup') r = await childBackup(endpoint!, key!);
  else if (mode === 'upload') r = await childUpload(endpoint!, key!, extra!);
  else if (mode === 'restore-parallel') r = await childRestore(endpoint!, key!, extra!, 'parallel');
  else if (mode === 'restore-sequential') r = await childRestore(endpoint!, key!, extra!, 'sequential');
  else throw new Error(`unknown child mode ${mode}`);
  process.stdout.write(JSON.stringify(r) + '\n');
  process.exit(0);
}

// ---------------------------------------------------------------- parent

interface Row {
  name: string;
  seconds: number;
  stored: number;
  rss: number;
  note?: string;
}

/** Runs a command under /usr/bin/time; returns wall seconds, peak RSS (largest process) and stdout. */
function measured(shell: string, env: NodeJS.ProcessEnv = {}): { wall: number; maxRssMiB: number; stdout: string } {
  const t0 = performance.now();
  const r = spawnSync('/usr/bin/time', ['-f', 'MAXRSS %M', 'bash', '-c', shell], {
    cwd: root,
    env: { ...process.env, ...CREDS, ...env },
    encoding: 'utf8',
    maxBuffer: 64 * MiB,
  });
  const wall = (performance.now() - t0) / 1000;
  if (r.status !== 0) throw new Error(`${shell} failed (${r.status}): ${r.stderr.slice(-2000)}`);
  const m = /MAXRSS (\d+)/.exec(r.stderr);
  return { wall, maxRssMiB: m ? Number(m[1]) / 1024 : NaN, stdout: r.stdout };
}

/** The child's JSON result line. */
function childResult<T extends ChildResult>(m: { stdout: string }): T {
  return JSON.parse(m.stdout.trim().split('\n').pop()!) as T;
}

async function storedBytes(c: S3Client, bucket: string, prefix: string): Promise<number> {
  let total = 0;
  let token: string | undefined;
  do {
    const res = await c.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix, ...(token ? { ContinuationToken: token } : {}) }));
    for (const o of res.Contents ?? []) total += o.Size ?? 0;
    token = res.IsTruncated ? res.NextContinuationToken : undefined;
  } while (token);
  return total;
}

/** CPU seconds (user + sys) a process has used so far (Linux /proc; CLK_TCK 100). */
function procCpu(pid: number): number {
  try {
    const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
    return (Number(f[11]) + Number(f[12])) / 100;
  } catch {
    return NaN;
  }
}

interface Pair {
  ours: Row;
  base: Row;
}

/** Bundles this file for the child processes (dist/bench/s3.mjs, next to a copy of the zstd worker); returns its path. */
async function bundleChild(): Promise<string> {
  const esbuild = await import('esbuild');
  const outdir = join(root, 'dist', 'bench');
  await esbuild.build({ absWorkingDir: root, entryPoints: ['bench/s3.ts'], bundle: true, platform: 'node', format: 'esm', target: 'node24', packages: 'external', outdir, outExtension: { '.js': '.mjs' }, logLevel: 'warning' });
  // zstd-pool starts its worker from new URL('./zstd-worker.mjs', import.meta.url).
  copyFileSync(join(root, 'src', 'codec', 'zstd-worker.mjs'), join(outdir, 'zstd-worker.mjs'));
  return join(outdir, 's3.mjs');
}

async function parent(): Promise<void> {
  await ensureBenchImage(work, imageMiB);
  const size = statSync(image).size;
  const tmp = mkdtempSync(join(tmpdir(), 'cowstream-bench-s3-'));
  // The embedded S3 server with GC tracing: full GCs per GiB are part of its cost.
  const gc = { markCompact: 0, scavenge: 0 };
  const { endpoint, proc } = await startEndpointProcess(
    [process.execPath, '--trace-gc', 'bin/cowstream.js', 's3', 'serve', '--state', tmp, '--bucket', 'bench', '--json'],
    (line) => {
      if (/Mark-Compact/.test(line)) gc.markCompact++;
      else if (/Scavenge/.test(line)) gc.scavenge++;
    },
  );
  const shaped = await startEndpointProcess([
    process.execPath,
    join(root, 'node_modules', 'tsx', 'dist', 'cli.mjs'),
    'bench/shaping-proxy.ts',
    '--target',
    endpoint,
    '--latency-ms',
    String(latencyMs),
    '--mbps',
    String(linkMBps),
    '--json',
  ]);
  const remote = shaped.endpoint;
  // The server made its keys in <tmp>/credentials.json: sign with them.
  const { readEmbeddedCredentials } = await import('../src/store/embedded-credentials.js');
  KEYS = (await readEmbeddedCredentials(tmp)).s3;
  CREDS.AWS_ACCESS_KEY_ID = KEYS.accessKeyId;
  CREDS.AWS_SECRET_ACCESS_KEY = KEYS.secretAccessKey;
  const c = await client(endpoint);
  // The children run from an esbuild bundle on plain node, as the CLI does:
  // under tsx each child carried ~50–80 MiB of loader and transpiled source
  // that no user runs, which made its peak RSS mean little.
  const self = `${JSON.stringify(process.execPath)} ${await bundleChild()} --child`;
  const mbps = (s: number): string => (size / 1e6 / s).toFixed(0);
  const serverCpu0 = procCpu(proc.pid!);
  let received = 0;
  try {
    // warm the page cache so every variant reads the image from memory
    for await (const _ of createReadStream(image, { highWaterMark: 4 * MiB })) void _;
    process.stderr.write(`image ${image} (${imageMiB} MiB), ${availableParallelism()} cores, s3rver at ${endpoint}, shaped ${remote} (${latencyMs} ms each way, ${linkMBps} MB/s per connection)\n`);

    const uuid = '01900000-0000-7000-8000-00000000b001';
    const archKey = `cowstream/archives/bench/${uuid}.cwa`;
    const remoteKey = `remote/archives/bench/${uuid}.cwa`;
    const backup = async (ep: string, key: string, prefix: string): Promise<Row> => {
      const m = measured(`${self} backup ${ep} ${key}`);
      const r = childResult<ChildResult & { storedBytes: number; memoryBound: number }>(m);
      received += r.storedBytes;
      return { name: 'cowstream backup (zstd -1, multipart)', seconds: r.seconds, stored: await storedBytes(c, 'bench', prefix), rss: m.maxRssMiB, note: `sink bound ${(r.memoryBound / MiB).toFixed(0)} MiB` };
    };
    const rawUpload = async (ep: string, key: string): Promise<Row> => {
      const m = measured(`${self} upload ${ep} ${key} ${image}`);
      received += size;
      return { name: '(a) plain Upload of the raw image', seconds: childResult(m).seconds, stored: await storedBytes(c, 'bench', key), rss: m.maxRssMiB };
    };
    // Paired runs: this VM's speed drifts by ±25 % over tens of seconds, so
    // each ratio is taken within a pair (back to back) and the median pair is
    // reported, with every pair's numbers.
    const loopPairs: Pair[] = [];
    const remotePairs: Pair[] = [];
    for (let i = 0; i < pairs; i++) {
      const ours = await backup(endpoint, archKey, 'cowstream/');
      // wall time of the whole pipeline (zstd starts before node is ready, so the in-process time would flatter it)
      const mb = measured(`zstd -1 -T0 -c ${image} | ${self} upload ${endpoint} zstd/image.raw.zst -`);
      const zstdBytes = await storedBytes(c, 'bench', 'zstd/');
      received += zstdBytes;
      loopPairs.push({ ours, base: { name: '(b) zstd -1 -T0 -c image \\| Upload', seconds: mb.wall, stored: zstdBytes, rss: mb.maxRssMiB, note: 'wall incl. node start' } });
      const oursRemote = await backup(remote, remoteKey, 'remote/');
      remotePairs.push({ ours: oursRemote, base: await rawUpload(remote, 'remote-raw/image.raw') });
    }
    const loopRaw = await rawUpload(endpoint, 'raw/image.raw');
    const restic: Row[] = [];
    if (process.env.BENCH_RESTIC === '1') {
      await c.send(new CreateBucketCommand({ Bucket: 'restic' })).catch(() => undefined);
      const env = { RESTIC_PASSWORD: 'bench', RESTIC_REPOSITORY: `s3:${endpoint}/restic` };
      try {
        measured('restic init', env);
        const m = measured(`restic backup --no-cache --stdin --stdin-filename image.raw < ${image}`, env);
        restic.push({ name: '(c) restic backup --stdin', seconds: m.wall, stored: await storedBytes(c, 'restic', ''), rss: m.maxRssMiB });
      } catch (err) {
        restic.push({ name: '(c) restic backup --stdin', seconds: NaN, stored: NaN, rss: NaN, note: `failed: ${String((err as Error).message).split('\n').slice(-3).join(' ')}` });
      }
    }
    const serverCpuBackup = procCpu(proc.pid!) - serverCpu0;
    const gcBackup = { ...gc };
    const receivedBackup = received;

    const restorePair = (ep: string, key: string): Pair & { same: boolean } => {
      const outPar = join(tmp, 'restore-par.raw');
      const outSeq = join(tmp, 'restore-seq.raw');
      rmSync(outSeq, { force: true });
      rmSync(outPar, { force: true });
      const ms = measured(`${self} restore-sequential ${ep} ${key} ${outSeq}`);
      const mp = measured(`${self} restore-parallel ${ep} ${key} ${outPar}`);
      const same = spawnSync('cmp', ['-s', image, outPar]).status === 0 && spawnSync('cmp', ['-s', image, outSeq]).status === 0;
      return {
        base: { name: 'sequential single-stream read + decompress', seconds: childResult(ms).seconds, stored: NaN, rss: ms.maxRssMiB },
        ours: { name: `cowstream restore --parallel ${parallel}`, seconds: childResult(mp).seconds, stored: NaN, rss: mp.maxRssMiB },
        same,
      };
    };
    const loopRestores: (Pair & { same: boolean })[] = [];
    const remoteRestores: (Pair & { same: boolean })[] = [];
    for (let i = 0; i < pairs; i++) {
      loopRestores.push(restorePair(endpoint, archKey));
      remoteRestores.push(restorePair(remote, remoteKey));
    }
    const same = [...loopRestores, ...remoteRestores].every((p) => p.same);

    // ---- report
    const speed = (p: Pair): number => p.base.seconds / p.ours.seconds;
    const fmt = (xs: number[]): string => xs.map((x) => x.toFixed(2)).join(', ');
    const spread = (ps: Pair[]): string => `${median(ps.map(speed)).toFixed(2)}× median of ${ps.length} (${Math.min(...ps.map(speed)).toFixed(2)}–${Math.max(...ps.map(speed)).toFixed(2)}; pairs ${fmt(ps.map(speed))})`;
    const row = (r: Row): string =>
      `| ${r.name} | ${r.seconds.toFixed(2)} | ${Number.isNaN(r.seconds) ? '-' : mbps(r.seconds)} | ${Number.isNaN(r.stored) ? '-' : r.stored.toLocaleString('en-US')} | ${Number.isNaN(r.stored) ? '-' : (size / r.stored).toFixed(2)} | ${Number.isNaN(r.rss) ? '-' : `${r.rss.toFixed(0)} MiB`} |${r.note ? ` ${r.note}` : ''}`;
    const lp = medianBy(loopPairs, speed);
    const rp = medianBy(remotePairs, speed);
    const lr = medianBy(loopRestores, speed);
    const rr = medianBy(remoteRestores, speed);
    const gib = receivedBackup / 2 ** 30;
    const lines: string[] = [];
    lines.push(`${new Date().toISOString()}, node ${process.version}, ${availableParallelism()} cores, load average ${loadavg().map((x) => x.toFixed(1)).join(' ')}`);
    lines.push(`backup of a ${imageMiB} MiB image (${(size / 1e6).toFixed(0)} MB); median pairs`);
    lines.push('| variant | seconds | MB/s (disk data) | bytes stored | ratio | peak RSS |');
    lines.push('|---|---:|---:|---:|---:|---:|');
    lines.push(`| **loopback** | | | | | |`);
    for (const r of [lp.ours, loopRaw, lp.base, ...restic]) lines.push(row(r));
    lines.push(`| **through the proxy (${latencyMs} ms each way, ${linkMBps} MB/s per connection)** | | | | | |`);
    for (const r of [rp.ours, rp.base]) lines.push(row(r));
    lines.push('');
    lines.push(`restore of the cowstream archive (outputs byte-identical to the image: ${same ? 'yes' : 'NO'}); median pairs`);
    lines.push('| variant | seconds | MB/s (disk data) | peak RSS |');
    lines.push('|---|---:|---:|---:|');
    for (const [label, p] of [['loopback', lr], ['proxy', rr]] as const) {
      for (const r of [p.base, p.ours]) lines.push(`| ${label}: ${r.name} | ${r.seconds.toFixed(2)} | ${mbps(r.seconds)} | ${r.rss.toFixed(0)} MiB |`);
    }
    lines.push('');
    lines.push(`backup vs (b), loopback:              ${spread(loopPairs)}   goal ≥ 1.0×`);
    lines.push(`backup vs raw Upload, through proxy:  ${spread(remotePairs)}   goal ≥ 1.5×`);
    lines.push(`parallel vs sequential restore, loopback: ${spread(loopRestores)}`);
    lines.push(`parallel vs sequential restore, proxy:    ${spread(remoteRestores)}   goal ≥ 4×`);
    const rss = [...loopPairs, ...remotePairs].map((p) => p.ours.rss);
    const rrss = [...loopRestores, ...remoteRestores].map((p) => p.ours.rss);
    lines.push(`peak RSS, cowstream backup: max ${Math.max(...rss).toFixed(0)} MiB; restore: max ${Math.max(...rrss).toFixed(0)} MiB   goal ≤ 300 MiB both`);
    lines.push(
      `s3rver during the backups: ${serverCpuBackup.toFixed(2)} CPU-s, ${gcBackup.markCompact} mark-compact and ${gcBackup.scavenge} scavenge GCs for ${gib.toFixed(2)} GiB received ` +
        `(${(gcBackup.markCompact / gib).toFixed(0)} full GCs/GiB, ${(serverCpuBackup / gib).toFixed(2)} CPU-s/GiB)`,
    );
    process.stdout.write(lines.join('\n') + '\n');
    if (!same) process.exitCode = 1;
  } finally {
    c.destroy();
    await stop(shaped.proc);
    await stop(proc);
    rmSync(tmp, { recursive: true, force: true });
  }
}

const argv = process.argv.slice(2);
if (argv[0] === '--child') await child(argv.slice(1));
else await parent();

