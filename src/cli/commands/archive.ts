/**
 * `cowstream archive ...`: offline tools for archive files, modelled on
 * Proxmox's `vma` (create / list / extract / verify; shared/seeds/qemu-vma-backup-rfc.txt).
 *
 * Memory is bounded by configuration, never by image size: images are read
 * sequentially in READ_BATCH chunks (two in flight), the writer holds at most
 * maxInFlightExtents extents, and the zstd pool has a bounded queue.
 */
import type { Command } from 'commander';
import { type FileHandle, mkdir, open, readFile, readdir, stat, unlink } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { hostname } from 'node:os';
import { CowstreamError, EncryptionKeyError, UsageError } from '../../errors.js';
import { ZstdPool, MAX_ZSTD_LEVEL, MIN_ZSTD_LEVEL } from '../../codec/zstd-pool.js';
import { readKeyFile } from '../../codec/crypto.js';
import { ArchiveWriter, type ArchiveSummary } from '../../format/writer.js';
import { openArchive, type ArchiveReader } from '../../format/reader.js';
import { CLUSTER_SIZE, MAX_DEVICES, ZERO_BLOCK_SIZE } from '../../format/constants.js';
import { NAME_PATTERN, MAX_NAME_LENGTH } from '../../format/layout.js';
import { FileByteSink, FileRangeSource } from '../../store/file.js';
import { constants as fsc } from 'node:fs';
import { formatBytes, formatRate, parsePositiveInt, printJson } from '../output.js';
import { describeVerifyReport, verifyReport } from '../verify-report.js';
import { progressWanted, startProgress } from '../progress.js';

/** Image bytes per read: 16 clusters, large enough to amortise syscalls, small enough to stay cache-friendly. */
const READ_BATCH = 16 * CLUSTER_SIZE;
const ZERO_CLUSTER = Buffer.alloc(CLUSTER_SIZE);
const ZERO_BLOCK = Buffer.alloc(ZERO_BLOCK_SIZE);

interface DeviceSpec {
  id: number;
  name: string;
  path: string;
  size: number;
}

// ---------------------------------------------------------------- validation

function checkDeviceName(name: string, spec: string): void {
  if (Buffer.byteLength(name, 'utf8') > MAX_NAME_LENGTH || !NAME_PATTERN.test(name)) {
    throw new UsageError(
      `bad device name in "${spec}": names are 1..${MAX_NAME_LENGTH} characters of [A-Za-z0-9._-], starting with a letter or digit`,
    );
  }
}

/** Parses NAME=IMAGE arguments (syntax, names, duplicates, count). */
export function parseDeviceSpecs(specs: string[]): Array<{ name: string; path: string }> {
  if (specs.length === 0) throw new UsageError('no devices given: expected one or more NAME=IMAGE arguments');
  if (specs.length > MAX_DEVICES) throw new UsageError(`too many devices: ${specs.length} given, an archive holds at most ${MAX_DEVICES}`);
  const seen = new Set<string>();
  return specs.map((spec) => {
    const eq = spec.indexOf('=');
    if (eq <= 0 || eq === spec.length - 1) throw new UsageError(`bad device argument "${spec}": expected NAME=IMAGE`);
    const name = spec.slice(0, eq);
    const path = spec.slice(eq + 1);
    checkDeviceName(name, spec);
    if (seen.has(name)) throw new UsageError(`duplicate device name "${name}"`);
    seen.add(name);
    return { name, path };
  });
}

/** Size of a block device from sysfs (node has no BLKGETSIZE64 ioctl); /sys/dev/block/MAJ:MIN/size is in 512-byte sectors. */
async function blockDeviceSize(path: string, rdev: number): Promise<number> {
  const major = Number((BigInt(rdev) >> 8n) & 0xfffn);
  const minor = Number((BigInt(rdev) & 0xffn) | ((BigInt(rdev) >> 12n) & 0xfff00n));
  try {
    const text = await readFile(`/sys/dev/block/${major}:${minor}/size`, 'utf8');
    return Number(text.trim()) * 512;
  } catch (err) {
    throw new UsageError(`cannot determine the size of block device ${path}`, { cause: err });
  }
}

async function resolveImages(specs: Array<{ name: string; path: string }>): Promise<DeviceSpec[]> {
  const out: DeviceSpec[] = [];
  for (const [id, s] of specs.entries()) {
    let st;
    try {
      st = await stat(s.path);
    } catch (err) {
      throw new UsageError(`image for device "${s.name}" not found: ${s.path}`, { cause: err });
    }
    let size: number;
    if (st.isFile()) size = st.size;
    else if (st.isBlockDevice()) size = await blockDeviceSize(s.path, st.rdev);
    else throw new UsageError(`image for device "${s.name}" is neither a file nor a block device: ${s.path}`);
    if (size < 1) throw new UsageError(`image for device "${s.name}" is empty: ${s.path}`);
    out.push({ id, name: s.name, path: s.path, size });
  }
  return out;
}

async function readConfigs(paths: string[]): Promise<Array<{ name: string; data: Buffer }>> {
  const seen = new Set<string>();
  const out: Array<{ name: string; data: Buffer }> = [];
  for (const p of paths) {
    const name = basename(p);
    if (!NAME_PATTERN.test(name) || Buffer.byteLength(name) > MAX_NAME_LENGTH) {
      throw new UsageError(`config file name "${name}" must be 1..${MAX_NAME_LENGTH} characters of [A-Za-z0-9._-]`);
    }
    if (seen.has(name)) throw new UsageError(`duplicate config file name "${name}"`);
    seen.add(name);
    let data: Buffer;
    try {
      const st = await stat(p);
      if (!st.isFile()) throw new UsageError(`config file ${p} is not a regular file`);
      // The writer enforces the format's size limit; this only stops absurd reads.
      if (st.size > 64 * 1024 * 1024) throw new UsageError(`config file ${p} is too large (${formatBytes(st.size)})`);
      data = await readFile(p);
    } catch (err) {
      if (err instanceof UsageError) throw err;
      throw new UsageError(`cannot read config file ${p}: ${(err as Error).message}`, { cause: err });
    }
    out.push({ name, data });
  }
  return out;
}

/** Parses --level: an integer MIN_ZSTD_LEVEL..MAX_ZSTD_LEVEL. */
export function parseLevel(text: string): number {
  if (!/^-?\d+$/.test(text.trim())) throw new UsageError(`--level must be an integer ${MIN_ZSTD_LEVEL}..${MAX_ZSTD_LEVEL}, got "${text}"`);
  const n = Number(text);
  if (n < MIN_ZSTD_LEVEL || n > MAX_ZSTD_LEVEL) {
    throw new UsageError(`--level must be between ${MIN_ZSTD_LEVEL} and ${MAX_ZSTD_LEVEL} (zstd levels), got ${n}`);
  }
  return n;
}

function collect(value: string, previous: string[]): string[] {
  return [...previous, value];
}

// -------------------------------------------------------------------- create

/** Reads exactly buf.length bytes at `pos` (fewer only at EOF). */
async function readFull(fh: FileHandle, buf: Buffer, pos: number): Promise<number> {
  let done = 0;
  while (done < buf.length) {
    const { bytesRead } = await fh.read(buf, done, buf.length - done, pos + done);
    if (bytesRead === 0) break;
    done += bytesRead;
  }
  return done;
}

/**
 * Streams one image into the writer: sequential READ_BATCH reads with one
 * read ahead (two buffers), all-zero clusters batched into writeZeroes runs
 * (one memcmp per cluster), the rest handed over cluster by cluster.
 */
async function archiveImage(writer: ArchiveWriter, dev: DeviceSpec, onBytes: (n: number) => void): Promise<void> {
  let fh: FileHandle;
  try {
    fh = await open(dev.path, 'r');
  } catch (err) {
    throw new UsageError(`cannot open image ${dev.path}: ${(err as Error).message}`, { cause: err });
  }
  try {
    const bufs = [Buffer.allocUnsafe(READ_BATCH), Buffer.allocUnsafe(READ_BATCH)];
    const readAt = (i: number, pos: number): Promise<number> => {
      const want = Math.min(READ_BATCH, dev.size - pos);
      return readFull(fh, bufs[i].subarray(0, want), pos);
    };
    let zeroStart = -1;
    let zeroCount = 0;
    const flushZeros = async (): Promise<void> => {
      if (zeroCount > 0) await writer.writeZeroes(dev.id, zeroStart, zeroCount);
      zeroStart = -1;
      zeroCount = 0;
    };
    let pos = 0;
    let which = 0;
    let pending: Promise<number> | undefined = readAt(0, 0);
    while (pending !== undefined) {
      const got: number = await pending;
      const want = Math.min(READ_BATCH, dev.size - pos);
      if (got !== want) throw new CowstreamError(`image ${dev.path} shrank while reading: got ${got} of ${want} bytes at offset ${pos}`);
      const buf = bufs[which];
      const nextPos: number = pos + got;
      // Read ahead into the other buffer while this one is handed to the writer
      // (writeCluster copies the data before it resolves, so reuse is safe).
      pending = nextPos < dev.size ? readAt(1 - which, nextPos) : undefined;
      for (let off = 0; off < got; off += CLUSTER_SIZE) {
        const cluster = (pos + off) / CLUSTER_SIZE;
        const data = buf.subarray(off, Math.min(off + CLUSTER_SIZE, got));
        if (data.equals(data.length === CLUSTER_SIZE ? ZERO_CLUSTER : ZERO_CLUSTER.subarray(0, data.length))) {
          if (zeroCount === 0) zeroStart = cluster;
          zeroCount++;
          continue;
        }
        await flushZeros();
        await writer.writeCluster(dev.id, cluster, data);
      }
      pos = nextPos;
      which = 1 - which;
      onBytes(pos);
    }
    await flushZeros();
  } finally {
    await fh.close().catch(() => undefined);
  }
}

interface CreateOptions {
  configFile: string[];
  level: string;
  key?: string;
  hostId?: string;
  workers?: string;
  json?: boolean;
  progress?: boolean;
}

export interface CreateResult extends ArchiveSummary {
  path: string;
  imageBytes: number;
  seconds: number;
}

async function createArchive(out: string, specs: string[], opts: CreateOptions): Promise<CreateResult> {
  const level = parseLevel(opts.level);
  const workers = opts.workers !== undefined ? parsePositiveInt(opts.workers, '--workers', 256) : undefined;
  const hostId = opts.hostId ?? hostname();
  if (hostId.length === 0 || Buffer.byteLength(hostId) > 255) throw new UsageError('--host-id must be 1..255 bytes');
  const devices = await resolveImages(parseDeviceSpecs(specs));
  const configs = await readConfigs(opts.configFile);
  const key = opts.key !== undefined ? await readKeyFile(opts.key) : undefined;
  if (out === '-' && process.stdout.isTTY) throw new UsageError('refusing to write an archive to a terminal; redirect stdout');

  const started = Date.now();
  const pool = new ZstdPool({ level, workers });
  try {
    const output = await FileByteSink.create(out);
    let writer: ArchiveWriter;
    try {
      writer = await ArchiveWriter.create({
        hostId,
        devices: devices.map(({ id, name, size }) => ({ id, name, size })),
        configs,
        compressor: pool,
        encryptionKey: key,
        output,
      });
    } catch (err) {
      await output.abort(err).catch(() => undefined);
      throw err;
    }
    const total = devices.reduce((a, d) => a + d.size, 0);
    const progress = startProgress({ label: 'archive', enabled: progressWanted(opts) });
    try {
      let base = 0;
      for (const dev of devices) {
        await archiveImage(writer, dev, (n) => progress.update(base + n, total));
        base += dev.size;
      }
      const summary = await writer.finish();
      progress.stop();
      return { path: out, imageBytes: total, seconds: (Date.now() - started) / 1000, ...summary };
    } catch (err) {
      progress.stop();
      await writer.abort(err);
      throw err;
    }
  } finally {
    await pool.close();
  }
}

function ratio(a: number, b: number): number {
  return b > 0 ? Math.round((a / b) * 1000) / 1000 : 0;
}

// ---------------------------------------------------------------- list

async function withReader<T>(path: string, opts: { key?: Buffer; pool?: ZstdPool }, fn: (r: ArchiveReader) => Promise<T>): Promise<T> {
  const source = await FileRangeSource.open(path);
  let reader: ArchiveReader;
  try {
    reader = await openArchive(source, { key: opts.key, compressor: opts.pool });
  } catch (err) {
    await source.close();
    throw err;
  }
  try {
    return await fn(reader);
  } finally {
    await reader.close();
  }
}

export interface ListResult {
  path: string;
  archiveBytes: number;
  header: {
    version: number;
    uuid: string;
    parentUuid: string | null;
    createdAt: string;
    hostId: string;
    codec: string;
    encryption: string;
    keyFingerprint: string | null;
    clusterSize: number;
    zeroBlockSize: number;
  };
  devices: Array<{ id: number; name: string; size: number; dataClusters: number; zeroClusters: number; absentClusters: number }>;
  configs: Array<{ name: string; size: number }>;
  totals: {
    extentCount: number;
    clusterCount: number;
    dataBytes: number;
    zeroBytes: number;
    storedBytes: number;
    logicalBytes: number;
    /** Non-zero data bytes / stored payload bytes. */
    compressionRatio: number;
    /** Logical device bytes / archive file bytes (counts zero runs as savings too). */
    overallRatio: number;
  };
}

function describe(reader: ArchiveReader, path: string): ListResult {
  const h = reader.header;
  const f = reader.footer;
  const devices = h.devices.map((d) => {
    const clusters = Math.ceil(d.size / CLUSTER_SIZE);
    let data = 0;
    let zero = 0;
    for (const r of reader.index.dataRuns) if (r.deviceId === d.id) data += r.count;
    for (const r of reader.index.zeroRuns) if (r.deviceId === d.id) zero += r.count;
    return { id: d.id, name: d.name, size: d.size, dataClusters: data, zeroClusters: zero, absentClusters: clusters - data - zero };
  });
  const logicalBytes = h.devices.reduce((a, d) => a + d.size, 0);
  return {
    path,
    archiveBytes: reader.source.size,
    header: {
      version: h.version,
      uuid: h.uuid,
      parentUuid: h.parentUuid,
      createdAt: new Date(h.createdAt).toISOString(),
      hostId: h.hostId,
      codec: h.codec,
      encryption: h.encryption,
      keyFingerprint: h.keyFingerprint,
      clusterSize: h.clusterSize,
      zeroBlockSize: h.zeroBlockSize,
    },
    devices,
    configs: h.configs.map((c) => ({ name: c.name, size: c.data.length })),
    totals: {
      extentCount: f.extentCount,
      clusterCount: f.clusterCount,
      dataBytes: f.dataBytes,
      zeroBytes: f.zeroBytes,
      storedBytes: f.storedBytes,
      logicalBytes,
      compressionRatio: ratio(f.dataBytes, f.storedBytes),
      overallRatio: ratio(logicalBytes, reader.source.size),
    },
  };
}

function printList(l: ListResult): void {
  const h = l.header;
  const lines = [
    `archive   ${l.path} (${formatBytes(l.archiveBytes)})`,
    `uuid      ${h.uuid}${h.parentUuid ? `  (incremental, parent ${h.parentUuid})` : '  (full)'}`,
    `created   ${h.createdAt} on host ${h.hostId}`,
    `format    v${h.version}, ${h.codec}, clusters ${formatBytes(h.clusterSize)}, zero blocks ${formatBytes(h.zeroBlockSize)}`,
    `encrypted ${h.encryption === 'none' ? 'no' : `${h.encryption}, key fingerprint ${h.keyFingerprint}`}`,
    'devices:',
    ...l.devices.map(
      (d) =>
        `  ${String(d.id).padStart(3)} ${d.name.padEnd(20)} ${formatBytes(d.size).padStart(10)} ` +
        `data ${d.dataClusters} zero ${d.zeroClusters}${d.absentClusters ? ` absent ${d.absentClusters}` : ''} clusters`,
    ),
    l.configs.length === 0 ? 'configs   (none)' : 'configs:',
    ...l.configs.map((c) => `  ${c.name} (${formatBytes(c.size)})`),
    `totals    ${l.totals.extentCount} extents, ${l.totals.clusterCount} stored clusters`,
    `          data ${formatBytes(l.totals.dataBytes)}, zero ${formatBytes(l.totals.zeroBytes)}, stored ${formatBytes(l.totals.storedBytes)}`,
    `ratio     ${l.totals.compressionRatio}x compression of data, ${l.totals.overallRatio}x logical/archive`,
  ];
  process.stdout.write(lines.join('\n') + '\n');
}

// ---------------------------------------------------------------- extract

async function ensureEmptyDir(dir: string): Promise<void> {
  let st;
  try {
    st = await stat(dir);
  } catch {
    await mkdir(dir, { recursive: true });
    return;
  }
  if (!st.isDirectory()) throw new UsageError(`${dir} exists and is not a directory`);
  if ((await readdir(dir)).length > 0) throw new UsageError(`refusing to extract into non-empty directory ${dir}`);
}

/**
 * Writes the non-zero 4 KiB blocks of a decoded cluster, coalescing adjacent
 * ones; zero blocks are skipped so they stay holes of the sparse file.
 */
async function writeSparse(fh: FileHandle, data: Buffer, base: number): Promise<number> {
  let written = 0;
  let runStart = -1;
  const flush = async (end: number): Promise<void> => {
    const len = end - runStart;
    let done = 0;
    while (done < len) done += (await fh.write(data, runStart + done, len - done, base + runStart + done)).bytesWritten;
    written += len;
    runStart = -1;
  };
  for (let off = 0; off < data.length; off += ZERO_BLOCK_SIZE) {
    const end = Math.min(off + ZERO_BLOCK_SIZE, data.length);
    const zero = data.subarray(off, end).equals(end - off === ZERO_BLOCK_SIZE ? ZERO_BLOCK : ZERO_BLOCK.subarray(0, end - off));
    if (!zero && runStart < 0) runStart = off;
    else if (zero && runStart >= 0) await flush(off);
  }
  if (runStart >= 0) await flush(data.length);
  return written;
}

export interface ExtractResult {
  dir: string;
  devices: Array<{ name: string; path: string; size: number; bytesWritten: number; absentClusters: number }>;
  configs: Array<{ name: string; path: string; size: number }>;
}

/** Extracts every device and config into `dir`; `onProgress` sees archive bytes decoded of the extents' total. */
async function extractArchive(reader: ArchiveReader, dir: string, pool: ZstdPool, onProgress?: (done: number, total: number) => void): Promise<ExtractResult> {
  const h = reader.header;
  const fileNames = new Set(h.devices.map((d) => `${d.name}.raw`));
  for (const c of h.configs) {
    if (fileNames.has(c.name)) throw new UsageError(`config "${c.name}" has the same file name as a device image; cannot extract both`);
  }
  const listing = describe(reader, '');
  const handles = new Map<number, FileHandle>();
  const result: ExtractResult = { dir, devices: [], configs: [] };
  const created: string[] = [];
  try {
    for (const d of h.devices) {
      const path = join(dir, `${d.name}.raw`);
      const fh = await open(path, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL | fsc.O_NOFOLLOW, 0o600);
      created.push(path);
      handles.set(d.id, fh);
      // Size first: every cluster we do not write (zero runs, zero blocks) stays a hole.
      await fh.truncate(d.size);
      const info = listing.devices.find((x) => x.id === d.id)!;
      result.devices.push({ name: d.name, path, size: d.size, bytesWritten: 0, absentClusters: info.absentClusters });
    }
    const byId = new Map(result.devices.map((d, i) => [h.devices[i].id, d]));
    const extents = reader.index.extents;
    const total = extents.reduce((a, x) => a + x.length, 0);
    // Decode up to workers+1 extents concurrently (bounded), write them in any order.
    const limit = pool.workerCount + 1;
    let next = 0;
    let done = 0;
    const worker = async (): Promise<void> => {
      while (next < extents.length) {
        const x = extents[next++];
        const clusters = await reader.readExtent(x.offset, x.length);
        for (const c of clusters) {
          const fh = handles.get(c.deviceId);
          const dev = byId.get(c.deviceId);
          if (!fh || !dev) throw new CowstreamError(`extent ${x.seq} holds unknown device id ${c.deviceId}`);
          // Await first, then add: `x += await f()` reads x before the await and
          // loses the other workers' additions made meanwhile.
          const n = await writeSparse(fh, c.data, c.cluster * CLUSTER_SIZE);
          dev.bytesWritten += n;
        }
        done += x.length;
        onProgress?.(done, total);
      }
    };
    await Promise.all(Array.from({ length: Math.min(limit, extents.length) }, worker));
    for (const fh of handles.values()) await fh.sync();
    for (const c of h.configs) {
      const path = join(dir, c.name);
      const fh = await open(path, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL | fsc.O_NOFOLLOW, 0o600);
      created.push(path);
      try {
        await fh.writeFile(c.data);
      } finally {
        await fh.close();
      }
      result.configs.push({ name: c.name, path, size: c.data.length });
    }
  } catch (err) {
    // Leave no half-extracted images that could be mistaken for good ones.
    for (const fh of handles.values()) await fh.close().catch(() => undefined);
    handles.clear();
    for (const p of created) await unlink(p).catch(() => undefined);
    throw err;
  } finally {
    for (const fh of handles.values()) await fh.close().catch(() => undefined);
  }
  return result;
}

// ---------------------------------------------------------------- register

/** `cowstream archive ...`: create, list, extract and verify archive files. */
export function registerArchiveCommands(program: Command): void {
  const archive = program
    .command('archive')
    .description('offline archive tools (like vma): create from image files, list, extract, verify');

  archive
    .command('create')
    .description('create a full archive of image files or block devices ("-" writes the archive to stdout)')
    .argument('<out>', 'archive file to write (.cwa), or - for stdout')
    .argument('<devices...>', 'NAME=IMAGE pairs: device name in the archive = image file or block device')
    .option('--config-file <file>', 'store a config file (e.g. a VM config) in the header; repeatable', collect, [])
    .option('--level <n>', `zstd level ${MIN_ZSTD_LEVEL}..${MAX_ZSTD_LEVEL}`, '1')
    .option('--key <file>', 'encrypt with this key file (cowstream key create): extents and configs sealed with AES-256-GCM, header and index authenticated')
    .option('--host-id <id>', 'host id recorded in the header (default: this host name)')
    .option('--workers <n>', 'compression worker threads (default: one per core)')
    .option('--progress', 'show a progress bar on stderr even when it is not a terminal')
    .option('--json', 'print the summary as JSON (on stderr when the archive goes to stdout)')
    .action(async (out: string, devices: string[], opts: CreateOptions) => {
      const r = await createArchive(out, devices, opts);
      const toStdout = out === '-';
      if (opts.json) {
        const text = JSON.stringify({ ok: true, ...r, compressionRatio: ratio(r.dataBytes, r.storedBytes), overallRatio: ratio(r.imageBytes, r.bytesWritten) }, null, 2) + '\n';
        if (toStdout) process.stderr.write(text);
        else printJson(JSON.parse(text));
        return;
      }
      const msg =
        `created ${toStdout ? 'archive on stdout' : r.path} uuid ${r.uuid}\n` +
        `  ${formatBytes(r.imageBytes)} of images → ${formatBytes(r.bytesWritten)} archive in ${r.seconds.toFixed(1)} s (${formatRate(r.imageBytes, r.seconds)})\n` +
        `  ${r.extentCount} extents, data ${formatBytes(r.dataBytes)} → stored ${formatBytes(r.storedBytes)} ` +
        `(${ratio(r.dataBytes, r.storedBytes)}x), zero ${formatBytes(r.zeroBytes)}\n`;
      (toStdout ? process.stderr : process.stdout).write(msg);
    });

  archive
    .command('list')
    .description('show header, devices, configs, totals and compression ratio')
    .argument('<archive>', 'archive file')
    .option('--json', 'print as JSON')
    .action(async (path: string, opts: { json?: boolean }) => {
      const l = await withReader(path, {}, async (r) => describe(r, path));
      if (opts.json) printJson({ ok: true, ...l });
      else printList(l);
    });

  archive
    .command('extract')
    .description('write <dir>/<NAME>.raw sparse images (zero runs become holes) plus the config files')
    .argument('<archive>', 'archive file')
    .argument('<dir>', 'target directory (created; must be empty if it exists)')
    .option('--key <file>', 'key file for an encrypted archive')
    .option('--progress', 'show a progress bar on stderr even when it is not a terminal')
    .option('--json', 'print the result as JSON')
    .action(async (path: string, dir: string, opts: { key?: string; json?: boolean; progress?: boolean }) => {
      const key = opts.key !== undefined ? await readKeyFile(opts.key) : undefined;
      const pool = new ZstdPool();
      try {
        const r = await withReader(path, { key, pool }, async (reader) => {
          // Check everything that can fail early before touching the target directory.
          if (reader.encrypted && key === undefined) {
            throw new EncryptionKeyError(`${path} is encrypted: pass --key (key fingerprint ${reader.header.keyFingerprint})`);
          }
          await ensureEmptyDir(dir);
          const progress = startProgress({ label: 'extract', enabled: progressWanted(opts) });
          try {
            return await extractArchive(reader, dir, pool, (done, total) => progress.update(done, total));
          } finally {
            progress.stop();
          }
        });
        if (opts.json) {
          printJson({ ok: true, ...r });
        } else {
          for (const d of r.devices) {
            const absent = d.absentClusters ? ` (${d.absentClusters} clusters absent: they live in the parent archive)` : '';
            process.stdout.write(`${d.path}  ${formatBytes(d.size)}, ${formatBytes(d.bytesWritten)} written${absent}\n`);
          }
          for (const c of r.configs) process.stdout.write(`${c.path}  config, ${formatBytes(c.size)}\n`);
        }
      } finally {
        await pool.close();
      }
    });

  archive
    .command('verify')
    .description('check every checksum (header, extents, plaintext, trailer, footer); exit 0 only when all are good')
    .argument('<archive>', 'archive file')
    .option('--key <file>', 'key file: also authenticate header, index and configs and check the plaintext of an encrypted archive')
    .option('--progress', 'show a progress bar on stderr even when it is not a terminal')
    .option('--json', 'print the result as JSON')
    .action(async (path: string, opts: { key?: string; json?: boolean; progress?: boolean }) => {
      const key = opts.key !== undefined ? await readKeyFile(opts.key) : undefined;
      const pool = new ZstdPool();
      try {
        const r = await withReader(path, { key, pool }, async (reader) => {
          const progress = startProgress({ label: 'verify', enabled: progressWanted(opts) });
          try {
            return await verifyReport(reader, path, (done, total) => progress.update(done, total));
          } finally {
            progress.stop();
          }
        });
        if (opts.json) printJson(r);
        else process.stdout.write(describeVerifyReport(r));
        if (!r.ok) process.exitCode = 1;
      } finally {
        await pool.close();
      }
    });
}
