import { mkdir } from 'node:fs/promises';
import { describeError } from '../errors.js';
import { FileDevice } from '../device/file-device.js';
import { CbwDevice, DirtyBitmapStore, fingerprintOf, replacedImage } from '../cbw/index.js';
import { NbdServer, type NbdExport, type NbdServerOptions } from '../nbd/index.js';
import { normalizePrefix, resolveS3Timeouts } from '../store/config.js';
import { createS3Client } from '../store/s3-client.js';
import { resolveChecksumPolicy } from '../store/upload-options.js';
import { embeddedS3Dir, startEmbeddedS3, type EmbeddedS3 } from '../store/embedded-s3.js';
import { credentialsPath, loadOrCreateEmbeddedCredentials } from '../store/embedded-credentials.js';
import { removeEndpointsFile, writeEndpointsFile } from '../store/embedded-endpoints.js';
import type { AgentConfig } from './config.js';
import { ControlServer } from './control-server.js';
import { BackupManager, type AgentDisk } from './backup-manager.js';
import { createLogger, type Logger } from './log.js';
import { lockStateDir } from './state-lock.js';
import type { AgentStore } from './targets.js';
import type { ByteSink, ClusterSink } from '../format/sink.js';
import type { BlockDevice } from '../device/types.js';
import { startCatalogIntegration, type CatalogIntegration } from './catalog-integration.js';
import { QemuBackupHistory, QemuHost } from './qemu-drives.js';
import { startScheduledBackups, type ScheduledBackups } from './scheduled-backups.js';
import type { Clock } from './scheduler.js';
import { ArchiveExports, nbdUris, type OpenArchiveExports, type OpenOverlay } from './archive-exports.js';

export interface StartAgentOptions {
  log?: Logger;
  /**
   * Test seam (programmatic only, not in the config file): wraps the ByteSink
   * of every backup target, e.g. to make the sink deliberately slow or fail.
   */
  wrapSink?: (sink: ByteSink, target: string) => ByteSink;
  /** Test seam: wraps the ClusterSink between the CBW job and the archive writer (e.g. slow). */
  wrapClusterSink?: (sink: ClusterSink) => ClusterSink;
  /** Test seam: wraps each disk's raw device, below copy-before-write (e.g. to inject read errors). */
  wrapDevice?: (device: BlockDevice, disk: string) => BlockDevice;
  /** Test seam: the clock of the backup schedules (default: the system clock). */
  scheduleClock?: Clock;
  /** Opens archives for POST /exports (src/serve's openArchiveExports); without it, exports are refused. */
  openExports?: OpenArchiveExports;
  /** Opens overlays for exports with `overlay` (src/device/overlay-device.ts). */
  openOverlay?: OpenOverlay;
  /** Start-up checks that failed (`startDegraded`): reported in GET / as `degraded`. */
  degraded?: Record<string, unknown>[];
}

export interface Agent {
  readonly config: AgentConfig;
  /** The TCP address the NBD server actually bound (port 0 → ephemeral); null without `nbd.listen`. */
  readonly nbdAddress: { host: string; port: number } | null;
  /** The NBD Unix socket (default `<stateDir>/nbd.sock`); undefined with `nbd.socket: false`. */
  readonly nbdSocket: string | undefined;
  readonly controlSocket: string;
  /** The S3 store for the `s3` target (the configured bucket or the embedded s3rver). */
  readonly s3: { endpoint?: string; bucket: string; prefix: string; embedded: boolean } | null;
  /** The catalogue URL when `catalog` is configured. */
  readonly catalogUrl: string | null;
  readonly backups: BackupManager;
  readonly disks: readonly AgentDisk[];
  /** The backup schedules of the config (GET /schedules). */
  readonly schedules: ScheduledBackups;
  /** Archives served over NBD (POST /exports, catalogue export jobs). */
  readonly archiveExports: ArchiveExports;
  /** Clean shutdown: cancel a running backup, stop NBD, close disks, persist bitmaps with the clean marker. */
  stop(): Promise<void>;
}

/** The NbdServer listeners, TLS and limits of the agent's `nbd` config. */
function nbdServerOptions(c: AgentConfig['nbd']): Omit<NbdServerOptions, 'exports'> {
  return {
    ...(c.tcp ? { tcp: c.tcp } : {}),
    ...(c.socket ? { unixSocket: c.socket, unixSocketMode: c.socketMode } : {}),
    ...(c.socketGid !== undefined ? { unixSocketGid: c.socketGid } : {}),
    ...(c.tls ? { tls: c.tls } : {}),
    ...(c.handshakeTimeoutMs !== undefined ? { handshakeTimeoutMs: c.handshakeTimeoutMs } : {}),
    ...(c.idleTimeoutMs !== undefined ? { idleTimeoutMs: c.idleTimeoutMs } : {}),
    ...(c.maxConnections !== undefined ? { maxConnections: c.maxConnections } : {}),
    ...(c.maxConnectionsPerPeer !== undefined ? { maxConnectionsPerPeer: c.maxConnectionsPerPeer } : {}),
  };
}

/**
 * Starts the host agent: disks (FileDevice → CbwDevice with persistent dirty
 * bitmaps), the NBD server (export name = disk name), the S3 store (embedded
 * s3rver when none is configured), the control API and, with `catalog`, the
 * catalogue integration (embedded catalogue + restore poller).
 *
 * Any failure while starting undoes what was started, in reverse order.
 */
export async function startAgent(config: AgentConfig, opts: StartAgentOptions = {}): Promise<Agent> {
  const log = opts.log ?? createLogger(config.logLevel);
  for (const w of config.warnings) log.warn(w);
  const cleanups: Array<() => Promise<void>> = [];
  const undo = async (): Promise<void> => {
    while (cleanups.length > 0) {
      const c = cleanups.pop()!;
      await c().catch((err: unknown) => log.warn('cleanup failed', { error: describeError(err) }));
    }
  };
  try {
    await mkdir(config.stateDir, { recursive: true, mode: 0o700 });
    const unlock = await lockStateDir(config.stateDir);
    cleanups.push(unlock);

    // Disks + dirty bitmaps (validity decided here: unclean stop / changed disk → invalid, next backup full).
    const bitmaps = new DirtyBitmapStore(config.stateDir);
    const disks: AgentDisk[] = [];
    for (const [id, d] of config.disks.entries()) {
      const file = await FileDevice.open(d.path, { readOnly: d.readOnly });
      cleanups.push(() => file.close());
      const raw = opts.wrapDevice ? opts.wrapDevice(file, d.name) : file;
      const dirty = await bitmaps.open({ name: d.name, path: d.path, size: raw.size });
      // The identity of the file we have open, compared with the path's at
      // every backup start and at shutdown: a file renamed over the path must
      // not inherit this disk's bitmap.
      const openFingerprint = async () => fingerprintOf(await file.openStat(), file.size);
      const replaced = async (): Promise<string | null> => replacedImage(d.path, await openFingerprint());
      // A failed start must not leave the bitmap marked 'running' forever: but
      // the disk may have been written meanwhile only through us, and nothing
      // was, so recording a clean state is correct.
      cleanups.push(async () => {
        const why = await dirty.shutdown(await openFingerprint());
        if (why) log.error('disk image replaced: its dirty bitmap is invalid, the next backup is full', { disk: d.name, reason: why });
      });
      const device = new CbwDevice(raw, { deviceId: id, dirty });
      disks.push({ id, name: d.name, path: d.path, device, dirty, replaced });
      const st = dirty.status();
      log.info('disk opened', { disk: d.name, path: d.path, size: raw.size, bitmap: st.valid ? 'valid' : 'invalid', ...(st.valid ? { dirtyBytes: st.dirtyBytes } : { reason: st.invalidReason }) });
    }
    // Order matters on stop: devices close before bitmaps record the fingerprint.
    cleanups.push(async () => {
      for (const d of disks) await d.device.flush().catch(() => undefined);
    });

    // S3 store for the `s3` target.
    let store: AgentStore | null = null;
    let embedded: EmbeddedS3 | null = null;
    if (config.store) {
      const client = createS3Client({ ...config.store, prefix: normalizePrefix(config.store.prefix) });
      cleanups.push(async () => client.destroy());
      store = {
        client,
        bucket: config.store.bucket,
        prefix: normalizePrefix(config.store.prefix),
        ...(config.store.endpoint ? { endpoint: config.store.endpoint } : {}),
        embedded: false,
        ...(config.store.upload ? { upload: config.store.upload } : {}),
        checksums: resolveChecksumPolicy(config.store),
      };
    } else {
      const credentials = (await loadOrCreateEmbeddedCredentials(config.stateDir)).s3;
      embedded = await startEmbeddedS3({ dir: embeddedS3Dir(config.stateDir), credentials });
      const e = embedded;
      cleanups.push(() => e.close());
      const sc = embedded.storeConfig('');
      const client = createS3Client(sc);
      cleanups.push(async () => client.destroy());
      store = { client, bucket: sc.bucket, prefix: '', endpoint: embedded.endpoint, embedded: true, checksums: resolveChecksumPolicy(sc) };
      log.info('embedded S3 started', { endpoint: embedded.endpoint, bucket: sc.bucket, dir: embedded.dir, credentials: credentialsPath(config.stateDir) });
    }

    // NBD exports: the CbwDevice of each disk.
    const exports = new Map<string, NbdExport>();
    for (const d of disks) exports.set(d.name, { device: d.device, description: `cowstream disk ${d.name} (${d.path})` });
    const nbd = new NbdServer({ exports, ...nbdServerOptions(config.nbd), logger: { warn: (m, f) => log.warn(m, f), info: (m, f) => log.info(m, f), debug: (m, f) => log.debug(m, f) } });
    const addrs = await nbd.listen();
    cleanups.push(() => nbd.close());
    if (addrs.tcp && config.nbd.tls?.mode !== 'require') {
      log.warn('NBD TCP listener without nbd.tls "require": anyone who can reach it (every local user, on loopback) can read and write the exported disks', { nbd: addrs.tcp });
    }

    // Archives served next to the disks, as `export-<id>/<disk>`; removed before NBD stops.
    const archiveExports = new ArchiveExports({
      exports,
      config: config.exports,
      allowedDirs: config.restore.allowedDirs,
      context: store ? { store: { bucket: store.bucket, prefix: store.prefix, ...(store.endpoint ? { endpoint: store.endpoint } : {}) }, client: store.client } : null,
      open: opts.openExports ?? null,
      ...(opts.openOverlay ? { openOverlay: opts.openOverlay } : {}),
      uris: (name) => nbdUris(name, { unixSocket: addrs.unixSocket, tcp: addrs.tcp, tls: config.nbd.tls?.mode === 'require' }),
      log,
    });
    cleanups.push(() => archiveExports.close());

    // Catalogue (embedded or remote) + restore and export job poller.
    let catalog: CatalogIntegration | null = null;
    if (config.catalog) {
      catalog = await startCatalogIntegration({ config, store, embeddedS3: embedded, log, exportedPaths: disks.map((d) => d.path), archiveExports });
      const c = catalog;
      cleanups.push(() => c.stop());
    }

    // QEMU processes (pull mode): no connection is held; each use connects and leaves the monitor free.
    const qemuHosts = config.qemu.map((q, i) => new QemuHost(i, q));
    cleanups.push(async () => {
      for (const h of qemuHosts) await h.close();
    });
    const qemuHistory = await QemuBackupHistory.open(config.stateDir, log);
    const qemuInfo = config.qemu.map((q) => ({ qmpSocket: q.qmpSocket, drives: q.drives.map((d) => `${d.node}=${d.name}`) }));

    const nbdAddress = addrs.tcp ?? null;
    const s3Info = store ? { ...(store.endpoint ? { endpoint: store.endpoint } : {}), bucket: store.bucket, prefix: store.prefix, embedded: store.embedded } : null;
    const backups = new BackupManager({
      hostId: config.hostId,
      requireEncryption: config.requireEncryption,
      disks,
      store,
      log,
      ...(opts.wrapSink ? { wrapSink: opts.wrapSink } : {}),
      ...(opts.wrapClusterSink ? { wrapClusterSink: opts.wrapClusterSink } : {}),
      qemu: qemuHosts,
      qemuHistory,
      // A cancelled upload's cleanup is bounded by store.timeouts.cleanupMs; the answer waits for it.
      cancelWaitMs: resolveS3Timeouts(config.store?.timeouts).cleanupMs + 5_000,
      info: () => ({
        hostId: config.hostId,
        pid: process.pid,
        nbd: nbdAddress ? `${nbdAddress.host}:${nbdAddress.port}` : null,
        ...(addrs.unixSocket ? { nbdSocket: addrs.unixSocket } : {}),
        disks: disks.map((d) => d.name),
        ...(qemuInfo.length > 0 ? { qemu: qemuInfo } : {}),
        s3: s3Info,
        catalog: catalog?.url ?? null,
        ...(opts.degraded && opts.degraded.length > 0 ? { degraded: opts.degraded } : {}),
      }),
    });
    cleanups.push(() => backups.shutdown());

    let schedules: ScheduledBackups | null = null;
    const control = await ControlServer.start(config.control.socket, backups, log, { schedules: async () => schedules?.status() ?? [], exports: archiveExports });
    cleanups.push(() => control.close());

    // For the CLI's --state: the endpoints are otherwise only in this log.
    await writeEndpointsFile(config.stateDir, {
      s3: store?.endpoint ? { endpoint: store.endpoint, bucket: store.bucket, prefix: store.prefix } : null,
      catalog: catalog?.url ?? null,
    });
    cleanups.push(() => removeEndpointsFile(config.stateDir));

    // Schedules start last: a catch-up run may begin at once, with everything it needs up.
    const sched = await startScheduledBackups({ config, backups, store, log, ...(opts.scheduleClock ? { clock: opts.scheduleClock } : {}) });
    schedules = sched;
    // On stop a running scheduled backup is cancelled like a manual one (its
    // dirty bits are merged back; the next slot runs normally), and the stop
    // waits until it has wound down and its outcome is recorded.
    cleanups.push(async () => {
      await Promise.all([sched.stop(), backups.shutdown()]);
    });

    log.info('agent ready', {
      hostId: config.hostId,
      nbd: nbdAddress,
      ...(addrs.unixSocket ? { nbdSocket: addrs.unixSocket } : {}),
      control: control.socketPath,
      disks: disks.map((d) => d.name),
      ...(qemuInfo.length > 0 ? { qemu: qemuInfo } : {}),
      ...(s3Info ? { s3: s3Info } : {}),
      ...(catalog ? { catalog: catalog.url } : {}),
    });

    let stopping: Promise<void> | null = null;
    return {
      config,
      nbdAddress,
      nbdSocket: addrs.unixSocket,
      controlSocket: control.socketPath,
      s3: s3Info,
      catalogUrl: catalog?.url ?? null,
      backups,
      disks,
      schedules: sched,
      archiveExports,
      stop(): Promise<void> {
        // Reverse order: schedules, control API, running backup (cancel → bitmaps reclaimed),
        // catalogue, NBD (in-flight requests answered), flush, S3, bitmaps
        // (clean marker + fingerprint), devices.
        stopping ??= undo();
        return stopping;
      },
    };
  } catch (err) {
    await undo();
    throw err;
  }
}
