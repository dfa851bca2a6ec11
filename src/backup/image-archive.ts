/**
 * A full archive of image files or block devices (`cowstream archive
 * create`), through the backup pipeline (pipeline.ts) with a job that reads
 * the images; images have no dirty bitmaps to complete.
 *
 * Memory is bounded by configuration, never by image size: images are read
 * sequentially in READ_BATCH chunks (two in flight), the writer holds at most
 * maxInFlightExtents extents, and the zstd pool has a bounded queue.
 */
import { type FileHandle, open, readFile, stat } from 'node:fs/promises';
import { CowstreamError, UsageError } from '../errors.js';
import { ZstdPool } from '../codec/zstd-pool.js';
import type { ArchiveSummary, ArchiveWriter } from '../format/writer.js';
import { CLUSTER_SIZE } from '../format/constants.js';
import { FileByteSink } from '../store/file.js';
import { runArchivePipeline } from './pipeline.js';

/** Image bytes per read: 16 clusters, large enough to amortise syscalls, small enough to stay cache-friendly. */
const READ_BATCH = 16 * CLUSTER_SIZE;
const ZERO_CLUSTER = Buffer.alloc(CLUSTER_SIZE);

/** One image of the archive: device id and name in the archive, path and size on disk. */
export interface ImageDevice {
  id: number;
  name: string;
  path: string;
  size: number;
}

export interface ImageArchiveOptions {
  /** Archive file to write, or `-` for stdout. */
  out: string;
  hostId: string;
  devices: ImageDevice[];
  configs: { name: string; data: Buffer }[];
  encryptionKey?: Buffer;
  /** zstd level and compression threads (default: one per core). */
  level: number;
  workers?: number;
  /** Image bytes read so far, of the images' total. */
  onProgress?: (done: number, total: number) => void;
}

export interface ImageArchiveResult extends ArchiveSummary {
  path: string;
  imageBytes: number;
  seconds: number;
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

/** Device ids (in order) and sizes of NAME=IMAGE pairs; each image must be a non-empty file or block device. */
export async function resolveImages(specs: Array<{ name: string; path: string }>): Promise<ImageDevice[]> {
  const out: ImageDevice[] = [];
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

/** Writes a full archive of the images to `out`. */
export async function createImageArchive(o: ImageArchiveOptions): Promise<ImageArchiveResult> {
  const started = Date.now();
  const pool = new ZstdPool({ level: o.level, workers: o.workers });
  const total = o.devices.reduce((a, d) => a + d.size, 0);
  try {
    const { summary } = await runArchivePipeline({
      open: () => FileByteSink.create(o.out),
      archive: {
        hostId: o.hostId,
        devices: o.devices.map(({ id, name, size }) => ({ id, name, size })),
        configs: o.configs,
        compressor: pool,
        encryptionKey: o.encryptionKey,
      },
      job: async (writer) => {
        let base = 0;
        for (const dev of o.devices) {
          await archiveImage(writer, dev, (n) => o.onProgress?.(base + n, total));
          base += dev.size;
        }
      },
    });
    return { path: o.out, imageBytes: total, seconds: (Date.now() - started) / 1000, ...summary };
  } finally {
    await pool.close();
  }
}

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
async function archiveImage(writer: ArchiveWriter, dev: ImageDevice, onBytes: (n: number) => void): Promise<void> {
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
      return readFull(fh, bufs[i]!.subarray(0, want), pos);
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
      const buf = bufs[which]!;
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
