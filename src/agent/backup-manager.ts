import type { ServerResponse } from 'node:http';
import { basename } from 'node:path';
import { v7 as uuidv7 } from 'uuid';
import { BackupCancelledError, BackupError, BackupRunningError, ConflictError, CowstreamError, describeError } from '../errors.js';
import { runArchivePipeline } from '../backup/pipeline.js';
import { readKeyFile } from '../codec/crypto.js';
import {
  incrementalBlocker,
  startBackup,
  type BackupDisk,
  type BackupResult,
  type CbwDevice,
  type PersistentDirtyBitmap,
} from '../cbw/index.js';
import { BackupRequestError, type BackupRequest, type BackupStatus, type DiskStatus } from './backup-request.js';
import type { ControlBackend } from './control-server.js';
import type { ByteSink, ClusterSink } from '../format/sink.js';
import type { Logger } from './log.js';
import { openTarget, type AgentStore } from './targets.js';
import type { QemuBackupHistory, QemuHost } from './qemu-drives.js';
import { runQemuDriveBackup } from './qemu-backup.js';
import { readBoundedFile } from './bounded-file.js';
import { endFailedRun, liveBackupCompressor, openRunTarget, type Run } from './run-state.js';
import type { BackupObserver } from './backup-events.js';

/** One exported disk of the agent. */
export interface AgentDisk {
  /** Archive device id = index in the config (CbwDevice.deviceId). */
  id: number;
  name: string;
  path: string;
  device: CbwDevice;
  dirty: PersistentDirtyBitmap;
  /** Why the file at `path` is no longer the one the agent has open (null: it is). */
  replaced?: () => Promise<string | null>;
}

/** Embedded config files are small text files; bound what a request can make us read. */
const MAX_CONFIG_FILE_BYTES = 4 * 1024 * 1024;

/** A new run in state 'active', and the function that settles its `finished` promise. */
function newRun(
  req: BackupRequest,
  init: { uuid: string; mode: BackupStatus['mode']; modeReason: string | undefined; parentUuid: string | null; disks: string[]; abort: AbortController | null },
): { run: Run; resolveFinished: () => void } {
  let resolveFinished!: () => void;
  const run: Run = {
    status: {
      status: 'active',
      uuid: init.uuid,
      mode: init.mode,
      ...(init.modeReason ? { modeReason: init.modeReason } : {}),
      requestedMode: req.mode,
      parentUuid: init.parentUuid,
      disks: init.disks,
      total: 0,
      transferred: 0,
      zeroBytes: 0,
      archiveBytes: 0,
      cbwClusters: 0,
      maxCbwWaitMs: 0,
      startTime: new Date().toISOString(),
      endTime: null,
      error: null,
      target: req.target.kind === 's3' ? 's3' : req.target.kind === 'file' ? `file:${req.target.path}` : '-',
    },
    session: null,
    target: null,
    writer: null,
    cancelRequested: false,
    startError: null,
    finished: new Promise<void>((r) => (resolveFinished = r)),
    abort: init.abort,
  };
  return { run, resolveFinished };
}

/** What POST /backups selected: file disks, or the drives of ONE qemu entry. */
export type DiskSelection = { kind: 'file'; disks: AgentDisk[] } | { kind: 'qemu'; host: QemuHost; drives: { node: string; name: string }[] };


/**
 * Runs at most one backup at a time over the agent's disks and keeps the
 * status of the current/last one for the control API.
 *
 * Bitmap transaction (src/cbw session): the ArchiveWriter is created before
 * startBackup; after the job ends the writer is finished (or aborted) and
 * only then `session.complete(archiveOk)` abdicates or reclaims the dirty
 * bitmaps — a failed upload therefore never loses a dirty bit.
 */
export class BackupManager implements ControlBackend {
  private run: Run | null = null;
  /**
   * A POST /backups between its first line and the moment its run exists
   * (reading config files and the key file takes awaits). Taken
   * synchronously, so of two concurrent requests exactly one proceeds;
   * cancel() and shutdown() see it too.
   */
  private starting: { cancelRequested: boolean; settled: Promise<void> } | null = null;
  private stopping = false;

  constructor(
    private readonly ctx: {
      hostId: string;
      /** Agent config `requireEncryption`: a request without `key` is refused. */
      requireEncryption?: boolean;
      disks: AgentDisk[];
      store: AgentStore | null;
      log: Logger;
      info: () => Record<string, unknown>;
      /** Test seam: wraps every target's ByteSink (e.g. a deliberately slow or failing sink). */
      wrapSink?: (sink: ByteSink, target: string) => ByteSink;
      /** Test seam: wraps the ClusterSink between the CBW job and the archive writer. */
      wrapClusterSink?: (sink: ClusterSink) => ClusterSink;
      /** QEMU processes of the config (`qemu[]`), backed up in pull mode. */
      qemu?: QemuHost[];
      qemuHistory?: QemuBackupHistory;
      /** How long POST /backups/current/cancel waits for the backup to wind down (default 10 s). */
      cancelWaitMs?: number;
      /** Told when a run ends and when a guest write waits (the agent's metrics and notifications). */
      observer?: BackupObserver;
    },
  ) {}

  info(): Record<string, unknown> {
    return this.ctx.info();
  }

  current(): BackupStatus | null {
    if (!this.run) return null;
    this.refresh(this.run);
    return { ...this.run.status };
  }

  get active(): boolean {
    return this.run?.status.status === 'active';
  }

  /**
   * Waits until the run `uuid` is completely over (bitmaps completed, target
   * closed) and returns its final status; null when it is not the current
   * run (a newer one replaced it).
   */
  async waitFor(uuid: string): Promise<BackupStatus | null> {
    const run = this.run;
    if (!run || run.status.uuid !== uuid) return null;
    await run.finished;
    this.refresh(run);
    return { ...run.status };
  }

  /** Settles when no backup is starting or running (it may start again at once). */
  async idle(): Promise<void> {
    await this.starting?.settled;
    await this.run?.finished;
  }

  async disks(): Promise<DiskStatus[]> {
    const files = this.ctx.disks.map((d): DiskStatus => {
      const s = d.dirty.status();
      return {
        kind: 'file',
        name: d.name,
        path: d.path,
        size: d.device.size,
        bitmap: {
          state: s.valid ? 'valid' : 'invalid',
          ...(s.valid ? {} : { reason: s.invalidReason ?? 'invalid' }),
          dirtyBytes: s.valid ? s.dirtyBytes : null,
        },
        inBackup: s.frozen,
        lastBackup: s.lastBackup && s.lastBackup.uuid ? { uuid: s.lastBackup.uuid, time: s.lastBackup.time, mode: s.lastBackup.mode } : null,
      };
    });
    const run = this.run;
    const busy = (name: string): boolean => run?.status.status === 'active' && run.status.disks.includes(name);
    const history = this.ctx.qemuHistory;
    const qemu = await Promise.all((this.ctx.qemu ?? []).map((h) => h.status(busy, (n) => history?.get(n) ?? null)));
    return [...files, ...qemu.flat()];
  }

  attachStream(res: ServerResponse): void {
    const run = this.run;
    if (!run || run.status.status !== 'active') throw new ConflictError('no backup is running');
    if (!run.target?.stream) throw new ConflictError(`the current backup writes to ${run.status.target}, not to a stream ("-")`);
    run.target.stream.attach(res);
  }

  async cancel(): Promise<BackupStatus> {
    const pending = this.starting;
    const previous = this.run;
    if (pending && previous?.status.status !== 'active') {
      // The winning request has not created its run yet: it sees the flag and ends as cancelled.
      pending.cancelRequested = true;
      await pending.settled;
    }
    const run = this.run;
    if (!run || run.status.status !== 'active') {
      // A start that was cancelled before its run was active ended as that run; one that failed left none.
      if (pending && run && run !== previous) return this.current()!;
      throw new ConflictError('no backup is running');
    }
    this.requestCancel(run, 'backup cancelled');
    // Wait (bounded) for the bitmaps to be reclaimed so the answer is final.
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([run.finished, new Promise((r) => (timer = setTimeout(r, this.ctx.cancelWaitMs ?? 10_000)))]);
    clearTimeout(timer);
    return this.current()!;
  }

  /** Cancels a running backup and waits for it to be fully wound down (clean shutdown). */
  async shutdown(): Promise<void> {
    this.stopping = true;
    const pending = this.starting;
    if (pending) {
      pending.cancelRequested = true;
      await pending.settled;
    }
    const run = this.run;
    if (!run) return;
    if (run.status.status === 'active') this.requestCancel(run, 'backup cancelled: the agent is stopping');
    await run.finished;
  }

  /**
   * Cancels wherever the run is: before the snapshot, while copying (job),
   * or while the archive is being finished (the job already copied
   * everything but the target has not accepted it all yet).
   */
  private requestCancel(run: Run, why: string): void {
    run.cancelRequested = true;
    const err = new BackupCancelledError(why);
    run.session?.job.cancel();
    run.writer?.abort(err).catch(() => undefined);
    run.target?.stream?.abort(err).catch(() => undefined);
    run.abort?.abort(err);
  }

  async startBackup(req: BackupRequest): Promise<BackupStatus> {
    // Everything up to taking the slot is synchronous: no await before `this.starting` is set.
    if (this.stopping) throw new ConflictError('the agent is stopping; no new backup can start');
    if (this.starting) throw new BackupRunningError('another backup is starting; cancel it or wait (GET /backups/current)');
    if (this.run?.status.status === 'active') {
      throw new BackupRunningError(`backup ${this.run.status.uuid} is still running; cancel it or wait (GET /backups/current)`);
    }
    let settle!: () => void;
    const slot = { cancelRequested: false, settled: new Promise<void>((r) => (settle = r)) };
    this.starting = slot;
    try {
      const sel = this.selectDisks(req.disks);
      if (sel.kind === 'qemu') return await this.startQemuBackup(req, sel.host, sel.drives, slot);
      return await this.startFileBackup(req, sel.disks, slot);
    } finally {
      this.starting = null;
      settle();
    }
  }

  /** Makes `run` the current one; a cancel that reached the start slot first applies to it. */
  private adopt(run: Run, slot: { cancelRequested: boolean }): void {
    this.run = run; // from here on a second request gets 409
    if (slot.cancelRequested) this.requestCancel(run, 'backup cancelled before it started');
    void run.finished.then(() => this.notifyEnded(run));
  }

  /** Hands the final status of a run to the observer; an observer failure is logged, never the backup's. */
  private notifyEnded(run: Run): void {
    const observer = this.ctx.observer;
    if (!observer?.runEnded) return;
    this.refresh(run);
    const devices = run.session?.job.progress().devices.map((d) => ({ name: d.name, transferred: d.transferred })) ?? [];
    try {
      observer.runEnded({ status: { ...run.status }, devices });
    } catch (err) {
      this.ctx.log.warn('backup observer failed', { uuid: run.status.uuid, error: describeError(err) });
    }
  }

  private async startFileBackup(req: BackupRequest, disks: AgentDisk[], slot: { cancelRequested: boolean }): Promise<BackupStatus> {
    const names = disks.map((d) => d.name);
    await this.checkImages(disks);

    // Mode: an incremental needs valid bitmaps on every disk and one common parent archive.
    let mode = req.mode;
    let modeReason: string | undefined;
    let parentUuid: string | null = null;
    if (req.mode === 'incremental') {
      const why = incrementalBlocker(disks.map((d) => ({ id: d.id, name: d.name, device: d.device, dirty: d.dirty })));
      const parents = new Set(disks.map((d) => d.dirty.status().lastBackup?.uuid ?? null));
      if (why) {
        mode = 'full';
        modeReason = `full backup instead of incremental: ${why}`;
      } else if (parents.size !== 1 || parents.has(null)) {
        mode = 'full';
        modeReason = 'full backup instead of incremental: the selected disks were last backed up in different archives (an incremental needs one parent archive)';
      } else parentUuid = [...parents][0]!;
    }

    const { configs, encryptionKey } = await this.archiveInputs(req);

    const uuid = uuidv7();
    const { run, resolveFinished } = newRun(req, { uuid, mode, modeReason, parentUuid, disks: names, abort: null });
    this.adopt(run, slot);
    if (modeReason) this.ctx.log.warn('incremental downgraded to full', { uuid, reason: modeReason });

    let onStarted!: () => void;
    const snapshotTaken = new Promise<void>((r) => (onStarted = r));
    const finished = this.execute(run, req, disks, { uuid, parentUuid, configs, encryptionKey }, onStarted).finally(() => resolveFinished());
    if (req.target.kind === 'stream') {
      // The header can only be written once the reader attached: answer now.
      return { ...run.status };
    }
    // Other targets: answer once the snapshot is taken (or the start failed).
    await Promise.race([finished, snapshotTaken]);
    if (run.startError !== null) {
      const e = run.startError;
      throw e instanceof CowstreamError ? e : new BackupError(`backup could not start: ${describeError(e)}`, { cause: e });
    }
    return this.current()!;
  }

  /**
   * One archive = one snapshot point. File disks share the agent's CBW
   * snapshot; QEMU drives share one atomic blockdev-reopen inside ONE QEMU
   * process. There is no common instant across the two (or across two QEMU
   * processes), so a backup is either file disks or drives of one qemu entry.
   * Without `disks`: all file disks; with no file disks, all drives of the
   * only qemu entry.
   */
  private selectDisks(names: string[] | undefined): DiskSelection {
    const hosts = this.ctx.qemu ?? [];
    if (!names) {
      if (this.ctx.disks.length > 0) return { kind: 'file', disks: [...this.ctx.disks] };
      if (hosts.length === 1) return { kind: 'qemu', host: hosts[0]!, drives: [...hosts[0]!.drives] };
      throw new BackupRequestError('disks', `disks: this agent has no file disks and ${hosts.length} qemu entries; name the drives to back up (a backup covers the drives of one qemu entry)`);
    }
    const known = [...this.ctx.disks.map((d) => d.name), ...hosts.flatMap((h) => h.drives.map((d) => d.name))];
    const files: AgentDisk[] = [];
    const qemu: { host: QemuHost; drive: { node: string; name: string } }[] = [];
    names.forEach((n, i) => {
      const d = this.ctx.disks.find((x) => x.name === n);
      if (d) return void files.push(d);
      for (const host of hosts) {
        const drive = host.drives.find((x) => x.name === n);
        if (drive) return void qemu.push({ host, drive });
      }
      throw new BackupRequestError(`disks[${i}]`, `disks[${i}]: unknown disk "${n}" (known: ${known.join(', ')})`);
    });
    if (files.length > 0 && qemu.length > 0) {
      throw new BackupRequestError(
        'disks',
        `disks: cannot mix file disks (${files.map((d) => d.name).join(', ')}) and QEMU drives (${qemu.map((q) => q.drive.name).join(', ')}) in one backup: ` +
          'they have no common snapshot point; start one backup for each',
      );
    }
    if (files.length > 0) return { kind: 'file', disks: files };
    const entries = [...new Set(qemu.map((q) => q.host))];
    if (entries.length > 1) {
      throw new BackupRequestError(
        'disks',
        `disks: the drives belong to ${entries.length} QEMU processes (${entries.map((h) => `qemu[${h.index}] ${h.config.qmpSocket}`).join(', ')}); one backup covers the drives of one QEMU process (one snapshot point)`,
      );
    }
    return { kind: 'qemu', host: entries[0]!, drives: qemu.map((q) => q.drive) };
  }

  /** Pull-mode backup of QEMU drives; same run bookkeeping, status and targets as file disks. */
  private async startQemuBackup(req: BackupRequest, host: QemuHost, drives: { node: string; name: string }[], slot: { cancelRequested: boolean }): Promise<BackupStatus> {
    if (req.speed !== undefined) throw new BackupRequestError('speed', 'speed: not supported for QEMU drives (QEMU\'s NBD export is read as fast as the archive accepts it)');
    if (req.fleecing !== undefined) throw new BackupRequestError('fleecing', `fleecing: not accepted for QEMU drives; their fleecing images go to qemu[${host.index}].fleecingDir of the agent config (at most the drive size each)`);
    if (req.onCbwError === 'break-guest-write') throw new BackupRequestError('onCbwError', 'onCbwError: QEMU pull mode always breaks the snapshot, never a guest write');
    const { configs, encryptionKey } = await this.archiveInputs(req);

    const uuid = uuidv7();
    const { run, resolveFinished } = newRun(req, { uuid, mode: req.mode, modeReason: undefined, parentUuid: null, disks: drives.map((d) => d.name), abort: new AbortController() });
    this.adopt(run, slot);
    if (req.target.kind === 'stream') {
      // The answer goes out before QEMU is asked (the header waits for the reader):
      // predict the mode from the bitmaps now; the status is corrected at the snapshot point.
      const st = await host.status(() => false, () => null).catch(() => []);
      const parents = new Set(st.filter((s) => drives.some((d) => d.name === s.name)).map((s) => (s.bitmap.state === 'valid' ? s.bitmap.parentUuid : null)));
      if (req.mode === 'incremental' && parents.size === 1 && !parents.has(null)) run.status.parentUuid = [...parents][0]!;
      else run.status.mode = 'full';
    }
    if (req.target.kind === 'stream') {
      // Opened now so GET /backups/current/stream can attach as soon as this answer is out.
      try {
        run.target = await openTarget(req.target, { hostId: this.ctx.hostId, uuid, parentUuid: run.status.parentUuid, deviceNames: run.status.disks, expectedBytes: 0, store: this.ctx.store, onWarning: () => undefined, ...(this.ctx.wrapSink ? { wrapSink: this.ctx.wrapSink } : {}) });
      } catch (err) {
        // Never leave a run 'active' that nothing will finish (every later POST would get 409).
        Object.assign(run.status, { status: 'error', error: describeError(err), endTime: new Date().toISOString() });
        resolveFinished();
        throw err;
      }
    }
    let onStarted!: () => void;
    const snapshotTaken = new Promise<void>((r) => (onStarted = r));
    const finished = runQemuDriveBackup({
      run,
      req,
      host,
      drives,
      hostId: this.ctx.hostId,
      store: this.ctx.store,
      log: this.ctx.log,
      configs,
      encryptionKey,
      history: this.ctx.qemuHistory ?? null,
      onStarted,
      ...(this.ctx.wrapSink ? { wrapSink: this.ctx.wrapSink } : {}),
    }).finally(() => resolveFinished());
    if (req.target.kind === 'stream') return { ...run.status };
    await Promise.race([finished, snapshotTaken]);
    if (run.startError !== null) {
      const e = run.startError;
      throw e instanceof CowstreamError ? e : new BackupError(`backup could not start: ${describeError(e)}`, { cause: e });
    }
    return this.current()!;
  }

  /**
   * A disk image replaced behind the agent's back (another file renamed over
   * its path) is backed up from the file the agent has open, but its bitmap
   * no longer describes what the path holds: invalidate it so this and the
   * next backup are full, and say so loudly.
   */
  private async checkImages(disks: AgentDisk[]): Promise<void> {
    for (const d of disks) {
      const why = await d.replaced?.().catch((err: unknown) => `cannot check disk image ${d.path}: ${describeError(err)}`);
      if (!why) continue;
      if (d.dirty.invalidReason !== why) this.ctx.log.error('disk image replaced: its dirty bitmap is invalid, the next backup is full', { disk: d.name, reason: why });
      d.dirty.invalidate(why);
    }
  }

  /** Config blobs and key of a request, and a check that its target exists (same for file disks and QEMU drives). */
  private async archiveInputs(req: BackupRequest): Promise<{ configs: { name: string; data: Buffer }[]; encryptionKey: Buffer | undefined }> {
    const configs = await this.readConfigFiles(req.configFiles ?? []);
    let encryptionKey: Buffer | undefined;
    if (req.key === undefined && this.ctx.requireEncryption === true) {
      throw new BackupRequestError('key', 'key: this agent requires encryption (requireEncryption in the agent config); pass the path of a key file');
    }
    if (req.key !== undefined) {
      try {
        encryptionKey = await readKeyFile(req.key);
      } catch (err) {
        throw new BackupRequestError('key', `key: ${describeError(err)}`);
      }
    }
    if (req.target.kind === 's3' && !this.ctx.store) throw new BackupRequestError('target', 'target "s3": no S3 store is configured');
    return { configs, encryptionKey };
  }

  private async readConfigFiles(paths: string[]): Promise<{ name: string; data: Buffer }[]> {
    const out: { name: string; data: Buffer }[] = [];
    for (let i = 0; i < paths.length; i++) {
      const p = paths[i]!;
      try {
        out.push({ name: basename(p), data: await readBoundedFile(p, MAX_CONFIG_FILE_BYTES) });
      } catch (err) {
        throw new BackupRequestError(`configFiles[${i}]`, `configFiles[${i}]: cannot read "${p}": ${(err as Error).message}`);
      }
    }
    const dup = out.find((c, i) => out.findIndex((o) => o.name === c.name) !== i);
    if (dup) throw new BackupRequestError('configFiles', `configFiles: two files are named "${dup.name}"`);
    return out;
  }

  /** The job's wait callback, shielded: it runs on a guest write's path, which an observer must not fail. */
  private cbwWaitHook(observer: BackupObserver): (ms: number, disk: string) => void {
    return (ms, disk) => {
      try {
        observer.cbwWait?.(disk, ms);
      } catch (err) {
        this.ctx.log.warn('backup observer failed', { disk, error: describeError(err) });
      }
    };
  }

  private refresh(run: Run): void {
    const s = run.session;
    if (s) {
      const p = s.job.progress();
      run.status.total = p.total;
      run.status.transferred = p.transferred;
      run.status.zeroBytes = p.zeroBytes;
      run.status.cbwClusters = p.cbwClusters;
      run.status.maxCbwWaitMs = Math.round(p.maxCbwWaitMs);
      if (p.fleecing) run.status.fleecingPeakBytes = p.fleecing.peakUsedBytes;
    }
    if (run.target) run.status.archiveBytes = run.target.sink.bytes;
  }

  /**
   * One file-disk backup through the backup pipeline (src/backup/pipeline.ts):
   * the job is the CBW session; completing the bitmaps abdicates or reclaims
   * them after the archive's fate is known.
   */
  private async execute(
    run: Run,
    req: BackupRequest,
    disks: AgentDisk[],
    meta: { uuid: string; parentUuid: string | null; configs: { name: string; data: Buffer }[]; encryptionKey: Buffer | undefined },
    onStarted: () => void,
  ): Promise<void> {
    const log = this.ctx.log;
    const compressor = liveBackupCompressor(req.compressionLevel);
    let failure: unknown = null;
    try {
      const { result: r, summary } = await runArchivePipeline({
        open: async () => {
          const target = await openRunTarget(run, req.target, {
            hostId: this.ctx.hostId,
            uuid: meta.uuid,
            parentUuid: meta.parentUuid,
            deviceNames: disks.map((d) => d.name),
            expectedBytes: disks.reduce((a, d) => a + d.device.size, 0),
            store: this.ctx.store,
            onWarning: (w) => log.warn('store warning', { uuid: meta.uuid, warning: w.message }),
            ...(this.ctx.wrapSink ? { wrapSink: this.ctx.wrapSink } : {}),
          });
          return target.sink;
        },
        archive: {
          hostId: this.ctx.hostId,
          devices: disks.map((d) => ({ id: d.id, name: d.name, size: d.device.size })),
          parentUuid: meta.parentUuid,
          configs: meta.configs,
          uuid: meta.uuid,
          compressor,
          ...(meta.encryptionKey ? { encryptionKey: meta.encryptionKey } : {}),
        },
        onWriter: (writer) => (run.writer = writer),
        job: (writer) => this.copyDisks(run, req, disks, writer, onStarted),
        complete: (archiveOk) => this.completeBitmaps(run, archiveOk),
        onAbortFailed: (e) => log.warn('archive abort failed', { uuid: meta.uuid, error: describeError(e) }),
      });
      log.info('backup done', { uuid: meta.uuid, bytesWritten: summary.bytesWritten, storedBytes: summary.storedBytes, zeroBytes: summary.zeroBytes, cbwClusters: r.cbwClusters, maxCbwWaitMs: Math.round(r.maxCbwWaitMs) });
    } catch (err) {
      failure = err;
      if (!run.session && !run.cancelRequested) run.startError = err;
    }
    await compressor.close().catch(() => undefined);
    this.refresh(run);
    if (failure === null) {
      run.status.endTime = new Date().toISOString();
      run.status.status = 'done';
    } else endFailedRun(run, failure, run.cancelRequested || run.session?.job.progress().status === 'cancelled', log);
  }

  /** The pipeline's job for file disks: the CBW session copies every cluster of the snapshot into the writer. */
  private async copyDisks(run: Run, req: BackupRequest, disks: AgentDisk[], writer: ClusterSink, onStarted: () => void): Promise<BackupResult> {
    if (run.cancelRequested) throw new BackupCancelledError('backup cancelled before it started');
    const bdisks: BackupDisk[] = disks.map((d) => ({ id: d.id, name: d.name, device: d.device, dirty: d.dirty }));
    run.session = await startBackup({
      disks: bdisks,
      mode: run.status.mode,
      sink: this.ctx.wrapClusterSink ? this.ctx.wrapClusterSink(writer) : writer,
      ...(req.speed !== undefined ? { speedBytesPerSec: req.speed } : {}),
      ...(req.cbwTimeoutMs !== undefined ? { cbwTimeoutMs: req.cbwTimeoutMs } : {}),
      ...(req.onCbwError !== undefined ? { onCbwError: req.onCbwError } : {}),
      ...(req.fleecing ? { fleecing: { dir: req.fleecing.dir, maxBytes: req.fleecing.maxBytes } } : {}),
      ...(this.ctx.observer?.cbwWait ? { onCbwWait: this.cbwWaitHook(this.ctx.observer) } : {}),
    });
    if (run.cancelRequested) run.session.job.cancel();
    onStarted();
    this.ctx.log.info('backup started', { uuid: run.status.uuid, mode: run.status.mode, parentUuid: run.status.parentUuid, disks: run.status.disks, target: run.status.target, fleecing: req.fleecing?.dir });
    const r = await run.session.done;
    if (r.status === 'done' && run.cancelRequested) throw new BackupCancelledError('backup cancelled');
    if (r.status !== 'done') throw r.errorObject ?? new Error(r.error ?? r.status);
    return r;
  }

  /** Abdicates (archive complete) or reclaims (failure/cancel) the dirty bitmaps of a started session. */
  private async completeBitmaps(run: Run, archiveOk: boolean): Promise<void> {
    if (!run.session) return;
    try {
      await run.session.complete(archiveOk, { uuid: run.status.uuid });
    } catch (err) {
      this.ctx.log.error('persisting dirty bitmaps failed', { uuid: run.status.uuid, error: describeError(err) });
      throw err;
    }
  }
}
