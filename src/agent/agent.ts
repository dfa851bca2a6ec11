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
import { AgentMetrics } from './metrics.js';
import { startMetricsListener } from './metrics-server.js';
import { startNotifier, type Notifier } from './notify.js';
import type { DiskLastGood } from './notify-stale.js';
import { createAgentExports, type ArchiveExports, type OpenArchiveExports, type OpenOverlay } from './archive-exports.js';

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
  /** Test seam: opens archives for POST /exports (default: src/serve's openArchiveExports). */
  openExports?: OpenArchiveExports;
  /** Test seam: opens export overlays (default: src/device/overlay-device.ts openOverlay). */
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
  /** The TCP address of GET /metrics (`metrics.listen`, port 0 → ephemeral); null without it. */
  readonly metricsAddress: { host: string; port: number } | null;
  /** The agent's metrics (its own registry). */
  readonly metrics: AgentMetrics;
  /** The S3 store for the `s3` target (the configured bucket or the embedded s3rver). */
  readonly s3: { endpoint?: string; bucket: string; prefix: string; embedded: boolean } | null;
  /** The catalogue URL when `catalog` is configured. */
  readonly catalogUrl: string | null;
  readonly backups: BackupManager;
  readonly disks: readonly AgentDisk[];
  /** The backup schedules of the config (GET /schedules). */
  readonly schedules: ScheduledBackups;
  /** Archives served over NBD as `export-<id>/<disk>` (POST /exports, catalogue export jobs). */
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
 * What a failed start or a stop undoes, in reverse order of starting: each
 * step pushes its own cleanup the moment the thing it undoes exists.
 */
class Cleanups {
  private readonly stack: Array<() => Promise<void>> = [];
  constructor(private readonly log: Logger) {}

  push(cleanup: () => Promise<void>): void {
    this.stack.push(cleanup);
  }

  /** Runs every cleanup, last pushed first; a failing one is logged and the rest still run. */
  async undo(): Promise<void> {
    while (this.stack.length > 0) {
      const c = this.stack.pop()!;
      await c().catch((err: unknown) => this.log.warn('cleanup failed', { error: describeError(err) }));
    }
  }
}

/** Step 1: the config's warnings, and the state directory (created 0700, locked against a second agent). */
async function prepareStateDir(config: AgentConfig, log: Logger, cleanups: Cleanups): Promise<void> {
  for (const w of config.warnings) log.warn(w);
  await mkdir(config.stateDir, { recursive: true, mode: 0o700 });
  const unlock = await lockStateDir(config.stateDir);
  cleanups.push(unlock);
}

/**
 * Step 2: disks + dirty bitmaps (validity decided here: unclean stop /
 * changed disk → invalid, next backup full).
 */
async function openDisks(config: AgentConfig, opts: StartAgentOptions, log: Logger, cleanups: Cleanups): Promise<AgentDisk[]> {
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
  return disks;
}

/** Step 3: the S3 store for the `s3` target: the configured bucket, else the embedded s3rver. */
async function openStore(config: AgentConfig, log: Logger, cleanups: Cleanups): Promise<{ store: AgentStore; embedded: EmbeddedS3 | null }> {
  if (config.store) {
    const client = createS3Client({ ...config.store, prefix: normalizePrefix(config.store.prefix) });
    cleanups.push(async () => client.destroy());
    const store: AgentStore = {
      client,
      bucket: config.store.bucket,
      prefix: normalizePrefix(config.store.prefix),
      ...(config.store.endpoint ? { endpoint: config.store.endpoint } : {}),
      embedded: false,
      ...(config.store.upload ? { upload: config.store.upload } : {}),
      checksums: resolveChecksumPolicy(config.store),
    };
    return { store, embedded: null };
  }
  const credentials = (await loadOrCreateEmbeddedCredentials(config.stateDir)).s3;
  const embedded = await startEmbeddedS3({ dir: embeddedS3Dir(config.stateDir), credentials });
  cleanups.push(() => embedded.close());
  const sc = embedded.storeConfig('');
  const client = createS3Client(sc);
  cleanups.push(async () => client.destroy());
  log.info('embedded S3 started', { endpoint: embedded.endpoint, bucket: sc.bucket, dir: embedded.dir, credentials: credentialsPath(config.stateDir) });
  return { store: { client, bucket: sc.bucket, prefix: '', endpoint: embedded.endpoint, embedded: true, checksums: resolveChecksumPolicy(sc) }, embedded };
}

/** Step 4: the NBD server; each disk's CbwDevice is exported under the disk's name. */
async function startNbd(config: AgentConfig, disks: AgentDisk[], log: Logger, cleanups: Cleanups): Promise<{ nbd: NbdServer; addrs: Awaited<ReturnType<NbdServer['listen']>>; exports: Map<string, NbdExport> }> {
  const exports = new Map<string, NbdExport>();
  for (const d of disks) exports.set(d.name, { device: d.device, description: `cowstream disk ${d.name} (${d.path})` });
  const nbd = new NbdServer({ exports, ...nbdServerOptions(config.nbd), logger: { warn: (m, f) => log.warn(m, f), info: (m, f) => log.info(m, f), debug: (m, f) => log.debug(m, f) } });
  const addrs = await nbd.listen();
  cleanups.push(() => nbd.close());
  if (addrs.tcp && config.nbd.tls?.mode !== 'require') {
    log.warn('NBD TCP listener without nbd.tls "require": anyone who can reach it (every local user, on loopback) can read and write the exported disks', { nbd: addrs.tcp });
  }
  return { nbd, addrs, exports };
}

/** Step 5: the catalogue (embedded or remote) + restore poller, when `catalog` is configured. */
async function startCatalogue(
  config: AgentConfig,
  store: AgentStore,
  embedded: EmbeddedS3 | null,
  disks: AgentDisk[],
  parts: { metrics: AgentMetrics; notifier: Notifier; archiveExports: ArchiveExports },
  log: Logger,
  cleanups: Cleanups,
): Promise<CatalogIntegration | null> {
  if (!config.catalog) return null;
  const { metrics, notifier, archiveExports } = parts;
  const catalog = await startCatalogIntegration({
    config,
    store,
    embeddedS3: embedded,
    log,
    exportedPaths: disks.map((d) => d.path),
    archiveExports,
    onRestoreEnd: (job, outcome, start) => {
      metrics.restoreDone(outcome);
      notifier.restoreEnded(job, outcome, start);
    },
  });
  cleanups.push(() => catalog.stop());
  return catalog;
}

/** Step 6: QEMU processes (pull mode): no connection is held; each use connects and leaves the monitor free. */
async function openQemu(config: AgentConfig, log: Logger, cleanups: Cleanups): Promise<{ hosts: QemuHost[]; history: QemuBackupHistory }> {
  const hosts = config.qemu.map((q, i) => new QemuHost(i, q));
  cleanups.push(async () => {
    for (const h of hosts) await h.close();
  });
  return { hosts, history: await QemuBackupHistory.open(config.stateDir, log) };
}

/** What GET / and the readiness line say about the agent's endpoints. */
interface AgentEndpoints {
  nbdAddress: { host: string; port: number } | null;
  nbdSocket: string | undefined;
  s3Info: Agent['s3'];
  catalogUrl: string | null;
  qemuInfo: { qmpSocket: string; drives: string[] }[];
  /** GET /metrics over TCP (`metrics.listen`); set once it listens. */
  metricsAddress: { host: string; port: number } | null;
}

function describeEndpoints(config: AgentConfig, addrs: Awaited<ReturnType<NbdServer['listen']>>, store: AgentStore, catalog: CatalogIntegration | null): AgentEndpoints {
  return {
    nbdAddress: addrs.tcp ?? null,
    nbdSocket: addrs.unixSocket,
    s3Info: { ...(store.endpoint ? { endpoint: store.endpoint } : {}), bucket: store.bucket, prefix: store.prefix, embedded: store.embedded },
    catalogUrl: catalog?.url ?? null,
    qemuInfo: config.qemu.map((q) => ({ qmpSocket: q.qmpSocket, drives: q.drives.map((d) => `${d.node}=${d.name}`) })),
    metricsAddress: null,
  };
}

/** Step 7: the backup manager (one backup at a time over disks and QEMU drives). */
function createBackupManager(
  config: AgentConfig,
  opts: StartAgentOptions,
  parts: { disks: AgentDisk[]; store: AgentStore; qemu: { hosts: QemuHost[]; history: QemuBackupHistory }; endpoints: AgentEndpoints; metrics: AgentMetrics; notifier: Notifier; log: Logger },
  cleanups: Cleanups,
): BackupManager {
  const { disks, store, qemu, endpoints: e, metrics, notifier, log } = parts;
  const backups = new BackupManager({
    hostId: config.hostId,
    requireEncryption: config.requireEncryption,
    disks,
    store,
    log,
    ...(opts.wrapSink ? { wrapSink: opts.wrapSink } : {}),
    ...(opts.wrapClusterSink ? { wrapClusterSink: opts.wrapClusterSink } : {}),
    qemu: qemu.hosts,
    qemuHistory: qemu.history,
    // A cancelled upload's cleanup is bounded by store.timeouts.cleanupMs; the answer waits for it.
    cancelWaitMs: resolveS3Timeouts(config.store?.timeouts).cleanupMs + 5_000,
    observer: {
      runEnded: (run) => {
        notifier.backupEnded(run.status);
        metrics.runEnded(run);
      },
      cbwWait: (disk, ms) => metrics.cbwWait(disk, ms),
    },
    info: () => ({
      hostId: config.hostId,
      pid: process.pid,
      nbd: e.nbdAddress ? `${e.nbdAddress.host}:${e.nbdAddress.port}` : null,
      ...(e.nbdSocket ? { nbdSocket: e.nbdSocket } : {}),
      disks: disks.map((d) => d.name),
      ...(e.qemuInfo.length > 0 ? { qemu: e.qemuInfo } : {}),
      s3: e.s3Info,
      catalog: e.catalogUrl,
      ...(opts.degraded && opts.degraded.length > 0 ? { degraded: opts.degraded } : {}),
    }),
  });
  cleanups.push(() => backups.shutdown());
  metrics.sources.backupRunning = () => backups.active;
  return backups;
}

/**
 * The agent's metrics, before anything they describe starts: each later step
 * plugs in what is read at scrape time. Disk labels: configured names only.
 */
function createMetrics(config: AgentConfig, opts: StartAgentOptions): AgentMetrics {
  const checks = (opts.degraded ?? []).map((d) => (typeof d.name === 'string' ? d.name : 'unknown'));
  const disks = [...config.disks.map((d) => d.name), ...config.qemu.flatMap((q) => q.drives.map((d) => d.name))];
  return new AgentMetrics({ hostId: config.hostId, disks, degradedChecks: checks });
}

/**
 * The last good backup of each disk and drive, as persisted (dirty bitmaps,
 * QEMU history): true after a restart, and read without asking QEMU. The
 * metrics and the staleness check both read it.
 */
function lastGoodBackups(disks: AgentDisk[], config: AgentConfig, history: QemuBackupHistory): () => DiskLastGood[] {
  const entry = (disk: string, last: { uuid: string | null; time: string } | null): DiskLastGood => ({
    disk,
    lastGood: last?.uuid ? { uuid: last.uuid, time: last.time } : null,
  });
  return () => [
    ...disks.map((d) => entry(d.name, d.dirty.status().lastBackup)),
    ...config.qemu.flatMap((q) => q.drives.map((d) => entry(d.name, history.get(d.name)))),
  ];
}

/** The optional TCP listener of GET /metrics (`metrics.listen`); the control socket serves it regardless. */
async function startMetricsTcp(config: AgentConfig, metrics: AgentMetrics, log: Logger, cleanups: Cleanups): Promise<{ host: string; port: number } | null> {
  const listen = config.metrics.listen;
  if (!listen) return null;
  const listener = await startMetricsListener(listen, () => metrics.render(), log);
  cleanups.push(() => listener.close());
  log.info('metrics listener started', { metrics: listener.address, note: 'GET /metrics without authentication: whoever can reach this address can read it' });
  return listener.address;
}

/**
 * Step 8: the control API, then the endpoints file for the CLI's --state
 * (the endpoints are otherwise only in the log).
 */
async function startControlApi(
  config: AgentConfig,
  backups: BackupManager,
  schedules: () => ScheduledBackups | null,
  endpoints: AgentEndpoints,
  store: AgentStore,
  metrics: AgentMetrics,
  archiveExports: ArchiveExports,
  log: Logger,
  cleanups: Cleanups,
): Promise<ControlServer> {
  const control = await ControlServer.start(config.control.socket, backups, log, { schedules: async () => schedules()?.status() ?? [], metrics: () => metrics.render(), exports: archiveExports });
  cleanups.push(() => control.close());
  await writeEndpointsFile(config.stateDir, {
    s3: store.endpoint ? { endpoint: store.endpoint, bucket: store.bucket, prefix: store.prefix } : null,
    catalog: endpoints.catalogUrl,
  });
  cleanups.push(() => removeEndpointsFile(config.stateDir));
  return control;
}

/** Step 9: the schedules start last: a catch-up run may begin at once, with everything it needs up. */
async function startSchedules(config: AgentConfig, opts: StartAgentOptions, backups: BackupManager, store: AgentStore, notifier: Notifier, log: Logger, cleanups: Cleanups): Promise<ScheduledBackups> {
  const sched = await startScheduledBackups({ config, backups, store, log, notifier, ...(opts.scheduleClock ? { clock: opts.scheduleClock } : {}) });
  // On stop a running scheduled backup is cancelled like a manual one (its
  // dirty bits are merged back; the next slot runs normally), and the stop
  // waits until it has wound down and its outcome is recorded.
  cleanups.push(async () => {
    await Promise.all([sched.stop(), backups.shutdown()]);
  });
  return sched;
}

/**
 * Starts the host agent: disks (FileDevice → CbwDevice with persistent dirty
 * bitmaps), the NBD server (export name = disk name), the S3 store (embedded
 * s3rver when none is configured), the control API and, with `catalog`, the
 * catalogue integration (embedded catalogue + restore poller).
 *
 * Any failure while starting undoes what was started, in reverse order; so
 * does stop() (schedules, control API, running backup (cancel → bitmaps
 * reclaimed), catalogue, NBD (in-flight requests answered), flush, S3,
 * bitmaps (clean marker + fingerprint), devices).
 */
export async function startAgent(config: AgentConfig, opts: StartAgentOptions = {}): Promise<Agent> {
  const log = opts.log ?? createLogger(config.logLevel);
  const cleanups = new Cleanups(log);
  try {
    await prepareStateDir(config, log, cleanups);
    // Notifications first: every later step reports to it; it stops last, after the backup it reports on.
    const notifier = await startNotifier({ config, log });
    cleanups.push(() => notifier.stop());
    const metrics = createMetrics(config, opts);
    const disks = await openDisks(config, opts, log, cleanups);
    const { store, embedded } = await openStore(config, log, cleanups);
    const { nbd, addrs, exports } = await startNbd(config, disks, log, cleanups);
    metrics.sources.nbd = () => nbd.stats();
    // Served archives leave the NBD server's map (and their sets close) before NBD stops.
    const archiveExports = createAgentExports(config, store, exports, addrs, opts, log);
    cleanups.push(() => archiveExports.close());
    const catalog = await startCatalogue(config, store, embedded, disks, { metrics, notifier, archiveExports }, log, cleanups);
    const qemu = await openQemu(config, log, cleanups);
    const lastGood = lastGoodBackups(disks, config, qemu.history);
    metrics.sources.lastGood = lastGood;
    const endpoints = describeEndpoints(config, addrs, store, catalog);
    const backups = createBackupManager(config, opts, { disks, store, qemu, endpoints, metrics, notifier, log }, cleanups);
    let schedules: ScheduledBackups | null = null;
    const control = await startControlApi(config, backups, () => schedules, endpoints, store, metrics, archiveExports, log, cleanups);
    endpoints.metricsAddress = await startMetricsTcp(config, metrics, log, cleanups);
    const sched = await startSchedules(config, opts, backups, store, notifier, log, cleanups);
    schedules = sched;
    cleanups.push(await notifier.watchStaleness(async () => lastGood()));
    metrics.sources.schedules = () => sched.runs();
    logReady(config, endpoints, control, disks, log);
    return { ...agentHandle(config, endpoints, control, backups, disks, sched, metrics, cleanups), archiveExports };
  } catch (err) {
    await cleanups.undo();
    throw err;
  }
}

function logReady(config: AgentConfig, e: AgentEndpoints, control: ControlServer, disks: AgentDisk[], log: Logger): void {
  log.info('agent ready', {
    hostId: config.hostId,
    nbd: e.nbdAddress,
    ...(e.nbdSocket ? { nbdSocket: e.nbdSocket } : {}),
    control: control.socketPath,
    ...(e.metricsAddress ? { metrics: e.metricsAddress } : {}),
    disks: disks.map((d) => d.name),
    ...(e.qemuInfo.length > 0 ? { qemu: e.qemuInfo } : {}),
    ...(e.s3Info ? { s3: e.s3Info } : {}),
    ...(e.catalogUrl ? { catalog: e.catalogUrl } : {}),
  });
}

/** Step 10: the running agent; stop() is the shutdown, undoing every step once. */
function agentHandle(config: AgentConfig, e: AgentEndpoints, control: ControlServer, backups: BackupManager, disks: AgentDisk[], schedules: ScheduledBackups, metrics: AgentMetrics, cleanups: Cleanups): Omit<Agent, 'archiveExports'> {
  let stopping: Promise<void> | null = null;
  return {
    config,
    nbdAddress: e.nbdAddress,
    nbdSocket: e.nbdSocket,
    controlSocket: control.socketPath,
    metricsAddress: e.metricsAddress,
    metrics,
    s3: e.s3Info,
    catalogUrl: e.catalogUrl,
    backups,
    disks,
    schedules,
    stop(): Promise<void> {
      stopping ??= cleanups.undo();
      return stopping;
    },
  };
}
