/**
 * Pulls one drive's snapshot over NBD into the archive writer.
 *
 * For each window we ask BLOCK_STATUS (base:allocation, and in incremental
 * mode qemu:dirty-bitmap:NAME), classify every 64 KiB archive cluster as
 *   - skip  (incremental, not dirty: the parent archive has it),
 *   - zero  (every byte reads as zero: NBD_STATE_ZERO) → a zero run, no read,
 *   - data  → READ,
 * then issue pipelined READs for runs of data clusters.
 *
 * QEMU 7.2 caveat (found by test/integration/qemu-pull.test.ts): when the
 * guest write-zeroes a region after the snapshot point, the copy-before-write
 * filter copies the old data to the fleecing target, READ returns it, but
 * BLOCK_STATUS of the snapshot-access node reports the region as hole+zero
 * (the source's new state), and a fragmenting (sparse) READ then sends
 * OFFSET_HOLE for it. Only regions written after the snapshot point are
 * affected, and every such write is recorded in the NEW dirty bitmap (added
 * before the snapshot point). So after each BLOCK_STATUS we ask
 * `zeroStatusTrusted()`: the caller checks that the new bitmap is still
 * empty, which proves no write happened between the snapshot point and the
 * status answer, so its zero extents are the snapshot's. Otherwise the window
 * is read in full (the archive writer turns all-zero clusters into zero
 * runs). Reads use NBD_CMD_FLAG_DF so QEMU sends plain data, never holes.
 *
 * Second QEMU 7.2 caveat (same test, reproduced by hand with 2 MiB reads):
 * a READ of snapshot-access that spans both a region already copied to the
 * fleecing target and one still on the source returns wrong data (zeroes or
 * the guest's NEW data). A cluster is copied as a whole (the cbw/block-copy
 * cluster is 64 KiB for a raw fleecing file), so every READ we send covers
 * exactly one 64 KiB archive cluster (`readSize`); pipelining (maxInFlight)
 * keeps the throughput. The job graph exports a qcow2 fleecing overlay
 * instead, which resolves every qcow2 cluster on its own (copied → overlay,
 * not yet → the drive), so its READs may span many clusters.
 *
 * Several connections (NBD_FLAG_CAN_MULTI_CONN: QEMU advertises it for
 * read-only exports) get the READs round-robin; BLOCK_STATUS uses the first.
 * Reads complete in any
 * order but are handed to the writer in order, one at a time, so memory is
 * bounded by (8 queued runs + 1) × readChunk, in reused run buffers.
 */
import { CLUSTER_SIZE } from '../format/constants.js';
import type { ClusterSink } from '../format/sink.js';
import { NBD_META_BASE_ALLOCATION, NBD_STATE_ZERO, type BlockStatusExtent } from '../nbd/protocol.js';
import { NBD_STATE_DIRTY } from '../nbd/client-protocol.js';
import type { NbdClient } from '../nbd/client.js';
import { QemuBackupError } from './errors.js';

export interface ZeroCapableSink extends ClusterSink {
  writeZeroes(deviceId: number, firstCluster: number, count: number): Promise<void>;
}

export interface DriveReadOptions {
  /** Connections to the same export; READs are spread over all of them. */
  clients: NbdClient[];
  deviceId: number;
  size: number;
  sink: ZeroCapableSink;
  /** Name of the qemu:dirty-bitmap context (incremental), or null (full). */
  dirtyContext: string | null;
  /** Bytes per run handed to the writer (multiple of CLUSTER_SIZE). */
  readChunk?: number;
  /** Bytes per NBD READ (multiple of CLUSTER_SIZE, ≤ readChunk; default CLUSTER_SIZE, see the module comment). */
  readSize?: number;
  /** Bytes per BLOCK_STATUS window. */
  statusWindow?: number;
  /**
   * Called after each BLOCK_STATUS answer: may its zero extents be trusted?
   * (see the module comment). Default: never trusted.
   */
  zeroStatusTrusted?: () => Promise<boolean>;
  signal?: AbortSignal;
  onProgress?: (bytes: number) => void;
}

export interface DriveReadStats {
  dataClusters: number;
  zeroClusters: number;
  skippedClusters: number;
  bytesRead: number;
  /** Status windows whose zero extents could not be trusted (read in full). */
  untrustedWindows: number;
}

const enum Kind {
  Skip = 0,
  Zero = 1,
  Data = 2,
}

/** Per-cluster classification of [start, start+len) from the status extents. Exported for unit tests. */
export function classifyClusters(
  start: number,
  clusters: number,
  size: number,
  alloc: BlockStatusExtent[],
  dirty: BlockStatusExtent[] | null,
): Uint8Array {
  const kinds = new Uint8Array(clusters).fill(Kind.Zero);
  const end = Math.min(size, start + clusters * CLUSTER_SIZE);
  const clusterOf = (off: number): number => Math.floor((off - start) / CLUSTER_SIZE);
  // Any non-zero byte makes the whole cluster data.
  let pos = start;
  for (const e of alloc) {
    if (pos >= end) break;
    const eEnd = Math.min(end, pos + e.length);
    if ((e.flags & NBD_STATE_ZERO) === 0) for (let c = clusterOf(pos); c <= clusterOf(eEnd - 1); c++) kinds[c] = Kind.Data;
    pos = eEnd;
  }
  // Bytes the server did not describe are read (safe default).
  if (pos < end) for (let c = clusterOf(pos); c <= clusterOf(end - 1); c++) kinds[c] = Kind.Data;
  if (!dirty) return kinds;
  const needed = new Uint8Array(clusters);
  pos = start;
  for (const e of dirty) {
    if (pos >= end) break;
    const eEnd = Math.min(end, pos + e.length);
    if (e.flags & NBD_STATE_DIRTY) for (let c = clusterOf(pos); c <= clusterOf(eEnd - 1); c++) needed[c] = 1;
    pos = eEnd;
  }
  if (pos < end) for (let c = clusterOf(pos); c <= clusterOf(end - 1); c++) needed[c] = 1;
  for (let c = 0; c < clusters; c++) if (!needed[c]) kinds[c] = Kind.Skip;
  return kinds;
}

/** Reads one drive into the sink. */
export async function readDrive(o: DriveReadOptions): Promise<DriveReadStats> {
  const readChunk = Math.max(CLUSTER_SIZE, Math.floor((o.readChunk ?? 4 * 1024 * 1024) / CLUSTER_SIZE) * CLUSTER_SIZE);
  const readSize = Math.min(readChunk, Math.max(CLUSTER_SIZE, Math.floor((o.readSize ?? CLUSTER_SIZE) / CLUSTER_SIZE) * CLUSTER_SIZE));
  const clients = o.clients;
  const statusClient = clients[0];
  if (!statusClient) throw new QemuBackupError('no NBD connection to read from');
  let nextClient = 0;
  const statusWindow = Math.max(readChunk, Math.floor((o.statusWindow ?? 256 * 1024 * 1024) / CLUSTER_SIZE) * CLUSTER_SIZE);
  const stats: DriveReadStats = { dataClusters: 0, zeroClusters: 0, skippedClusters: 0, bytesRead: 0, untrustedWindows: 0 };
  const totalClusters = Math.ceil(o.size / CLUSTER_SIZE);
  const maxStatus = Math.min(statusWindow, 0xffffffff - (0xffffffff % CLUSTER_SIZE));

  // Ordered queue of pending operations (reads in flight, zero runs).
  type Op = { kind: 'zero'; first: number; count: number } | { kind: 'data'; first: number; count: number; run: Buffer; data: Promise<Buffer[]> };
  const queue: Op[] = [];
  const maxQueued = 8;
  // Each data op reads its run of clusters into one buffer, which is reused
  // once the sink has taken the clusters (ClusterSink lets the caller reuse
  // them): a backup allocates ≤ maxQueued + 1 run buffers in all, instead of
  // a buffer per READ for the GC to chase.
  // A run never exceeds readChunk, so every run buffer is readChunk bytes and any free one fits.
  const freeRuns: Buffer[] = [];
  const takeRun = (): Buffer => freeRuns.pop() ?? Buffer.allocUnsafeSlow(readChunk);
  const drainOne = async (): Promise<void> => {
    const op = queue.shift() as Op;
    if (op.kind === 'zero') {
      await o.sink.writeZeroes(o.deviceId, op.first, op.count);
      stats.zeroClusters += op.count;
      o.onProgress?.(op.count * CLUSTER_SIZE);
      return;
    }
    await op.data;
    let bytes = 0;
    for (let i = 0; i < op.count; i++) {
      const off = (op.first + i) * CLUSTER_SIZE;
      const b = op.run.subarray(i * CLUSTER_SIZE, i * CLUSTER_SIZE + Math.min(CLUSTER_SIZE, o.size - off));
      await o.sink.writeCluster(o.deviceId, op.first + i, b);
      bytes += b.length;
    }
    stats.dataClusters += op.count;
    stats.bytesRead += bytes;
    if (freeRuns.length <= maxQueued) freeRuns.push(op.run);
    o.onProgress?.(bytes);
  };
  const push = async (op: Op): Promise<void> => {
    queue.push(op);
    if (op.kind === 'data') op.data.catch(() => undefined); // surfaced by drainOne
    while (queue.length >= maxQueued) await drainOne();
  };

  try {
    let cluster = 0;
    while (cluster < totalClusters) {
      if (o.signal?.aborted) throw new QemuBackupError('backup cancelled', { cause: o.signal.reason });
      const start = cluster * CLUSTER_SIZE;
      const len = Math.min(maxStatus, o.size - start);
      const st = await statusClient.blockStatus(start, len);
      const alloc = st.contexts.get(NBD_META_BASE_ALLOCATION);
      if (!alloc) throw new QemuBackupError('NBD server sent no base:allocation status');
      let dirty: BlockStatusExtent[] | null = null;
      if (o.dirtyContext) {
        dirty = st.contexts.get(o.dirtyContext) ?? null;
        if (!dirty) throw new QemuBackupError(`NBD server sent no ${o.dirtyContext} status`);
      }
      // The server may describe less than asked: only trust the prefix every
      // context covered (undescribed bytes of the last cluster are read).
      const covered = Math.min(sum(alloc), dirty ? sum(dirty) : Infinity, len);
      const reachesEnd = start + covered >= o.size;
      const aligned = Math.min(
        totalClusters - cluster,
        reachesEnd ? Math.ceil(covered / CLUSTER_SIZE) : Math.max(1, Math.floor(covered / CLUSTER_SIZE)),
      );
      const trusted = o.zeroStatusTrusted ? await o.zeroStatusTrusted() : false;
      if (!trusted) stats.untrustedWindows++;
      const kinds = classifyClusters(start, aligned, o.size, trusted ? alloc : [{ length: len, flags: 0 }], dirty);
      let i = 0;
      while (i < aligned) {
        const k = kinds[i];
        let j = i + 1;
        const maxRun = k === Kind.Data ? readChunk / CLUSTER_SIZE : Number.MAX_SAFE_INTEGER;
        while (j < aligned && kinds[j] === k && j - i < maxRun) j++;
        const first = cluster + i;
        const count = j - i;
        if (k === Kind.Zero) await push({ kind: 'zero', first, count });
        else if (k === Kind.Data) {
          const run = takeRun();
          const reads: Promise<Buffer>[] = [];
          const runStart = first * CLUSTER_SIZE;
          const runEnd = Math.min(o.size, (first + count) * CLUSTER_SIZE);
          // READs end on readSize-aligned offsets (absolute, not run-relative): with a
          // fleecing cluster of readSize (pull-backup.ts) no READ spans two cbw clusters.
          for (let off = runStart, len = 0; off < runEnd; off += len) {
            len = Math.min(readSize - (off % readSize), runEnd - off);
            const client = clients[nextClient++ % clients.length] as NbdClient;
            reads.push(client.read(off, len, { noFragment: true, into: run.subarray(off - runStart, off - runStart + len) }));
          }
          await push({ kind: 'data', first, count, run, data: Promise.all(reads) });
        } else stats.skippedClusters += count;
        i = j;
      }
      cluster += aligned;
    }
    while (queue.length > 0) await drainOne();
  } catch (err) {
    // Let in-flight reads settle so nothing rejects unobserved.
    await Promise.allSettled(queue.map((op) => (op.kind === 'data' ? op.data : Promise.resolve())));
    queue.length = 0;
    throw err;
  }
  return stats;
}

function sum(ext: BlockStatusExtent[]): number {
  let s = 0;
  for (const e of ext) s += e.length;
  return s;
}
