/**
 * Pull-mode backup of QEMU drive nodes (QEMU ≥ 7.1, tested on 7.2).
 *
 * Two graphs (graph.ts chooses one per backup, the result says which):
 *
 * filter graph, when every parent of every drive is a named `raw` node
 * (after the Proxmox fleecing design):
 *
 *   [guest / writable export]
 *          | root
 *   [raw parent]  --file-->  [copy-before-write] <--file-- [snapshot-access] <-- read-only NBD export
 *                              |file        |target
 *                           [drive]     [fleecing file]
 *
 * QEMU 7.2 has no blockdev-replace, so the cbw filter is inserted with ONE
 * blockdev-reopen of every drive's raw parent (atomic across drives: one
 * drained section = the snapshot point of the whole backup).
 *
 * job graph, when a device or export is attached to a drive directly (the
 * libvirt pull-mode design): a qcow2 fleecing overlay whose backing is the
 * drive, and a `blockdev-backup` job with sync=none from the drive into it.
 * The job inserts its own cbw filter above the drive (inside QEMU, for every
 * parent) and copies old data into the overlay before a guest write lands;
 * the overlay, exported read-only, reads copied clusters from itself and the
 * rest from the drive, i.e. the disk at the snapshot point. One `transaction`
 * of every drive's job and bitmap actions is the snapshot point. Teardown
 * cancels the job, which takes its filter out again.
 *
 * Dirty bitmaps (incremental), named `cowstream-<uuid of the archive whose
 * snapshot point started them>`:
 *   1. before (filter) or at (job) the snapshot point: add the new bitmap
 *      (records a superset of what happens after the point),
 *   2. at (job) or after (filter) it: disable the old bitmap (a superset of
 *      what happened before), copy it onto the exported node (an NBD export
 *      can only publish bitmaps of its own node chain) and export it as
 *      qemu:dirty-bitmap.
 *   success → remove the old bitmap; failure → re-enable it, merge the new
 *   one into it and remove the new one (one transaction): nothing is lost.
 * Extra bits in either direction only cost reading a cluster again.
 *
 * A run owns what it creates (run-record.ts): a run killed mid-backup
 * leaves recognisable objects that the next run removes (recovery.ts).
 */
import { mkdtemp, open, rm, unlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { v7 as uuidv7 } from 'uuid';
import type { Compressor } from '../codec/types.js';
import { describeError } from '../errors.js';
import type { ByteSink } from '../format/sink.js';
import type { ArchiveWriter, ArchiveSummary } from '../format/writer.js';
import { runArchivePipeline } from '../backup/pipeline.js';
import { NbdClient } from '../nbd/client.js';
import { NBD_META_QEMU_DIRTY_BITMAP_PREFIX } from '../nbd/client-protocol.js';
import { NBD_FLAG_CAN_MULTI_CONN, NBD_META_BASE_ALLOCATION } from '../nbd/protocol.js';
import { CLUSTER_SIZE } from '../format/constants.js';
import { QemuBackupError, QemuDriveError, QemuUnsupportedError, QmpCommandError } from './errors.js';
import { detectFeatures, requirePullBackup } from './features.js';
import { BITMAP_PREFIX, chooseGraph, COWSTREAM_NODE_PREFIX, namedNodes, parentsByNode, planDrive, reopenOptions, type DrivePlan, type GraphKind, type NamedNode } from './graph.js';
import { readDrive, type DriveReadStats } from './extent-reader.js';
import type { QmpClient } from './qmp.js';
import { recoverLeftovers } from './recovery.js';
import { fleecePath, processStart, removeRecord, runTag, writeRecord } from './run-record.js';
import { DEVICE_NAME_PATTERN } from '../names.js';

export { BITMAP_PREFIX };
/** qcow2 cluster of the job graph's fleecing overlay: the unit a guest write copies first (cost to the guest). */
const FLEECE_CLUSTER = CLUSTER_SIZE;
const JOB_POLL_MS = 50;
const JOB_WAIT_MS = 30_000;
const NAME_RE = DEVICE_NAME_PATTERN;

export interface PullDrive {
  /** QEMU block node name (the guest-visible format node, e.g. a qcow2 node). */
  node: string;
  /** Device name in the archive (default: the node name). */
  name?: string;
}

export interface OutputContext {
  uuid: string;
  parentUuid: string | null;
  hostId: string;
  deviceNames: string[];
  expectedBytes: number;
}

export interface PullBackupOptions {
  qmp: QmpClient;
  drives: PullDrive[];
  mode: 'full' | 'incremental';
  /** Directory for the fleecing images (must be on the QEMU host; sparse, ≤ drive size each). */
  fleecingDir: string;
  hostId: string;
  compressor: Compressor;
  encryptionKey?: Buffer;
  openOutput: (ctx: OutputContext) => Promise<ByteSink>;
  /** Archive UUID (default: a new UUIDv7); the agent fixes it before the backup starts. */
  uuid?: string;
  /** Config files embedded in the archive (e.g. the VM's definition). */
  configs?: { name: string; data: Buffer }[];
  /**
   * QEMU allows ONE NBD server per process. If it already runs one (e.g.
   * qemu-storage-daemon serving the guest), give its Unix socket here; else
   * we start one on a private socket and stop it afterwards.
   */
  nbdServerSocket?: string;
  /** cbw-timeout in seconds (a guest write never waits longer; the backup breaks instead). */
  cbwTimeoutSec?: number;
  readChunk?: number;
  /**
   * Bytes per NBD READ (a power of two, 64 KiB … 2 MiB). Job graph: default
   * 1 MiB. Filter graph: default 64 KiB with a raw fleecing file; larger
   * makes the fleecing image a qcow2 whose cluster is the READ size, so one
   * READ never spans a copied and a not-yet-copied cbw cluster (the QEMU 7.2
   * snapshot-access bug, extent-reader.ts) — at the price of a guest write
   * copying a whole READ-sized cluster first.
   */
  readSize?: number;
  /** NBD connections per drive when the export advertises multi-conn (default 4). */
  connections?: number;
  /** Bytes per BLOCK_STATUS window (default 256 MiB). */
  statusWindow?: number;
  maxInFlight?: number;
  signal?: AbortSignal;
  onProgress?: (p: { done: number; total: number }) => void;
  /** Called once the snapshot point is set (tests resume writers here). */
  onSnapshot?: (info: SnapshotInfo) => void | Promise<void>;
  /** Warnings (teardown steps that failed, fallbacks). */
  onWarning?: (message: string) => void;
}

/** What the snapshot point fixed: the archive, its mode (and why not incremental), and which graph fleeced the drives and why. */
export interface SnapshotInfo {
  uuid: string;
  parentUuid: string | null;
  mode: 'full' | 'incremental';
  modeReason: string | null;
  graph: GraphKind;
  graphReason: string;
}

export interface PullBackupResult extends SnapshotInfo {
  /** Leftovers of killed runs removed before this one started. */
  recovered: string[];
  summary: ArchiveSummary;
  devices: (DriveReadStats & { name: string; node: string; size: number; connections: number; readSize: number })[];
  qemuVersion: string;
  durationMs: number;
}

interface DriveState {
  id: number;
  name: string;
  plan: DrivePlan;
  fleecePath: string;
  /** Fleecing node: the raw file (filter graph) or the qcow2 overlay (job graph). */
  flNode: string;
  /** File node under the qcow2 overlay (job graph). */
  flFileNode: string;
  cbwNode: string;
  saNode: string;
  jobId: string;
  createJobId: string;
  exportId: string;
  /** The node exported over NBD: snapshot-access (filter) or the overlay (job). */
  exportNode: string;
  oldBitmap: string | null;
  newBitmap: string;
  /** What exists in QEMU now (for teardown). */
  created: { flFile: boolean; fl: boolean; cbw: boolean; redirected: boolean; job: boolean; sa: boolean; export: boolean; newBitmap: boolean; oldDisabled: boolean };
}

/** What planPullBackup decided: the graph, the mode and every drive's names in QEMU. */
interface PullPlan extends Pick<PullBackupResult, 'uuid' | 'parentUuid' | 'mode' | 'modeReason' | 'graph' | 'graphReason' | 'recovered' | 'qemuVersion'> {
  drives: DriveState[];
  readSize: number;
  /** Σ drive sizes. */
  total: number;
}

/** What a run started outside QEMU's block graph: the NBD server and its socket, connections, the run record. */
interface PullResources {
  nbdDir: string | null;
  nbdSocket: string;
  nbdStarted: boolean;
  clients: NbdClient[];
  recordWritten: boolean;
}

/**
 * Runs one pull-mode backup; the QMP client stays open (the caller owns it).
 * The archive goes through the backup pipeline (src/backup/pipeline.ts): its
 * job builds the fleecing graph, exports the snapshot and pulls the drives;
 * completing the bitmaps is the teardown, after the archive's fate is known.
 */
export async function runPullBackup(o: PullBackupOptions): Promise<PullBackupResult> {
  const t0 = Date.now();
  const warn = o.onWarning ?? ((m: string) => process.emitWarning(m));
  const plan = await planPullBackup(o, warn);
  const { uuid, parentUuid, drives } = plan;
  const res: PullResources = { nbdDir: null, nbdSocket: o.nbdServerSocket ?? '', nbdStarted: false, clients: [], recordWritten: false };
  const { result: devices, summary } = await runArchivePipeline({
    open: () => o.openOutput({ uuid, parentUuid, hostId: o.hostId, deviceNames: drives.map((d) => d.name), expectedBytes: plan.total }),
    archive: {
      uuid,
      hostId: o.hostId,
      parentUuid,
      devices: drives.map((d) => ({ id: d.id, name: d.name, size: d.plan.node.size })),
      ...(o.configs ? { configs: o.configs } : {}),
      compressor: o.compressor,
      encryptionKey: o.encryptionKey,
    },
    job: async (writer) => {
      try {
        await buildFleecingGraph(o, plan, res);
        await exportSnapshot(o.qmp, plan, res);
        return await pullDrives(o, plan, res, writer);
      } finally {
        for (const c of res.clients) c.destroy();
      }
    },
    ...(o.signal ? { cancel: { signal: o.signal, error: (cause?: unknown) => new QemuBackupError('backup cancelled', cause === undefined ? undefined : { cause }) } } : {}),
    complete: (ok) => tearDownRun(o, plan, res, ok, warn),
  });
  const { mode, modeReason, graph, graphReason, recovered, qemuVersion } = plan;
  return { uuid, parentUuid, mode, modeReason, graph, graphReason, recovered, summary, devices, qemuVersion, durationMs: Date.now() - t0 };
}

/** Checks QEMU and the drives, removes leftovers of killed runs, chooses the graph and the mode, names every node. */
async function planPullBackup(o: PullBackupOptions, warn: (m: string) => void): Promise<PullPlan> {
  const qmp = o.qmp;
  if (o.drives.length === 0) throw new QemuDriveError('no --drive given');
  if (o.drives.length > 255) throw new QemuDriveError('at most 255 drives per archive');

  const features = await detectFeatures(qmp);
  // Neither graph possible: name what the filter graph misses (the usual upgrade path).
  if (!features.backupJob || !features.blockdevCreate) requirePullBackup(features, 'filter');
  requirePullBackup(features, 'job');
  const recovered = await recoverLeftovers(qmp, warn);
  for (const r of recovered) warn(r);

  const plans = planDrives(o.drives, await namedNodes(qmp), await parentsByNode(qmp));
  const { graph, reason: graphReason } = chooseGraph(plans.map((p) => p.plan));
  requirePullBackup(features, graph);

  // Incremental needs every drive to carry the same, recording cowstream bitmap.
  let mode = o.mode;
  let modeReason: string | null = null;
  let parentUuid: string | null = null;
  const oldBitmaps = plans.map((p) => p.plan.node.bitmaps.filter((b) => b.name.startsWith(BITMAP_PREFIX)));
  if (mode === 'incremental') {
    const why = qemuIncrementalBlocker(plans.map((p) => p.plan.node), oldBitmaps);
    if (why) {
      mode = 'full';
      modeReason = why;
      warn(`incremental not possible, taking a full backup: ${why}`);
    } else parentUuid = (oldBitmaps[0]?.[0]?.name ?? '').slice(BITMAP_PREFIX.length);
  }

  const uuid = o.uuid ?? uuidv7();
  // Names stay under QEMU's 31-character node-name limit; the tag ties them to the run (run-record.ts).
  const pre = `${COWSTREAM_NODE_PREFIX}${runTag(uuid)}-`;
  const drives: DriveState[] = plans.map((p, i) => ({
    id: i,
    name: p.name,
    plan: p.plan,
    fleecePath: fleecePath(o.fleecingDir, uuid, i),
    flNode: `${pre}fl${i}`,
    flFileNode: `${pre}ff${i}`,
    cbwNode: `${pre}cbw${i}`,
    saNode: `${pre}sa${i}`,
    jobId: `${pre}job${i}`,
    createJobId: `${pre}mk${i}`,
    exportId: `${pre}${i}`,
    exportNode: graph === 'job' ? `${pre}fl${i}` : `${pre}sa${i}`,
    oldBitmap: mode === 'incremental' ? (oldBitmaps[i]?.[0]?.name ?? null) : null,
    newBitmap: `${BITMAP_PREFIX}${uuid}`,
    created: { flFile: false, fl: false, cbw: false, redirected: false, job: false, sa: false, export: false, newBitmap: false, oldDisabled: false },
  }));
  const readSize = pickReadSize(graph, o.readSize, o.readChunk);
  const total = drives.reduce((s, d) => s + d.plan.node.size, 0);
  return { uuid, parentUuid, mode, modeReason, graph, graphReason, drives, readSize, total, recovered, qemuVersion: features.version };
}

/** Archive names of the drives (unique, valid) and their places in the block graph. */
function planDrives(wanted: PullDrive[], nodes: Awaited<ReturnType<typeof namedNodes>>, parents: Awaited<ReturnType<typeof parentsByNode>>): { name: string; plan: DrivePlan }[] {
  const names = new Set<string>();
  const seenNodes = new Set<string>();
  return wanted.map((d) => {
    const name = d.name ?? d.node;
    if (!NAME_RE.test(name)) throw new QemuDriveError(`drive name '${name}' must match ${NAME_RE.source}`);
    if (names.has(name)) throw new QemuDriveError(`drive name '${name}' given twice`);
    if (seenNodes.has(d.node)) throw new QemuDriveError(`block node '${d.node}' given twice`);
    names.add(name);
    seenNodes.add(d.node);
    return { name, plan: planDrive(d.node, nodes, parents) };
  });
}

/** Records the run, builds the fleecing graph of the chosen kind (its last step is the snapshot point) and reports it. */
async function buildFleecingGraph(o: PullBackupOptions, plan: PullPlan, res: PullResources): Promise<void> {
  if (!o.nbdServerSocket) {
    res.nbdDir = await mkdtemp(join(tmpdir(), 'cowstream-qnbd-'));
    res.nbdSocket = join(res.nbdDir, 'nbd.sock');
  }
  // Before anything exists in QEMU: who owns it (a later run cleans up only after a dead owner).
  await writeRecord(o.fleecingDir, { uuid: plan.uuid, pid: process.pid, pidStart: processStart(process.pid), nbdSocket: res.nbdDir ? res.nbdSocket : null });
  res.recordWritten = true;
  if (plan.graph === 'job') await setUpJobGraph(o.qmp, plan.drives, plan.mode);
  else await setUpFilterGraph(o.qmp, plan.drives, plan.mode, o.cbwTimeoutSec ?? 45, plan.readSize);
  const { uuid, parentUuid, mode, modeReason, graph, graphReason } = plan;
  await o.onSnapshot?.({ uuid, parentUuid, mode, modeReason, graph, graphReason });
}

/** Read-only NBD exports of the snapshot (with the old bitmap generation for an incremental), on our server or QEMU's. */
async function exportSnapshot(qmp: QmpClient, plan: PullPlan, res: PullResources): Promise<void> {
  const { drives, graph, mode } = plan;
  // Export bitmap: the old generation, copied onto the exported node.
  for (const d of drives) {
    if (graph === 'filter') {
      await qmp.execute('blockdev-add', { driver: 'snapshot-access', 'node-name': d.saNode, file: d.cbwNode });
      d.created.sa = true;
    }
    if (mode === 'incremental') {
      await qmp.execute('transaction', {
        actions: [
          { type: 'block-dirty-bitmap-add', data: { node: d.exportNode, name: 'cowstream-export', persistent: false, disabled: true } },
          { type: 'block-dirty-bitmap-merge', data: { node: d.exportNode, target: 'cowstream-export', bitmaps: [{ node: d.plan.node.nodeName, name: d.oldBitmap }] } },
        ],
      });
    }
  }
  if (res.nbdDir) {
    try {
      await qmp.execute('nbd-server-start', { addr: { type: 'unix', data: { path: res.nbdSocket } } });
    } catch (err) {
      if (err instanceof QmpCommandError && /already running/i.test(err.desc)) {
        throw new QemuUnsupportedError('QEMU already runs an NBD server (QEMU allows only one); pass its Unix socket (CLI --qemu-nbd or $COWSTREAM_QEMU_NBD_SOCKET; agent config qemu[].nbdSocket)', { cause: err });
      }
      throw err;
    }
    res.nbdStarted = true;
  }
  for (const d of drives) {
    await qmp.execute('block-export-add', {
      type: 'nbd',
      id: d.exportId,
      'node-name': d.exportNode,
      name: d.exportId,
      writable: false,
      ...(mode === 'incremental' ? { bitmaps: ['cowstream-export'] } : {}),
    });
    d.created.export = true;
  }
}

/** Reads every drive's export into the archive writer, one drive after the other. */
async function pullDrives(o: PullBackupOptions, plan: PullPlan, res: PullResources, writer: ArchiveWriter): Promise<PullBackupResult['devices']> {
  const progress = { done: 0, total: plan.total };
  const stats: PullBackupResult['devices'] = [];
  for (const d of plan.drives) stats.push(await pullDrive(o, plan, res, writer, d, progress));
  return stats;
}

async function pullDrive(
  o: PullBackupOptions,
  plan: PullPlan,
  res: PullResources,
  writer: ArchiveWriter,
  d: DriveState,
  progress: { done: number; total: number },
): Promise<PullBackupResult['devices'][number]> {
  const qmp = o.qmp;
  const dirtyContext = plan.mode === 'incremental' ? `${NBD_META_QEMU_DIRTY_BITMAP_PREFIX}cowstream-export` : null;
  const conn = await connectAll(res.nbdSocket, d.exportId, dirtyContext, o.connections ?? 4, o.maxInFlight ?? 32, res.clients);
  const client = conn[0] as NbdClient;
  if (client.size !== d.plan.node.size) throw new QemuBackupError(`export of '${d.name}' has ${client.size} bytes, the drive ${d.plan.node.size}`);
  const onAbort = (): void => {
    for (const c of conn) c.destroy(new QemuBackupError('backup cancelled'));
  };
  o.signal?.addEventListener('abort', onAbort, { once: true });
  let stats: PullBackupResult['devices'][number];
  try {
    const s = await readDrive({
      clients: conn,
      deviceId: d.id,
      size: d.plan.node.size,
      sink: writer,
      dirtyContext,
      readChunk: o.readChunk,
      readSize: plan.readSize,
      statusWindow: o.statusWindow,
      // Zero extents are the snapshot's only while nothing wrote since the snapshot point.
      zeroStatusTrusted: async () => (await bitmapCount(qmp, d.plan.node.nodeName, d.newBitmap)) === 0,
      signal: o.signal,
      onProgress: (n) => {
        progress.done += n;
        o.onProgress?.({ ...progress });
      },
    });
    // The job's filter must have protected every READ: a job that ended (cancelled from
    // outside, failed) lets the overlay read the guest's new data through its backing.
    if (plan.graph === 'job') await requireJobRunning(qmp, d);
    stats = { ...s, name: d.name, node: d.plan.node.nodeName, size: d.plan.node.size, connections: conn.length, readSize: plan.readSize };
  } catch (err) {
    if (o.signal?.aborted) throw new QemuBackupError('backup cancelled', { cause: err });
    throw new QemuBackupError(`reading '${d.name}' (node ${d.plan.node.nodeName}) from QEMU failed: ${describeError(err)}`, { cause: err });
  } finally {
    o.signal?.removeEventListener('abort', onAbort);
  }
  for (const c of conn) {
    await c.close();
    res.clients.splice(res.clients.indexOf(c), 1);
  }
  return stats;
}

/**
 * Tears the run down once the archive's fate is known: QEMU's graph and
 * bitmaps (teardown), our NBD socket directory, and the run record, which
 * stays only beside leftovers so the next run can still remove them.
 */
async function tearDownRun(o: PullBackupOptions, plan: PullPlan, res: PullResources, ok: boolean, warn: (m: string) => void): Promise<void> {
  const problems = await teardown(o.qmp, plan.drives, { ok, nbdStarted: res.nbdStarted });
  if (res.nbdDir) await rm(res.nbdDir, { recursive: true, force: true }).catch(() => undefined);
  if (res.recordWritten && problems.length === 0) await removeRecord(o.fleecingDir, plan.uuid);
  for (const p of problems) warn(p);
}

/** Dirty count of one bitmap (-1 when missing). */
async function bitmapCount(qmp: QmpClient, node: string, name: string): Promise<number> {
  const nodes = await qmp.execute<{ 'node-name': string; 'dirty-bitmaps'?: { name: string; count: number }[] }[]>('query-named-block-nodes', { flat: true });
  const b = nodes.find((n) => n['node-name'] === node)?.['dirty-bitmaps']?.find((x) => x.name === name);
  return b ? Number(b.count) : -1;
}

/** Why an incremental is impossible, or null (also used by the agent's GET /disks). */
export function qemuIncrementalBlocker(nodes: NamedNode[], bitmaps: NamedNode['bitmaps'][]): string | null {
  let uuid: string | null = null;
  for (let i = 0; i < nodes.length; i++) {
    const node = nodes[i] as NamedNode;
    const bms = bitmaps[i] ?? [];
    if (bms.length === 0) return `block node '${node.nodeName}' has no cowstream dirty bitmap (no earlier backup, or QEMU restarted with a non-persistent bitmap)`;
    if (bms.length > 1) return `block node '${node.nodeName}' has several cowstream bitmaps (${bms.map((b) => b.name).join(', ')})`;
    const b = bms[0] as NamedNode['bitmaps'][number];
    if (!b.recording) return `dirty bitmap ${b.name} on '${node.nodeName}' is not recording`;
    if (b.busy) return `dirty bitmap ${b.name} on '${node.nodeName}' is in use`;
    const u = b.name.slice(BITMAP_PREFIX.length);
    if (uuid !== null && u !== uuid) return `drives carry bitmaps of different backups (${uuid} vs ${u})`;
    uuid = u;
  }
  return null;
}

/** READ size: a power of two within [64 KiB, 2 MiB] and ≤ the run size; see PullBackupOptions.readSize. */
function pickReadSize(graph: GraphKind, wanted: number | undefined, readChunk: number | undefined): number {
  const want = wanted ?? (graph === 'job' ? 1024 * 1024 : CLUSTER_SIZE);
  if (!Number.isInteger(want) || want < CLUSTER_SIZE || want > 2 * 1024 * 1024 || (want & (want - 1)) !== 0) {
    throw new QemuDriveError(`read size ${want} must be a power of two from 64 KiB to 2 MiB`);
  }
  // Never above the run size; still a power of two (it becomes a qcow2 cluster size).
  let size = want;
  while (size > CLUSTER_SIZE && size > (readChunk ?? Infinity)) size /= 2;
  return size;
}

/** Filter graph: fleecing image + our cbw filter, then the snapshot point (one reopen of the raw parents). */
async function setUpFilterGraph(qmp: QmpClient, drives: DriveState[], mode: 'full' | 'incremental', cbwTimeoutSec: number, readSize: number): Promise<void> {
  // Fleecing targets sized like the drive (cbw requires equal size): a sparse raw file when
  // READs are one 64 KiB cluster; else a qcow2 whose cluster (= the cbw copy unit) is the READ size.
  for (const d of drives) {
    if (readSize === CLUSTER_SIZE) {
      await createFleeceFile(d.fleecePath, d.plan.node.size);
      await qmp.execute('blockdev-add', { driver: 'file', 'node-name': d.flNode, filename: d.fleecePath, discard: 'unmap' });
      d.created.fl = true;
    } else await addQcow2Fleece(qmp, d, readSize, null);
  }
  // copy-before-write filters (not yet in the guest's path).
  for (const d of drives) {
    await qmp.execute('blockdev-add', {
      driver: 'copy-before-write',
      'node-name': d.cbwNode,
      file: d.plan.node.nodeName,
      target: d.flNode,
      // A failing/slow fleecing store breaks the backup, never the guest write (PVE does the same).
      'on-cbw-error': 'break-snapshot',
      'cbw-timeout': cbwTimeoutSec,
    });
    d.created.cbw = true;
  }
  // New bitmaps before the snapshot point (superset of later writes).
  await qmp.execute('transaction', {
    actions: drives.map((d) => ({ type: 'block-dirty-bitmap-add', data: { node: d.plan.node.nodeName, name: d.newBitmap, persistent: d.plan.node.drv === 'qcow2' } })),
  });
  for (const d of drives) d.created.newBitmap = true;
  // Snapshot point: one atomic reopen of every parent onto its cbw filter.
  const redirects = drives.flatMap((d) => d.plan.redirect.map((p) => reopenOptions(p, d.cbwNode)));
  if (redirects.length > 0) await qmp.execute('blockdev-reopen', { options: redirects });
  for (const d of drives) d.created.redirected = true;
  // Freeze the old bitmaps (after the point: superset of earlier writes).
  if (mode === 'incremental') {
    await qmp.execute('transaction', { actions: drives.map((d) => ({ type: 'block-dirty-bitmap-disable', data: { node: d.plan.node.nodeName, name: d.oldBitmap } })) });
    for (const d of drives) d.created.oldDisabled = true;
  }
}

/**
 * Job graph: a qcow2 overlay per drive (backing: the drive), then ONE
 * transaction that starts every backup job and swaps the bitmap generations:
 * the snapshot point, exact for the bitmaps too.
 */
async function setUpJobGraph(qmp: QmpClient, drives: DriveState[], mode: 'full' | 'incremental'): Promise<void> {
  // The overlay reads what was not copied yet from the drive itself.
  for (const d of drives) await addQcow2Fleece(qmp, d, FLEECE_CLUSTER, d.plan.node.nodeName);
  const actions: unknown[] = [];
  for (const d of drives) actions.push({ type: 'block-dirty-bitmap-add', data: { node: d.plan.node.nodeName, name: d.newBitmap, persistent: d.plan.node.drv === 'qcow2' } });
  if (mode === 'incremental') for (const d of drives) actions.push({ type: 'block-dirty-bitmap-disable', data: { node: d.plan.node.nodeName, name: d.oldBitmap } });
  for (const d of drives) {
    actions.push({
      type: 'blockdev-backup',
      data: { 'job-id': d.jobId, device: d.plan.node.nodeName, target: d.flNode, sync: 'none', 'filter-node-name': d.cbwNode, 'auto-dismiss': false },
    });
  }
  await qmp.execute('transaction', { actions });
  for (const d of drives) {
    d.created.newBitmap = true;
    d.created.oldDisabled = mode === 'incremental';
    d.created.job = true;
  }
}

/** A qcow2 fleecing image (file node + blockdev-create + qcow2 node), optionally backed by the drive. */
async function addQcow2Fleece(qmp: QmpClient, d: DriveState, cluster: number, backing: string | null): Promise<void> {
  await createFleeceFile(d.fleecePath, 0);
  await qmp.execute('blockdev-add', { driver: 'file', 'node-name': d.flFileNode, filename: d.fleecePath, discard: 'unmap' });
  d.created.flFile = true;
  await qmp.execute('blockdev-create', { 'job-id': d.createJobId, options: { driver: 'qcow2', file: d.flFileNode, size: d.plan.node.size, 'cluster-size': cluster } });
  const job = await waitJobConcluded(qmp, d.createJobId);
  await qmp.execute('job-dismiss', { id: d.createJobId });
  if (job.error) throw new QemuBackupError(`creating the fleecing image ${d.fleecePath} failed: ${job.error}`);
  await qmp.execute('blockdev-add', { driver: 'qcow2', 'node-name': d.flNode, file: d.flFileNode, backing, discard: 'unmap' });
  d.created.fl = true;
}

async function createFleeceFile(path: string, size: number): Promise<void> {
  const fh = await open(path, 'wx', 0o600);
  try {
    if (size > 0) await fh.truncate(size);
  } finally {
    await fh.close();
  }
}

interface JobInfo {
  id: string;
  status: string;
  error?: string;
}

async function findJob(qmp: QmpClient, id: string): Promise<JobInfo | null> {
  return (await qmp.execute<JobInfo[]>('query-jobs')).find((j) => j.id === id) ?? null;
}

async function waitJobConcluded(qmp: QmpClient, id: string): Promise<JobInfo> {
  const deadline = Date.now() + JOB_WAIT_MS;
  for (;;) {
    const j = await findJob(qmp, id);
    if (!j) throw new QemuBackupError(`QEMU job ${id} disappeared`);
    if (j.status === 'concluded') return j;
    if (Date.now() > deadline) throw new QemuBackupError(`QEMU job ${id} did not conclude within ${JOB_WAIT_MS} ms (status ${j.status})`);
    await new Promise((r) => setTimeout(r, JOB_POLL_MS));
  }
}

async function requireJobRunning(qmp: QmpClient, d: DriveState): Promise<void> {
  const j = await findJob(qmp, d.jobId);
  if (j?.status === 'running' || j?.status === 'paused' || j?.status === 'ready') return;
  throw new QemuBackupError(`the backup job of '${d.name}' ended during the backup (${j ? `${j.status}${j.error ? `: ${j.error}` : ''}` : 'gone'}); its reads are not the snapshot`);
}

/** One connection, plus more when the export advertises multi-conn (all kept in `all` for cleanup). */
async function connectAll(socket: string, exportName: string, dirtyContext: string | null, want: number, maxInFlight: number, all: NbdClient[]): Promise<NbdClient[]> {
  const opts = { exportName, metaContexts: [NBD_META_BASE_ALLOCATION, ...(dirtyContext ? [dirtyContext] : [])], maxInFlight };
  const first = await NbdClient.connect({ path: socket }, opts);
  all.push(first);
  const out = [first];
  // NBD spec: without CAN_MULTI_CONN, connections need not see each other's state.
  const n = (first.transmissionFlags & NBD_FLAG_CAN_MULTI_CONN) !== 0 ? Math.max(1, Math.min(16, want)) : 1;
  for (let i = 1; i < n; i++) {
    const c = await NbdClient.connect({ path: socket }, { ...opts, metaContexts: [] });
    all.push(c);
    out.push(c);
  }
  return out;
}

/** Runs one teardown step; a failure is recorded (and returned false) instead of stopping the rest. */
type TeardownStep = (what: string, fn: () => Promise<unknown>) => Promise<boolean>;

/**
 * Removes everything we added, in reverse order, each step on its own so one
 * failure does not leave the rest behind, then completes the bitmaps.
 * Returns messages of failed steps.
 */
async function teardown(qmp: QmpClient, drives: DriveState[], s: { ok: boolean; nbdStarted: boolean }): Promise<string[]> {
  const problems: string[] = [];
  const step: TeardownStep = async (what, fn) => {
    try {
      await fn();
      return true;
    } catch (err) {
      problems.push(`teardown: ${what}: ${describeError(err)}`);
      return false;
    }
  };
  await removeExports(qmp, drives, s.nbdStarted, step);
  await removeFleecingGraph(qmp, drives, step);
  await completeQemuBitmaps(qmp, drives, s.ok, step);
  return problems;
}

/** NBD exports (waiting until QEMU dropped each), then our NBD server. */
async function removeExports(qmp: QmpClient, drives: DriveState[], nbdStarted: boolean, step: TeardownStep): Promise<void> {
  for (const d of drives) {
    if (d.created.export) {
      const gone = qmp.waitForEvent((e) => e.event === 'BLOCK_EXPORT_DELETED' && e.data.id === d.exportId, 10_000, { includeBacklog: false });
      gone.catch(() => undefined);
      if (await step(`block-export-del ${d.exportId}`, () => qmp.execute('block-export-del', { id: d.exportId, mode: 'hard' }))) {
        await step(`waiting for export ${d.exportId} to go`, () => gone);
        d.created.export = false;
      }
    }
  }
  if (nbdStarted) await step('nbd-server-stop', () => qmp.execute('nbd-server-stop'));
}

/** snapshot-access nodes, the guest's path back onto the drives, the jobs, then filter and fleecing nodes and files. */
async function removeFleecingGraph(qmp: QmpClient, drives: DriveState[], step: TeardownStep): Promise<void> {
  for (const d of drives) {
    if (d.created.sa && (await step(`blockdev-del ${d.saNode}`, () => qmp.execute('blockdev-del', { 'node-name': d.saNode })))) d.created.sa = false;
  }
  const back = drives.filter((d) => d.created.redirected).flatMap((d) => d.plan.redirect.map((p) => reopenOptions(p, d.plan.node.nodeName)));
  if (back.length === 0 || (await step('blockdev-reopen (restore the drives\' parents)', () => qmp.execute('blockdev-reopen', { options: back })))) {
    for (const d of drives) d.created.redirected = false;
  }
  // Job graph: cancelling the job takes its cbw filter out of the guest's path.
  for (const d of drives) {
    if (!d.created.job) continue;
    const cancelled = await step(`job-cancel ${d.jobId}`, async () => {
      const j = await findJob(qmp, d.jobId);
      if (j && j.status !== 'concluded' && j.status !== 'null') await qmp.execute('job-cancel', { id: d.jobId });
      if (j) {
        await waitJobConcluded(qmp, d.jobId);
        await qmp.execute('job-dismiss', { id: d.jobId });
      }
    });
    if (cancelled) d.created.job = false;
  }
  for (const d of drives) {
    if (d.created.redirected || d.created.job) continue; // a filter is still in the guest path: never delete it
    if (d.created.cbw && (await step(`blockdev-del ${d.cbwNode}`, () => qmp.execute('blockdev-del', { 'node-name': d.cbwNode })))) d.created.cbw = false;
    if (!d.created.cbw && d.created.fl && (await step(`blockdev-del ${d.flNode}`, () => qmp.execute('blockdev-del', { 'node-name': d.flNode })))) d.created.fl = false;
    if (!d.created.fl && d.created.flFile && (await step(`blockdev-del ${d.flFileNode}`, () => qmp.execute('blockdev-del', { 'node-name': d.flFileNode })))) d.created.flFile = false;
  }
  for (const d of drives) if (!d.created.fl && !d.created.flFile) await unlink(d.fleecePath).catch(() => undefined);
}

/** Bitmaps: success → drop the old generation; failure → fold the new one back into the old (no dirty bit lost). */
async function completeQemuBitmaps(qmp: QmpClient, drives: DriveState[], ok: boolean, step: TeardownStep): Promise<void> {
  for (const d of drives) {
    const node = d.plan.node.nodeName;
    if (ok) {
      const stale = d.plan.node.bitmaps.filter((b) => b.name.startsWith(BITMAP_PREFIX) && b.name !== d.newBitmap);
      for (const b of stale) await step(`block-dirty-bitmap-remove ${node}/${b.name}`, () => qmp.execute('block-dirty-bitmap-remove', { node, name: b.name }));
    } else if (d.oldBitmap && d.created.newBitmap) {
      const actions: unknown[] = [];
      if (d.created.oldDisabled) actions.push({ type: 'block-dirty-bitmap-enable', data: { node, name: d.oldBitmap } });
      actions.push({ type: 'block-dirty-bitmap-merge', data: { node, target: d.oldBitmap, bitmaps: [d.newBitmap] } });
      actions.push({ type: 'block-dirty-bitmap-remove', data: { node, name: d.newBitmap } });
      await step(`restoring dirty bitmap ${node}/${d.oldBitmap}`, () => qmp.execute('transaction', { actions }));
    } else if (d.created.newBitmap) {
      // Full backup failed: the previous generation (if any) still records everything.
      await step(`block-dirty-bitmap-remove ${node}/${d.newBitmap}`, () => qmp.execute('block-dirty-bitmap-remove', { node, name: d.newBitmap }));
    }
  }
}
