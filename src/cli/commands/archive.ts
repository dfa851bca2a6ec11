/**
 * `cowstream archive ...`: offline tools for archive files, modelled on
 * Proxmox's `vma` (create / list / extract / verify; shared/seeds/qemu-vma-backup-rfc.txt).
 * This file handles the arguments and the output; creating an archive is
 * src/backup/image-archive.ts, extracting one src/restore/extract.ts.
 */
import type { Command } from 'commander';
import { readFile, stat } from 'node:fs/promises';
import { basename } from 'node:path';
import { hostname } from 'node:os';
import { EncryptionKeyError, UsageError } from '../../errors.js';
import { ZstdPool, MAX_ZSTD_LEVEL, MIN_ZSTD_LEVEL } from '../../codec/zstd-pool.js';
import { readKeyFile } from '../../codec/crypto.js';
import { openArchive, type ArchiveReader } from '../../format/reader.js';
import { MAX_DEVICES } from '../../format/constants.js';
import { NAME_PATTERN, MAX_NAME_LENGTH } from '../../format/layout.js';
import { FileRangeSource } from '../../store/file.js';
import { createImageArchive, resolveImages, type ImageArchiveResult } from '../../backup/image-archive.js';
import { deviceClusterCounts, ensureEmptyDir, extractArchive } from '../../restore/extract.js';
import { formatBytes, formatRate, parsePositiveInt, printJson } from '../output.js';
import { describeVerifyReport, verifyReport } from '../verify-report.js';
import { withProgress } from '../progress.js';

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

interface CreateOptions {
  configFile: string[];
  level: string;
  key?: string;
  hostId?: string;
  workers?: string;
  json?: boolean;
  progress?: boolean;
}

/** Checks the arguments of `archive create` and writes the archive. */
async function createArchive(out: string, specs: string[], opts: CreateOptions): Promise<ImageArchiveResult> {
  const level = parseLevel(opts.level);
  const workers = opts.workers !== undefined ? parsePositiveInt(opts.workers, '--workers', 256) : undefined;
  const hostId = opts.hostId ?? hostname();
  if (hostId.length === 0 || Buffer.byteLength(hostId) > 255) throw new UsageError('--host-id must be 1..255 bytes');
  const devices = await resolveImages(parseDeviceSpecs(specs));
  const configs = await readConfigs(opts.configFile);
  const key = opts.key !== undefined ? await readKeyFile(opts.key) : undefined;
  if (out === '-' && process.stdout.isTTY) throw new UsageError('refusing to write an archive to a terminal; redirect stdout');
  return withProgress('archive', opts, (onProgress) => createImageArchive({ out, hostId, devices, configs, encryptionKey: key, level, workers, onProgress }));
}

function printCreated(r: ImageArchiveResult, toStdout: boolean, json: boolean | undefined): void {
  if (json) {
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
  const counts = deviceClusterCounts(reader);
  const devices = h.devices.map((d, i) => {
    const { dataClusters, zeroClusters, absentClusters } = counts[i]!;
    return { id: d.id, name: d.name, size: d.size, dataClusters, zeroClusters, absentClusters };
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

// ---------------------------------------------------------------- extract, verify

interface ReadFlags {
  key?: string;
  json?: boolean;
  progress?: boolean;
}

async function runExtract(path: string, dir: string, opts: ReadFlags): Promise<void> {
  const key = opts.key !== undefined ? await readKeyFile(opts.key) : undefined;
  const pool = new ZstdPool();
  try {
    const r = await withReader(path, { key, pool }, async (reader) => {
      // Check everything that can fail early before touching the target directory.
      if (reader.encrypted && key === undefined) {
        throw new EncryptionKeyError(`${path} is encrypted: pass --key (key fingerprint ${reader.header.keyFingerprint})`);
      }
      await ensureEmptyDir(dir);
      // Decode up to workers+1 extents concurrently (bounded), write them in any order.
      return withProgress('extract', opts, (onProgress) => extractArchive(reader, dir, { concurrency: pool.workerCount + 1, onProgress }));
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
}

async function runVerify(path: string, opts: ReadFlags): Promise<void> {
  const key = opts.key !== undefined ? await readKeyFile(opts.key) : undefined;
  const pool = new ZstdPool();
  try {
    const r = await withReader(path, { key, pool }, (reader) => withProgress('verify', opts, (onProgress) => verifyReport(reader, path, onProgress)));
    if (opts.json) printJson(r);
    else process.stdout.write(describeVerifyReport(r));
    if (!r.ok) process.exitCode = 1;
  } finally {
    await pool.close();
  }
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
    .action(async (out: string, devices: string[], opts: CreateOptions) => printCreated(await createArchive(out, devices, opts), out === '-', opts.json));

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
    .action(runExtract);

  archive
    .command('verify')
    .description('check every checksum (header, extents, plaintext, trailer, footer); exit 0 only when all are good')
    .argument('<archive>', 'archive file')
    .option('--key <file>', 'key file: also authenticate header, index and configs and check the plaintext of an encrypted archive')
    .option('--progress', 'show a progress bar on stderr even when it is not a terminal')
    .option('--json', 'print the result as JSON')
    .action(runVerify);
}
