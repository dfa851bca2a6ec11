/**
 * npm run bench:qemu — pull-mode backup of a 1 GiB qcow2 from a real
 * qemu-storage-daemon vs `qemu-img convert -O raw` + `zstd -1 -T0` of the
 * same image, in the same run; and the guest's 4 KiB write latency through
 * the daemon's writable NBD export, idle vs during the backup.
 *
 * qemu-img cannot write to a pipe (it needs a regular, resizable file), so
 * the baseline converts to a raw file on tmpfs and compresses that file;
 * both steps are timed together. Both graphs are measured: the guest export
 * on a raw filter node (filter graph, 64 KiB READs) and on the qcow2 node
 * directly (job graph: backup job + qcow2 fleecing overlay, 1 MiB READs);
 * BENCH_QEMU_ATTACH=filter|direct picks one. Env: BENCH_QEMU_SIZE_MB (default 1024),
 * BENCH_QEMU_FILL (fraction written, default 0.5), BENCH_PAIRS (paired runs of
 * baseline and pull, default 3).
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, statSync, openSync, writeSync, closeSync, ftruncateSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { ZstdPool } from '../src/codec/zstd-pool.js';
import { FileByteSink } from '../src/store/file.js';
import { NbdClient } from '../src/nbd/client.js';
import { QmpClient } from '../src/qemu/qmp.js';
import { runPullBackup } from '../src/qemu/pull-backup.js';
import { startDaemon } from '../test/helpers/qemu-daemon.js';
import { median, medianBy } from './stats.js';

const pexec = promisify(execFile);
const MiB = 1024 * 1024;
const sizeMb = Number(process.env.BENCH_QEMU_SIZE_MB ?? 1024);
const fill = Number(process.env.BENCH_QEMU_FILL ?? 0.5);
const pairCount = Number(process.env.BENCH_PAIRS ?? 3);
const size = sizeMb * MiB;

function chunkData(): Buffer {
  // Realistic-ish content: 1/4 random, 3/4 repetitive text (compresses ~3-4x, like an OS image).
  const b = Buffer.alloc(4 * MiB);
  const text = Buffer.from('cowstream benchmark block device content; the quick brown fox jumps over the lazy dog. ');
  for (let off = 0; off < b.length; off += 64 * 1024) {
    randomBytes(16 * 1024).copy(b, off);
    for (let p = off + 16 * 1024; p < off + 64 * 1024; p += text.length) text.copy(b, p, 0, Math.min(text.length, off + 64 * 1024 - p));
  }
  return b;
}

function pct(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] as number;
}

async function latencyProbe(socket: string, stop: () => boolean, minMs: number): Promise<number[]> {
  const c = await NbdClient.connect({ path: socket }, { exportName: 'guest0', maxInFlight: 1 });
  const buf = randomBytes(4096);
  const lat: number[] = [];
  const t0 = Date.now();
  let seed = 12345;
  while (!stop() || Date.now() - t0 < minMs) {
    seed = (seed * 1103515245 + 12345) >>> 0;
    const off = (seed % (size / 4096)) * 4096;
    const s = process.hrtime.bigint();
    await c.write(off, buf);
    lat.push(Number(process.hrtime.bigint() - s) / 1e6);
  }
  await c.close();
  return lat.sort((a, b) => a - b);
}

/**
 * The read ceiling of pull mode on this machine: the same fleecing graph
 * (copy-before-write over the drive, snapshot-access, read-only NBD export)
 * read with NO compression and NO archive — by nbdcopy (libnbd, QEMU's own
 * best client) into tmpfs, and by cowstream's NbdClient with the pull
 * reader's request pattern (64 KiB DF reads of allocated extents, 16 in flight).
 */
async function readCeiling(qmp: QmpClient, nbdSocket: string, dir: string, shm: string): Promise<{ nbdcopyMs: number; clientMs: number; bytes: number }> {
  const fleece = join(dir, 'ceiling.fleece');
  const fd = openSync(fleece, 'w');
  ftruncateSync(fd, size);
  closeSync(fd);
  await qmp.execute('blockdev-add', { driver: 'file', 'node-name': 'ceil-fl', filename: fleece });
  await qmp.execute('blockdev-add', { driver: 'copy-before-write', 'node-name': 'ceil-cbw', file: 'd0', target: 'ceil-fl' });
  // As pull mode does: the guest's raw node now writes through the filter.
  await qmp.execute('blockdev-reopen', { options: [{ driver: 'raw', 'node-name': 'd0-guest', file: 'ceil-cbw' }] });
  await qmp.execute('blockdev-add', { driver: 'snapshot-access', 'node-name': 'ceil-sa', file: 'ceil-cbw' });
  await qmp.execute('block-export-add', { type: 'nbd', id: 'ceil', 'node-name': 'ceil-sa', name: 'ceil', writable: false });
  try {
    const t0 = Date.now();
    await pexec('nbdcopy', ['--request-size=65536', '--requests=16', '--connections=1', `nbd+unix:///ceil?socket=${nbdSocket}`, join(shm, 'ceil.raw')]);
    const nbdcopyMs = Date.now() - t0;
    rmSync(join(shm, 'ceil.raw'), { force: true });
    const c = await NbdClient.connect({ path: nbdSocket }, { exportName: 'ceil', metaContexts: ['base:allocation'], maxInFlight: 16 });
    const t1 = Date.now();
    const st = await c.blockStatus(0, c.size);
    const reads: Promise<Buffer>[] = [];
    let pos = 0;
    let bytes = 0;
    for (const e of st.contexts.get('base:allocation') ?? []) {
      if ((e.flags & 2) === 0) {
        for (let o = pos; o < pos + e.length; o += 65536) {
          const n = Math.min(65536, pos + e.length - o);
          bytes += n;
          reads.push(c.read(o, n, { noFragment: true }));
          if (reads.length >= 16) await reads.shift();
        }
      }
      pos += e.length;
    }
    await Promise.all(reads);
    const clientMs = Date.now() - t1;
    await c.close();
    return { nbdcopyMs, clientMs, bytes };
  } finally {
    const gone = qmp.waitForEvent((e) => e.event === 'BLOCK_EXPORT_DELETED', 10_000, { includeBacklog: false });
    await qmp.execute('block-export-del', { id: 'ceil', mode: 'hard' });
    await gone;
    await qmp.execute('blockdev-del', { 'node-name': 'ceil-sa' });
    await qmp.execute('blockdev-reopen', { options: [{ driver: 'raw', 'node-name': 'd0-guest', file: 'd0' }] });
    for (const n of ['ceil-cbw', 'ceil-fl']) await qmp.execute('blockdev-del', { 'node-name': n });
    rmSync(fleece, { force: true });
  }
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'cowstream-bench-qemu-'));
  const shm = mkdtempSync(join('/dev/shm', 'cowstream-bench-'));
  try {
    // 1. Source image: raw with `fill` of its 4 MiB chunks written, converted to qcow2.
    const raw = join(dir, 'src.raw');
    const fd = openSync(raw, 'w');
    ftruncateSync(fd, size);
    const data = chunkData();
    const chunks = size / (4 * MiB);
    for (let i = 0; i < chunks; i++) if ((i * 7919) % 100 < fill * 100) writeSync(fd, data, 0, data.length, i * 4 * MiB);
    closeSync(fd);
    const img = join(dir, 'disk.qcow2');
    await pexec('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', raw, img]);
    rmSync(raw);
    const allocated = Number(JSON.parse((await pexec('qemu-img', ['measure', '-O', 'raw', '--output=json', img])).stdout)['required'] ?? 0);
    console.log(`image: ${sizeMb} MiB qcow2, ~${Math.round(fill * 100)}% written (${(statSync(img).size / MiB).toFixed(0)} MiB on disk, raw needs ${(allocated / MiB).toFixed(0)} MiB)`);

    // 2. Baseline: qemu-img convert -O raw (to tmpfs) + zstd -1 -T0.
    const baseline = async (): Promise<{ ms: number; convertMs: number; zstdMs: number; bytes: number }> => {
      const b0 = Date.now();
      // -U (force-share): the daemon keeps the image open (and locked) between
      // the paired runs; nothing writes to it while the baseline reads.
      await pexec('qemu-img', ['convert', '-U', '-f', 'qcow2', '-O', 'raw', img, join(shm, 'out.raw')]);
      const b1 = Date.now();
      await pexec('zstd', ['-q', '-1', '-T0', '-f', join(shm, 'out.raw'), '-o', join(dir, 'out.raw.zst')]);
      const b2 = Date.now();
      const bytes = statSync(join(dir, 'out.raw.zst')).size;
      rmSync(join(shm, 'out.raw'));
      return { ms: b2 - b0, convertMs: b1 - b0, zstdMs: b2 - b1, bytes };
    };

    // 3. Pull mode through a real qemu-storage-daemon, per way of attaching the guest.
    const attachEnv = process.env.BENCH_QEMU_ATTACH;
    const attaches: ('filter' | 'direct')[] = attachEnv === 'filter' || attachEnv === 'direct' ? [attachEnv] : ['filter', 'direct'];
    for (const attach of attaches) await benchAttach(attach, img, dir, shm, baseline);
  } finally {
    rmSync(dir, { recursive: true, force: true });
    rmSync(shm, { recursive: true, force: true });
  }
}

type Baseline = () => Promise<{ ms: number; convertMs: number; zstdMs: number; bytes: number }>;

async function benchAttach(attach: 'filter' | 'direct', img: string, dir: string, shm: string, baseline: Baseline): Promise<void> {
  {
    const d = await startDaemon(dir, [{ path: img, format: 'qcow2' }], { attach });
    const pool = new ZstdPool({ level: 1 });
    console.log(`\n## guest export on ${attach === 'direct' ? 'the qcow2 node directly' : 'a raw filter node'}`);
    try {
      const qmp = await QmpClient.connect(d.qmpSocket);
      const pull = async (withProbe: boolean): Promise<{ ms: number; bytes: number; r: Awaited<ReturnType<typeof runPullBackup>>; busy: number[]; cpuMs: number }> => {
        let backupDone = false;
        let out = '';
        const probe = withProbe ? latencyProbe(d.nbdSocket, () => backupDone, 0) : Promise.resolve([]);
        const p0 = Date.now();
        const cpu0 = process.cpuUsage();
        const r = await runPullBackup({
          qmp,
          drives: [{ node: 'd0', name: 'disk' }],
          mode: 'full',
          fleecingDir: dir,
          hostId: 'bench',
          compressor: pool,
          nbdServerSocket: d.nbdSocket,
          maxInFlight: Number(process.env.BENCH_QEMU_INFLIGHT ?? 32),
          ...(process.env.BENCH_QEMU_CONNECTIONS ? { connections: Number(process.env.BENCH_QEMU_CONNECTIONS) } : {}),
          ...(process.env.BENCH_QEMU_READ_KB ? { readSize: Number(process.env.BENCH_QEMU_READ_KB) * 1024 } : {}),
          onWarning: (m) => console.error('warning:', m),
          openOutput: async (c) => FileByteSink.create((out = join(dir, `${c.uuid}.cwa`))),
        });
        const ms = Date.now() - p0;
        const cpu = process.cpuUsage(cpu0);
        const cpuMs = (cpu.user + cpu.system) / 1000;
        backupDone = true;
        const busy = await probe;
        const bytes = statSync(out).size;
        rmSync(out);
        return { ms, bytes, r, busy, cpuMs };
      };
      // Throughput: the guest is idle (as in the baseline, which needs a
      // quiescent image anyway). Paired runs, baseline then pull, ratio per
      // pair: this VM's speed drifts by ±25 % over tens of seconds.
      const pairs: { base: Awaited<ReturnType<typeof baseline>>; pull: Awaited<ReturnType<typeof pull>> }[] = [];
      for (let i = 0; i < pairCount; i++) pairs.push({ base: await baseline(), pull: await pull(false) });
      const ratios = pairs.map((p) => p.base.ms / p.pull.ms);
      const mid = medianBy(pairs, (p) => p.base.ms / p.pull.ms);
      const base = mid.base;
      const baseMs = base.ms;
      const baseBytes = base.bytes;
      const pullMs = mid.pull.ms;
      const pullBytes = mid.pull.bytes;
      const r = mid.pull.r;
      // The ceiling reuses the filter graph's raw node (d0-guest).
      const ceiling = attach === 'filter' ? await readCeiling(qmp, d.nbdSocket, dir, shm) : null;
      // Latency: 4 KiB guest writes at QD1, idle vs during a second full backup.
      const idle = await latencyProbe(d.nbdSocket, () => true, 3000);
      const loaded = await pull(true);
      const busy = loaded.busy;
      await qmp.close();

      const mbps = (ms: number): string => ((size / MiB) / (ms / 1000)).toFixed(0);
      console.log('');
      console.log(`| method | time | throughput (virtual size) | output |`);
      console.log(`|---|---:|---:|---:|`);
      console.log(`| qemu-img convert -O raw + zstd -1 -T0 | ${(baseMs / 1000).toFixed(2)} s (convert ${(base.convertMs / 1000).toFixed(2)} s + zstd ${(base.zstdMs / 1000).toFixed(2)} s) | ${mbps(baseMs)} MiB/s | ${(baseBytes / MiB).toFixed(1)} MiB |`);
      console.log(`| cowstream pull mode (fleecing + NBD) | ${(pullMs / 1000).toFixed(2)} s | ${mbps(pullMs)} MiB/s | ${(pullBytes / MiB).toFixed(1)} MiB |`);
      console.log(`| cowstream pull mode, guest writing at QD1 during it | ${(loaded.ms / 1000).toFixed(2)} s | ${mbps(loaded.ms)} MiB/s | ${(loaded.bytes / MiB).toFixed(1)} MiB |`);
      console.log(`\npairs (baseline / pull seconds): ${pairs.map((p) => `${(p.base.ms / 1000).toFixed(2)}/${(p.pull.ms / 1000).toFixed(2)}`).join(', ')}; ratios ${ratios.map((x) => x.toFixed(2)).join(', ')}`);
      console.log(`ratio pull/baseline throughput: ${median(ratios).toFixed(2)}x, median of ${pairs.length} pairs (goal ≥ 1.0x)`);
      // CPU time is less sensitive than wall time to other load on the machine.
      console.log(`cowstream CPU per pull (this process, all threads): ${(median(pairs.map((p) => p.pull.cpuMs)) / 1000).toFixed(2)} CPU-s median; load average ${loadavg().map((x) => x.toFixed(1)).join(' ')}`);
      if (ceiling) {
        console.log(
          `read ceiling (same fleecing graph, no compression, no archive): nbdcopy → tmpfs ${(ceiling.nbdcopyMs / 1000).toFixed(2)} s, ` +
            `cowstream NbdClient ${(ceiling.clientMs / 1000).toFixed(2)} s for ${(ceiling.bytes / MiB).toFixed(0)} MiB of allocated data ` +
            `(the whole baseline took ${(baseMs / 1000).toFixed(2)} s)`,
        );
      }
      const dev = r.devices[0]!;
      console.log(`graph ${r.graph}: ${(dev.readSize / 1024).toFixed(0)} KiB READs over ${dev.connections} connection(s); read ${(dev.bytesRead / MiB).toFixed(0)} MiB, ${dev.zeroClusters} zero clusters skipped via base:allocation, untrusted status windows: ${dev.untrustedWindows}`);
      console.log('');
      console.log(`| guest 4 KiB writes (QD1) | n | p50 | p99 | max |`);
      console.log(`|---|---:|---:|---:|---:|`);
      for (const [name, l] of [['idle', idle], ['during backup', busy]] as const) {
        console.log(`| ${name} | ${l.length} | ${pct(l, 50).toFixed(2)} ms | ${pct(l, 99).toFixed(2)} ms | ${(l[l.length - 1] ?? NaN).toFixed(2)} ms |`);
      }
    } finally {
      await d.stop();
      await pool.close();
    }
  }
}

main().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});
