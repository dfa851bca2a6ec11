/**
 * Pull-mode backup of QEMU drive nodes (QEMU ≥ 7.1, tested on 7.2).
 *
 * Graph during the backup (after the Proxmox fleecing design,
 * ../shared/seeds/pve-backup-fleecing.txt):
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
 * Dirty bitmaps (incremental), named `cowstream-<uuid of the archive whose
 * snapshot point started them>`:
 *   1. before the snapshot point: add the new bitmap (records a superset of
 *      what happens after the point),
 *   2. snapshot point (reopen),
 *   3. after it: disable the old bitmap (a superset of what happened before),
 *      copy it onto the snapshot-access node (an NBD export can only publish
 *      bitmaps of its own node chain) and export it as qemu:dirty-bitmap.
 *   success → remove the old bitmap; failure → re-enable it, merge the new
 *   one into it and remove the new one (one transaction): nothing is lost.
 * Extra bits in either direction only cost reading a cluster again.
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, open, rm, unlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { v7 as uuidv7 } from 'uuid';
import type { Compressor } from '../codec/types.js';
import { describeError } from '../errors.js';
import type { ByteSink } from '../format/sink.js';
import { ArchiveWriter, type ArchiveSummary } from '../format/writer.js';
import { NbdClient } from '../nbd/client.js';
import { NBD_META_QEMU_DIRTY_BITMAP_PREFIX } from '../nbd/client-protocol.js';
import { NBD_META_BASE_ALLOCATION } from '../nbd/protocol.js';
import { QemuBackupError, QemuDriveError, QemuUnsupportedError, QmpCommandError } from './errors.js';
import { detectFeatures, requirePullBackup } from './features.js';
import { COWSTREAM_NODE_PREFIX, namedNodes, parentsByNode, planDrive, type DrivePlan, type NamedNode } from './graph.js';
import { readDrive, type DriveReadStats } from './extent-reader.js';
import type { QmpClient } from './qmp.js';

export const BITMAP_PREFIX = 'cowstream-';
const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

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
  /** Bytes per BLOCK_STATUS window (default 256 MiB). */
  statusWindow?: number;
  maxInFlight?: number;
  signal?: AbortSignal;
  onProgress?: (p: { done: number; total: number }) => void;
  /** Called once the snapshot point is set (tests resume writers here). */
  onSnapshot?: (info: { uuid: string; parentUuid: string | null; mode: 'full' | 'incremental'; modeReason: string | null }) => void | Promise<void>;
  /** Warnings (teardown steps that failed, fallbacks). */
  onWarning?: (message: string) => void;
}

export interface PullBackupResult {
  uuid: string;
  parentUuid: string | null;
  mode: 'full' | 'incremental';
  modeReason: string | null;
  summary: ArchiveSummary;
  devices: (DriveReadStats & { name: string; node: string; size: number })[];
  qemuVersion: string;
  durationMs: number;
}

interface DriveState {
  id: number;
  name: string;
  plan: DrivePlan;
  fleecePath: string;
  flNode: string;
  cbwNode: string;
  saNode: string;
  exportId: string;
  oldBitmap: string | null;
  newBitmap: string;
  /** What exists in QEMU now (for teardown). */
  created: { fl: boolean; cbw: boolean; redirected: boolean; sa: boolean; export: boolean; newBitmap: boolean; oldDisabled: boolean };
}

/** Runs one pull-mode backup; the QMP client stays open (the caller owns it). */
export async function runPullBackup(o: PullBackupOptions): Promise<PullBackupResult> {
  const t0 = Date.now();
  const qmp = o.qmp;
  const warn = o.onWarning ?? ((m: string) => process.emitWarning(m));
  if (o.drives.length === 0) throw new QemuDriveError('no --drive given');
  if (o.drives.length > 255) throw new QemuDriveError('at most 255 drives per archive');

  const features = await detectFeatures(qmp);
  requirePullBackup(features);

  const nodes = await namedNodes(qmp);
  const parents = await parentsByNode(qmp);
  const names = new Set<string>();
  const seenNodes = new Set<string>();
  const plans = o.drives.map((d) => {
    const name = d.name ?? d.node;
    if (!NAME_RE.test(name)) throw new QemuDriveError(`drive name '${name}' must match ${NAME_RE.source}`);
    if (names.has(name)) throw new QemuDriveError(`drive name '${name}' given twice`);
    if (seenNodes.has(d.node)) throw new QemuDriveError(`block node '${d.node}' given twice`);
    names.add(name);
    seenNodes.add(d.node);
    return { name, plan: planDrive(d.node, nodes, parents) };
  });

  // Incremental needs every drive to carry the same, recording cowstream bitmap.
  let mode = o.mode;
  let modeReason: string | null = null;
  let parentUuid: string | null = null;
  const oldBitmaps = plans.map((p) => p.plan.node.bitmaps.filter((b) => b.name.startsWith(BITMAP_PREFIX)));
  if (mode === 'incremental') {
    const why = incrementalBlocker(plans.map((p) => p.plan.node), oldBitmaps);
    if (why) {
      mode = 'full';
      modeReason = why;
      warn(`incremental not possible, taking a full backup: ${why}`);
    } else parentUuid = (oldBitmaps[0]?.[0]?.name ?? '').slice(BITMAP_PREFIX.length);
  }

  const uuid = o.uuid ?? uuidv7();
  const tag = randomBytes(4).toString('hex');
  const drives: DriveState[] = plans.map((p, i) => ({
    id: i,
    name: p.name,
    plan: p.plan,
    fleecePath: join(o.fleecingDir, `cowstream-${uuid}-${i}.fleece`),
    flNode: `${COWSTREAM_NODE_PREFIX}${tag}-fl${i}`,
    cbwNode: `${COWSTREAM_NODE_PREFIX}${tag}-cbw${i}`,
    saNode: `${COWSTREAM_NODE_PREFIX}${tag}-sa${i}`,
    exportId: `${COWSTREAM_NODE_PREFIX}${tag}-${i}`,
    oldBitmap: mode === 'incremental' ? (oldBitmaps[i]?.[0]?.name ?? null) : null,
    newBitmap: `${BITMAP_PREFIX}${uuid}`,
    created: { fl: false, cbw: false, redirected: false, sa: false, export: false, newBitmap: false, oldDisabled: false },
  }));

  const total = drives.reduce((s, d) => s + d.plan.node.size, 0);
  let writer: ArchiveWriter | null = null;
  let nbdDir: string | null = null;
  let nbdStarted = false;
  let nbdSocket = o.nbdServerSocket ?? '';
  const clients: NbdClient[] = [];
  let ok = false;
  let failure: unknown = null;
  try {
    const output = await o.openOutput({ uuid, parentUuid, hostId: o.hostId, deviceNames: drives.map((d) => d.name), expectedBytes: total });
    try {
      writer = await ArchiveWriter.create({
        uuid,
        hostId: o.hostId,
        parentUuid,
        devices: drives.map((d) => ({ id: d.id, name: d.name, size: d.plan.node.size })),
        ...(o.configs ? { configs: o.configs } : {}),
        compressor: o.compressor,
        encryptionKey: o.encryptionKey,
        output,
      });
    } catch (err) {
      await output.abort(err).catch(() => undefined);
      throw err;
    }

    // 1. Fleecing targets: sparse files sized like the drive (cbw requires equal size).
    for (const d of drives) {
      const fh = await open(d.fleecePath, 'wx', 0o600);
      try {
        await fh.truncate(d.plan.node.size);
      } finally {
        await fh.close();
      }
      await qmp.execute('blockdev-add', { driver: 'file', 'node-name': d.flNode, filename: d.fleecePath, discard: 'unmap' });
      d.created.fl = true;
    }
    // 2. copy-before-write filters (not yet in the guest's path).
    for (const d of drives) {
      await qmp.execute('blockdev-add', {
        driver: 'copy-before-write',
        'node-name': d.cbwNode,
        file: d.plan.node.nodeName,
        target: d.flNode,
        // A failing/slow fleecing store breaks the backup, never the guest write (PVE does the same).
        'on-cbw-error': 'break-snapshot',
        'cbw-timeout': o.cbwTimeoutSec ?? 45,
      });
      d.created.cbw = true;
    }
    // 3. New bitmaps before the snapshot point (superset of later writes).
    await qmp.execute('transaction', {
      actions: drives.map((d) => ({
        type: 'block-dirty-bitmap-add',
        data: { node: d.plan.node.nodeName, name: d.newBitmap, persistent: d.plan.node.drv === 'qcow2' },
      })),
    });
    for (const d of drives) d.created.newBitmap = true;
    // 4. Snapshot point: one atomic reopen of every parent onto its cbw filter.
    const redirects = drives.flatMap((d) => d.plan.redirect.map((p) => reopenOptions(p, d.cbwNode)));
    if (redirects.length > 0) await qmp.execute('blockdev-reopen', { options: redirects });
    for (const d of drives) d.created.redirected = true;
    // 5. Freeze the old bitmaps (after the point: superset of earlier writes).
    if (mode === 'incremental') {
      await qmp.execute('transaction', {
        actions: drives.map((d) => ({ type: 'block-dirty-bitmap-disable', data: { node: d.plan.node.nodeName, name: d.oldBitmap } })),
      });
      for (const d of drives) d.created.oldDisabled = true;
    }
    await o.onSnapshot?.({ uuid, parentUuid, mode, modeReason });
    // 6. snapshot-access + NBD export.
    for (const d of drives) {
      await qmp.execute('blockdev-add', { driver: 'snapshot-access', 'node-name': d.saNode, file: d.cbwNode });
      d.created.sa = true;
      if (mode === 'incremental') {
        await qmp.execute('transaction', {
          actions: [
            { type: 'block-dirty-bitmap-add', data: { node: d.saNode, name: 'cowstream-export', persistent: false, disabled: true } },
            { type: 'block-dirty-bitmap-merge', data: { node: d.saNode, target: 'cowstream-export', bitmaps: [{ node: d.plan.node.nodeName, name: d.oldBitmap }] } },
          ],
        });
      }
    }
    if (!o.nbdServerSocket) {
      nbdDir = await mkdtemp(join(tmpdir(), 'cowstream-qnbd-'));
      nbdSocket = join(nbdDir, 'nbd.sock');
      try {
        await qmp.execute('nbd-server-start', { addr: { type: 'unix', data: { path: nbdSocket } } });
      } catch (err) {
        if (err instanceof QmpCommandError && /already running/i.test(err.desc)) {
          throw new QemuUnsupportedError('QEMU already runs an NBD server (QEMU allows only one); pass its Unix socket (CLI --qemu-nbd or $COWSTREAM_QEMU_NBD_SOCKET; agent config qemu[].nbdSocket)', { cause: err });
        }
        throw err;
      }
      nbdStarted = true;
    }
    for (const d of drives) {
      await qmp.execute('block-export-add', {
        type: 'nbd',
        id: d.exportId,
        'node-name': d.saNode,
        name: d.exportId,
        writable: false,
        ...(mode === 'incremental' ? { bitmaps: ['cowstream-export'] } : {}),
      });
      d.created.export = true;
    }

    // 7. Pull.
    let done = 0;
    const stats: PullBackupResult['devices'] = [];
    for (const d of drives) {
      const dirtyContext = mode === 'incremental' ? `${NBD_META_QEMU_DIRTY_BITMAP_PREFIX}cowstream-export` : null;
      const client = await NbdClient.connect(
        { path: nbdSocket },
        { exportName: d.exportId, metaContexts: [NBD_META_BASE_ALLOCATION, ...(dirtyContext ? [dirtyContext] : [])], maxInFlight: o.maxInFlight ?? 32 },
      );
      clients.push(client);
      if (client.size !== d.plan.node.size) throw new QemuBackupError(`export of '${d.name}' has ${client.size} bytes, the drive ${d.plan.node.size}`);
      const onAbort = (): void => client.destroy(new QemuBackupError('backup cancelled'));
      o.signal?.addEventListener('abort', onAbort, { once: true });
      try {
        const s = await readDrive({
          client,
          deviceId: d.id,
          size: d.plan.node.size,
          sink: writer,
          dirtyContext,
          readChunk: o.readChunk,
          statusWindow: o.statusWindow,
          // Zero extents are the snapshot's only while nothing wrote since the snapshot point.
          zeroStatusTrusted: async () => (await bitmapCount(qmp, d.plan.node.nodeName, d.newBitmap)) === 0,
          signal: o.signal,
          onProgress: (n) => {
            done += n;
            o.onProgress?.({ done, total });
          },
        });
        stats.push({ ...s, name: d.name, node: d.plan.node.nodeName, size: d.plan.node.size });
      } catch (err) {
        if (o.signal?.aborted) throw new QemuBackupError('backup cancelled', { cause: err });
        throw new QemuBackupError(`reading '${d.name}' (node ${d.plan.node.nodeName}) from QEMU failed: ${describeError(err)}`, { cause: err });
      } finally {
        o.signal?.removeEventListener('abort', onAbort);
      }
      await client.close();
      clients.splice(clients.indexOf(client), 1);
    }
    // A cancel must also cover the tail: after the last READ, the final
    // extents may still be compressing and uploading (a slow store).
    const w = writer;
    const cancelFinish = (): void => void w.abort(new QemuBackupError('backup cancelled'));
    o.signal?.addEventListener('abort', cancelFinish, { once: true });
    let summary: ArchiveSummary;
    try {
      if (o.signal?.aborted) throw new QemuBackupError('backup cancelled');
      summary = await writer.finish();
    } catch (err) {
      if (o.signal?.aborted && !(err instanceof QemuBackupError)) throw new QemuBackupError('backup cancelled', { cause: err });
      throw err;
    } finally {
      o.signal?.removeEventListener('abort', cancelFinish);
    }
    ok = true;
    return { uuid, parentUuid, mode, modeReason, summary, devices: stats, qemuVersion: features.version, durationMs: Date.now() - t0 };
  } catch (err) {
    failure = err;
    throw err;
  } finally {
    for (const c of clients) c.destroy();
    if (!ok && writer) await writer.abort(failure).catch(() => undefined);
    const problems = await teardown(qmp, drives, { ok, nbdStarted });
    if (nbdDir) await rm(nbdDir, { recursive: true, force: true }).catch(() => undefined);
    for (const p of problems) warn(p);
  }
}

/** Dirty count of one bitmap (-1 when missing). */
async function bitmapCount(qmp: QmpClient, node: string, name: string): Promise<number> {
  const nodes = await qmp.execute<{ 'node-name': string; 'dirty-bitmaps'?: { name: string; count: number }[] }[]>('query-named-block-nodes', { flat: true });
  const b = nodes.find((n) => n['node-name'] === node)?.['dirty-bitmaps']?.find((x) => x.name === name);
  return b ? Number(b.count) : -1;
}

/** Why an incremental is impossible, or null (also used by the agent's GET /disks). */
export function incrementalBlocker(nodes: NamedNode[], bitmaps: NamedNode['bitmaps'][]): string | null {
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

/** blockdev-reopen options for a raw parent: same options, new `file` child. */
function reopenOptions(parent: NamedNode, file: string): Record<string, unknown> {
  // blockdev-reopen resets every option not given to its default, so repeat the ones QEMU reports.
  return {
    driver: 'raw',
    'node-name': parent.nodeName,
    file,
    'read-only': parent.readOnly,
    'detect-zeroes': parent.detectZeroes,
    cache: { direct: parent.cache.direct, 'no-flush': parent.cache.noFlush },
  };
}

/**
 * Removes everything we added, in reverse order, each step on its own so one
 * failure does not leave the rest behind. Returns messages of failed steps.
 */
async function teardown(qmp: QmpClient, drives: DriveState[], s: { ok: boolean; nbdStarted: boolean }): Promise<string[]> {
  const problems: string[] = [];
  const step = async (what: string, fn: () => Promise<unknown>): Promise<boolean> => {
    try {
      await fn();
      return true;
    } catch (err) {
      problems.push(`teardown: ${what}: ${describeError(err)}`);
      return false;
    }
  };
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
  if (s.nbdStarted) await step('nbd-server-stop', () => qmp.execute('nbd-server-stop'));
  for (const d of drives) {
    if (d.created.sa && (await step(`blockdev-del ${d.saNode}`, () => qmp.execute('blockdev-del', { 'node-name': d.saNode })))) d.created.sa = false;
  }
  const back = drives.filter((d) => d.created.redirected).flatMap((d) => d.plan.redirect.map((p) => reopenOptions(p, d.plan.node.nodeName)));
  if (back.length === 0 || (await step('blockdev-reopen (restore the drives\' parents)', () => qmp.execute('blockdev-reopen', { options: back })))) {
    for (const d of drives) d.created.redirected = false;
  }
  for (const d of drives) {
    if (d.created.redirected) continue; // the filter is still in the guest path: never delete it
    if (d.created.cbw && (await step(`blockdev-del ${d.cbwNode}`, () => qmp.execute('blockdev-del', { 'node-name': d.cbwNode })))) d.created.cbw = false;
    if (!d.created.cbw && d.created.fl && (await step(`blockdev-del ${d.flNode}`, () => qmp.execute('blockdev-del', { 'node-name': d.flNode })))) d.created.fl = false;
  }
  for (const d of drives) if (!d.created.fl) await unlink(d.fleecePath).catch(() => undefined);

  // Bitmaps: success → drop the old generation; failure → fold the new one back into the old.
  for (const d of drives) {
    const node = d.plan.node.nodeName;
    if (s.ok) {
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
  return problems;
}
