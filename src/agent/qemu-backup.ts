/**
 * Runs one pull-mode backup of QEMU drives for the agent's BackupManager:
 * src/qemu/pull-backup.ts does the QEMU side (fleecing, snapshot-access, NBD,
 * bitmap rotation and teardown); this file feeds it the agent's targets
 * (s3 / file: / -), keeps the run's status current for GET /backups/current
 * and records the result for GET /disks.
 */
import { tmpdir } from 'node:os';
import { BackupCancelledError, describeError } from '../errors.js';
import { CLUSTER_SIZE } from '../format/constants.js';
import type { ByteSink } from '../format/sink.js';
import { runPullBackup, type PullBackupResult, type SnapshotInfo } from '../qemu/pull-backup.js';
import type { QmpClient } from '../qemu/qmp.js';
import type { BackupRequest } from './backup-request.js';
import { endFailedRun, liveBackupCompressor, openRunTarget, type Run as RunState } from './run-state.js';
import type { Logger } from './log.js';
import type { QemuBackupHistory, QemuHost } from './qemu-drives.js';
import type { AgentStore } from './targets.js';

export interface QemuDriveBackupOptions {
  run: RunState;
  req: BackupRequest;
  host: QemuHost;
  drives: { node: string; name: string }[];
  hostId: string;
  store: AgentStore | null;
  log: Logger;
  configs: { name: string; data: Buffer }[];
  encryptionKey: Buffer | undefined;
  history: QemuBackupHistory | null;
  /** Called at the snapshot point (POST /backups answers then). */
  onStarted: () => void;
  wrapSink?: (sink: ByteSink, target: string) => ByteSink;
}

/** Never throws: the outcome is written into `run.status` (and `run.startError` before the snapshot). */
export async function runQemuDriveBackup(o: QemuDriveBackupOptions): Promise<void> {
  const { run, req, host, log } = o;
  const uuid = run.status.uuid;
  const compressor = liveBackupCompressor(req.compressionLevel);
  let qmp: QmpClient | null = null;
  let snapshot = false;
  let failure: unknown = null;
  let outputHanded = false;
  try {
    qmp = await host.acquire();
    if (run.cancelRequested) throw new BackupCancelledError('backup cancelled before it started');
    const r = await runPullBackup({
      qmp,
      drives: o.drives.map((d) => ({ node: d.node, name: d.name })),
      mode: req.mode,
      uuid,
      fleecingDir: host.config.fleecingDir ?? tmpdir(),
      hostId: o.hostId,
      compressor,
      ...(o.encryptionKey ? { encryptionKey: o.encryptionKey } : {}),
      ...(o.configs.length > 0 ? { configs: o.configs } : {}),
      ...(host.config.nbdSocket ? { nbdServerSocket: host.config.nbdSocket } : {}),
      // QMP's cbw-timeout is in whole seconds; never shorter than asked.
      ...(req.cbwTimeoutMs !== undefined ? { cbwTimeoutSec: Math.max(1, Math.ceil(req.cbwTimeoutMs / 1000)) } : {}),
      signal: run.abort!.signal,
      openOutput: async (ctx) => {
        outputHanded = true;
        // The `-` target was opened before POST /backups answered (the reader attaches to it).
        if (run.target) return run.target.sink;
        const target = await openRunTarget(run, req.target, {
          ...ctx,
          store: o.store,
          onWarning: (w) => log.warn('store warning', { uuid, warning: w.message }),
          ...(o.wrapSink ? { wrapSink: o.wrapSink } : {}),
        });
        run.status.parentUuid = ctx.parentUuid;
        return target.sink;
      },
      onSnapshot: (info) => {
        snapshot = true;
        showSnapshot(o, info);
      },
      onProgress: (p) => {
        run.status.total = p.total;
        run.status.transferred = p.done;
      },
      onWarning: (m) => log.warn('qemu backup warning', { uuid, warning: m }),
    });
    await endDoneRun(o, r);
  } catch (err) {
    failure = err;
    if (!snapshot && !run.cancelRequested) run.startError = err;
  } finally {
    if (qmp) await host.release(qmp);
    await compressor.close().catch(() => undefined);
  }
  if (failure !== null) {
    // runPullBackup aborts the output it was given; a pre-opened stream it never took is ours to abort.
    if (!outputHanded && run.target) await run.target.sink.abort(failure).catch(() => undefined);
    if (run.target) run.status.archiveBytes = run.target.sink.bytes;
    endFailedRun(run, failure, run.cancelRequested, log);
  }
}

/** The snapshot point is set: mode, parent and graph go into the status, and POST /backups answers. */
function showSnapshot(o: QemuDriveBackupOptions, info: SnapshotInfo): void {
  const { run, log } = o;
  const uuid = run.status.uuid;
  run.status.mode = info.mode;
  run.status.parentUuid = info.parentUuid;
  run.status.qemuGraph = { kind: info.graph, reason: info.graphReason };
  if (info.modeReason) {
    run.status.modeReason = `full backup instead of incremental: ${info.modeReason}`;
    log.warn('incremental downgraded to full', { uuid, reason: info.modeReason });
  }
  log.info('backup started', { uuid, kind: 'qemu', qmpSocket: o.host.config.qmpSocket, mode: info.mode, graph: info.graph, graphReason: info.graphReason, parentUuid: info.parentUuid, disks: run.status.disks, target: run.status.target });
  o.onStarted();
}

/**
 * Once runPullBackup returned, the archive is complete and QEMU's bitmaps
 * rotated: a cancel that came too late does not make it a failure.
 */
async function endDoneRun(o: QemuDriveBackupOptions, r: PullBackupResult): Promise<void> {
  const { run, log } = o;
  const uuid = run.status.uuid;
  run.status.zeroBytes = r.devices.reduce((a, d) => a + d.zeroClusters * CLUSTER_SIZE, 0);
  run.status.total = r.devices.reduce((a, d) => a + d.size, 0);
  run.status.transferred = run.status.total;
  if (run.target) run.status.archiveBytes = run.target.sink.bytes;
  const endTime = new Date().toISOString();
  // Recorded before the status says done, so GET /disks agrees with it at once.
  await o.history?.record(run.status.disks, { uuid, time: endTime, mode: r.mode }).catch((err: unknown) => log.warn('recording the QEMU backup history failed', { uuid, error: describeError(err) }));
  run.status.endTime = endTime;
  run.status.status = 'done';
  log.info('backup done', { uuid, kind: 'qemu', mode: r.mode, bytesWritten: r.summary.bytesWritten, storedBytes: r.summary.storedBytes, durationMs: r.durationMs });
}
