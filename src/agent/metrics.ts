/**
 * The agent's Prometheus metrics (GET /metrics; docs/metrics.md lists them).
 *
 * One registry per agent, never prom-client's global one: two agents in one
 * process (tests, embedding) must not share or collide on series. Label
 * values are bounded by the config: `disk` is a configured disk or QEMU
 * drive name (a run naming anything else is not recorded), `result`, `mode`
 * and `target` are fixed sets, `schedule` and `check` come from the config.
 */
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { NbdServerStats } from '../nbd/index.js';
import type { BackupObserver, EndedRun } from './backup-events.js';
import type { BackupStatus } from './backup-request.js';
import type { RestoreRunOutcome } from './restore-poller.js';

/** Prometheus names of the agent's metrics: one place, used by the code and checked by the tests. */
export const METRIC_PREFIX = 'cowstream_';

/** How a run ended, as the `result` label says it. */
export type RunResult = 'success' | 'failure' | 'cancelled';
const RESULTS: readonly RunResult[] = ['success', 'failure', 'cancelled'];

/**
 * Backups take seconds (a small incremental) to many hours (a full of a
 * multi-TiB disk over a slow link): 1 s to 1 day.
 */
const DURATION_BUCKETS_S = [1, 5, 15, 30, 60, 120, 300, 600, 1_800, 3_600, 7_200, 14_400, 43_200, 86_400];
/**
 * A guest write waits for one cluster copy (sub-millisecond to a few ms on a
 * local sink) up to the CBW timeout (default 30 s, cbw/backup-job.ts).
 */
const CBW_WAIT_BUCKETS_S = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

/** What the metrics read at scrape time, from parts that start after the metrics exist. */
export interface MetricsSources {
  nbd?: () => NbdServerStats;
  /** Next run of each schedule (GET /schedules). */
  schedules?: () => Array<{ name: string; next: { at: string; mode: string } | null }>;
  /** The last successful backup of each disk, from the persisted bitmaps and QEMU history (survives restarts). */
  lastGood?: () => Array<{ disk: string; lastGood: { time: string } | null }>;
  backupRunning?: () => boolean;
}

export interface AgentMetricsOptions {
  hostId: string;
  /** Every configured disk and QEMU drive name: the only `disk` label values. */
  disks: string[];
  /** Names of the start-up checks that failed (`startDegraded`). */
  degradedChecks: string[];
}

function resultOf(status: BackupStatus['status']): RunResult | null {
  if (status === 'done') return 'success';
  if (status === 'error') return 'failure';
  if (status === 'cancelled') return 'cancelled';
  return null;
}

function targetKind(target: string): 's3' | 'file' | 'stream' {
  if (target === 's3') return 's3';
  return target === '-' ? 'stream' : 'file';
}

function seconds(iso: string | null | undefined): number | null {
  if (!iso) return null;
  const ms = Date.parse(iso);
  return Number.isFinite(ms) ? ms / 1000 : null;
}

type Registers = Registry[];

/** What the agent is: its host id, start time and whether it started degraded (fixed for its lifetime). */
function registerAgentState(registers: Registers, opts: AgentMetricsOptions): void {
  new Gauge({ name: `${METRIC_PREFIX}agent_info`, help: 'Always 1; the label names the agent host.', labelNames: ['host_id'], registers }).set({ host_id: opts.hostId }, 1);
  new Gauge({ name: `${METRIC_PREFIX}agent_start_time_seconds`, help: 'When the agent started (Unix time).', registers }).set(Date.now() / 1000);
  new Gauge({ name: `${METRIC_PREFIX}agent_degraded`, help: '1 when the agent started although a start-up check failed (startDegraded), else 0.', registers }).set(opts.degradedChecks.length > 0 ? 1 : 0);
  const failedCheck = new Gauge({ name: `${METRIC_PREFIX}agent_startup_check_failed`, help: '1 for each start-up check that failed at start (startDegraded).', labelNames: ['check'], registers });
  for (const c of opts.degradedChecks) failedCheck.set({ check: c }, 1);
}

/** Metrics read from their source at each scrape (persisted state, the NBD server, the scheduler). */
function registerScrapedMetrics(registers: Registers, src: MetricsSources, disks: readonly string[]): void {
  new Gauge({
    name: `${METRIC_PREFIX}backup_last_success_timestamp_seconds`,
    help: 'When the last successful backup of the disk ended (Unix time; 0: none recorded). Persisted: survives restarts.',
    labelNames: ['disk'],
    registers,
    collect() {
      for (const g of src.lastGood?.() ?? []) if (disks.includes(g.disk)) this.set({ disk: g.disk }, seconds(g.lastGood?.time) ?? 0);
    },
  });
  new Gauge({
    name: `${METRIC_PREFIX}backup_running`,
    help: '1 while a backup runs, else 0.',
    registers,
    collect() {
      this.set(src.backupRunning?.() ? 1 : 0);
    },
  });
  new Gauge({
    name: `${METRIC_PREFIX}nbd_connections`,
    help: 'Open NBD connections (handshake or transmission).',
    registers,
    collect() {
      this.set(src.nbd?.().connections ?? 0);
    },
  });
  // The NBD server keeps its own totals (NbdServer.stats()); a scrape copies them.
  const nbdTotal = (name: string, help: string, pick: (s: NbdServerStats) => number): Counter =>
    new Counter({
      name: `${METRIC_PREFIX}${name}`,
      help,
      registers,
      collect() {
        const stats = src.nbd?.();
        this.reset();
        this.inc(stats ? pick(stats) : 0);
      },
    });
  nbdTotal('nbd_requests_total', 'NBD requests received.', (s) => s.requests);
  nbdTotal('nbd_requests_failed_total', 'NBD requests answered with an error.', (s) => s.requestsFailed);
  new Gauge({
    name: `${METRIC_PREFIX}schedule_next_run_timestamp_seconds`,
    help: 'When the schedule runs next (Unix time), with the mode of that run.',
    labelNames: ['schedule', 'mode'],
    registers,
    collect() {
      this.reset();
      for (const s of src.schedules?.() ?? []) {
        const at = seconds(s.next?.at);
        if (s.next && at !== null) this.set({ schedule: s.name, mode: s.next.mode }, at);
      }
    },
  });
}

export class AgentMetrics implements BackupObserver {
  readonly registry = new Registry();
  readonly sources: MetricsSources = {};
  private readonly disks: ReadonlySet<string>;
  /** Longest CBW wait per disk since the current run started (reported when it ends). */
  private readonly runMaxWait = new Map<string, number>();

  private readonly lastResult: Gauge<'disk' | 'result'>;
  private readonly lastRunEnd: Gauge<'disk'>;
  private readonly backups: Counter<'mode' | 'result'>;
  private readonly readBytes: Counter<'disk'>;
  private readonly storedBytes: Counter<'target'>;
  private readonly duration: Histogram<'disk' | 'mode' | 'result'>;
  private readonly cbwWaits: Histogram<'disk'>;
  private readonly cbwWaitMax: Gauge<'disk'>;
  private readonly fleecingPeak: Gauge;
  private readonly restores: Counter<'result'>;

  constructor(opts: AgentMetricsOptions) {
    this.disks = new Set(opts.disks);
    const registers = [this.registry];
    registerAgentState(registers, opts);
    registerScrapedMetrics(registers, this.sources, opts.disks);

    this.lastResult = new Gauge({ name: `${METRIC_PREFIX}backup_last_result`, help: 'Result of the last backup of the disk since the agent started: 1 for its result, 0 for the others (all 0: none yet).', labelNames: ['disk', 'result'], registers });
    this.lastRunEnd = new Gauge({ name: `${METRIC_PREFIX}backup_last_end_timestamp_seconds`, help: 'When the last backup of the disk ended, whatever its result (Unix time; absent: none since the agent started).', labelNames: ['disk'], registers });
    this.backups = new Counter({ name: `${METRIC_PREFIX}backups_total`, help: 'Backups that ended, by mode and result.', labelNames: ['mode', 'result'], registers });
    this.readBytes = new Counter({ name: `${METRIC_PREFIX}backup_read_bytes_total`, help: 'Bytes read from the disk by backups (copy set, including all-zero clusters), whatever their result.', labelNames: ['disk'], registers });
    this.storedBytes = new Counter({ name: `${METRIC_PREFIX}backup_stored_bytes_total`, help: 'Archive bytes (compressed, with headers and index) of successful backups, by target kind.', labelNames: ['target'], registers });
    this.duration = new Histogram({ name: `${METRIC_PREFIX}backup_duration_seconds`, help: 'Duration of backups that include the disk, from the accepted request to the end of the run.', labelNames: ['disk', 'mode', 'result'], buckets: DURATION_BUCKETS_S, registers });
    this.cbwWaits = new Histogram({ name: `${METRIC_PREFIX}cbw_guest_write_wait_seconds`, help: 'How long guest writes waited for copy-before-write (only writes that had to wait).', labelNames: ['disk'], buckets: CBW_WAIT_BUCKETS_S, registers });
    this.cbwWaitMax = new Gauge({ name: `${METRIC_PREFIX}cbw_guest_write_wait_max_seconds`, help: 'Longest copy-before-write wait of a guest write during the last backup of the disk.', labelNames: ['disk'], registers });
    this.fleecingPeak = new Gauge({ name: `${METRIC_PREFIX}fleecing_scratch_peak_bytes`, help: 'Peak bytes held in the fleecing scratch store by the last backup that used fleecing.', registers });
    this.restores = new Counter({ name: `${METRIC_PREFIX}restore_jobs_total`, help: 'Catalogue restore jobs this agent ran, by result.', labelNames: ['result'], registers });

    // Series that exist from the start, so a query sees 0 rather than nothing.
    for (const disk of opts.disks) {
      this.readBytes.inc({ disk }, 0);
      for (const result of RESULTS) this.lastResult.set({ disk, result }, 0);
    }
    for (const result of ['success', 'failure']) this.restores.inc({ result }, 0);
  }

  /** BackupObserver: a run is completely over. */
  runEnded(run: EndedRun): void {
    const s = run.status;
    const result = resultOf(s.status);
    if (!result) return;
    const disks = s.disks.filter((d) => this.disks.has(d));
    const end = seconds(s.endTime) ?? Date.now() / 1000;
    const start = seconds(s.startTime);
    this.backups.inc({ mode: s.mode, result });
    if (result === 'success') this.storedBytes.inc({ target: targetKind(s.target) }, s.archiveBytes);
    if (s.fleecingPeakBytes !== undefined) this.fleecingPeak.set(s.fleecingPeakBytes);
    // Per-disk bytes when the run counted them per disk; a one-disk run's total is that disk's.
    const perDisk = run.devices.length > 0 ? run.devices : disks.length === 1 ? [{ name: disks[0]!, transferred: s.transferred }] : [];
    for (const d of perDisk) if (this.disks.has(d.name)) this.readBytes.inc({ disk: d.name }, d.transferred);
    for (const disk of disks) {
      for (const r of RESULTS) this.lastResult.set({ disk, result: r }, r === result ? 1 : 0);
      this.lastRunEnd.set({ disk }, end);
      if (start !== null) this.duration.observe({ disk, mode: s.mode, result }, Math.max(0, end - start));
      this.cbwWaitMax.set({ disk }, (this.runMaxWait.get(disk) ?? 0) / 1000);
      this.runMaxWait.delete(disk);
    }
  }

  /** BackupObserver: a guest write on `disk` waited `ms` for copy-before-write. */
  cbwWait(disk: string, ms: number): void {
    if (!this.disks.has(disk)) return;
    this.cbwWaits.observe({ disk }, ms / 1000);
    if (ms > (this.runMaxWait.get(disk) ?? 0)) this.runMaxWait.set(disk, ms);
  }

  /** RestorePoller: a restore job ended. */
  restoreDone(outcome: RestoreRunOutcome): void {
    this.restores.inc({ result: outcome.ok ? 'success' : 'failure' });
  }

  /** The exposition text and its content type (Prometheus text format 0.0.4). */
  async render(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }
}
