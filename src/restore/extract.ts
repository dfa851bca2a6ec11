/**
 * Extracts an archive file into a directory (`cowstream archive extract`):
 * `<dir>/<NAME>.raw` sparse images plus the config files. Unlike a restore
 * (engine.ts) it follows no chain: clusters an incremental archive does not
 * hold stay holes and are counted as absent.
 *
 * Files are created O_EXCL | O_NOFOLLOW with mode 0600; a failed extraction
 * removes every file it created.
 */
import { constants as fsc } from 'node:fs';
import { type FileHandle, mkdir, open, readdir, stat, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { writeAll } from '../device/file-io.js';
import { CowstreamError, UsageError } from '../errors.js';
import { CLUSTER_SIZE, ZERO_BLOCK_SIZE } from '../format/constants.js';
import { zeroMaskOf } from '../format/extent.js';
import type { ArchiveReader } from '../format/reader.js';
import { pool } from './pool.js';

export interface ExtractResult {
  dir: string;
  devices: Array<{ name: string; path: string; size: number; bytesWritten: number; absentClusters: number }>;
  configs: Array<{ name: string; path: string; size: number }>;
}

interface DeviceOutput {
  fh: FileHandle;
  dev: ExtractResult['devices'][number];
}

export interface ExtractOptions {
  /** Extents decoded at once (bounded; e.g. the zstd pool's workers + 1). */
  concurrency: number;
  /** Archive bytes decoded so far, of the extents' total. */
  onProgress?: (done: number, total: number) => void;
}

/** Clusters of each device the archive holds as data, as zero runs, and not at all (left to the parent archive). */
export function deviceClusterCounts(reader: ArchiveReader): Array<{ id: number; dataClusters: number; zeroClusters: number; absentClusters: number }> {
  return reader.header.devices.map((d) => {
    const clusters = Math.ceil(d.size / CLUSTER_SIZE);
    let data = 0;
    let zero = 0;
    for (const r of reader.index.dataRuns) if (r.deviceId === d.id) data += r.count;
    for (const r of reader.index.zeroRuns) if (r.deviceId === d.id) zero += r.count;
    return { id: d.id, dataClusters: data, zeroClusters: zero, absentClusters: clusters - data - zero };
  });
}

/** Creates `dir`, or accepts it when it is an empty directory. */
export async function ensureEmptyDir(dir: string): Promise<void> {
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
    await writeAll(fh, data.subarray(runStart, end), base + runStart);
    written += end - runStart;
    runStart = -1;
  };
  const zeroMask = zeroMaskOf(data);
  for (let i = 0, off = 0; off < data.length; i++, off += ZERO_BLOCK_SIZE) {
    const zero = (zeroMask & (1 << i)) !== 0;
    if (!zero && runStart < 0) runStart = off;
    else if (zero && runStart >= 0) await flush(off);
  }
  if (runStart >= 0) await flush(data.length);
  return written;
}

/** Extracts every device and config into `dir` (which ensureEmptyDir prepared). */
export async function extractArchive(reader: ArchiveReader, dir: string, o: ExtractOptions): Promise<ExtractResult> {
  const h = reader.header;
  const fileNames = new Set(h.devices.map((d) => `${d.name}.raw`));
  for (const c of h.configs) {
    if (fileNames.has(c.name)) throw new UsageError(`config "${c.name}" has the same file name as a device image; cannot extract both`);
  }
  const counts = deviceClusterCounts(reader);
  /** Archive device id → its open image and its entry of the result. */
  const outputs = new Map<number, DeviceOutput>();
  const result: ExtractResult = { dir, devices: [], configs: [] };
  const created: string[] = [];
  try {
    for (const d of h.devices) {
      const path = join(dir, `${d.name}.raw`);
      const fh = await open(path, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL | fsc.O_NOFOLLOW, 0o600);
      created.push(path);
      const info = counts.find((x) => x.id === d.id)!;
      const dev = { name: d.name, path, size: d.size, bytesWritten: 0, absentClusters: info.absentClusters };
      outputs.set(d.id, { fh, dev });
      result.devices.push(dev);
      // Size first: every cluster we do not write (zero runs, zero blocks) stays a hole.
      await fh.truncate(d.size);
    }
    await extractImages(reader, outputs, o);
    for (const { fh } of outputs.values()) await fh.sync();
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
    for (const { fh } of outputs.values()) await fh.close().catch(() => undefined);
    outputs.clear();
    for (const p of created) await unlink(p).catch(() => undefined);
    throw err;
  } finally {
    for (const { fh } of outputs.values()) await fh.close().catch(() => undefined);
  }
  return result;
}

/** Decodes up to `concurrency` extents at once and writes their clusters, in any order. */
async function extractImages(reader: ArchiveReader, outputs: Map<number, DeviceOutput>, o: ExtractOptions): Promise<void> {
  const extents = reader.index.extents;
  const total = extents.reduce((a, x) => a + x.length, 0);
  let done = 0;
  await pool(extents, o.concurrency, async (x) => {
    const clusters = await reader.readExtent(x.offset, x.length);
    for (const c of clusters) {
      const out = outputs.get(c.deviceId);
      if (!out) throw new CowstreamError(`extent ${x.seq} holds unknown device id ${c.deviceId}`);
      // Await first, then add: `x += await f()` reads x before the await and
      // loses the other workers' additions made meanwhile.
      const n = await writeSparse(out.fh, c.data, c.cluster * CLUSTER_SIZE);
      out.dev.bytesWritten += n;
    }
    done += x.length;
    o.onProgress?.(done, total);
  });
}
