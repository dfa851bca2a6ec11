import { resolve } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { Option, type Command } from 'commander';
import { BackupError, BackupRunningError, UsageError } from '../../errors.js';
import { formatAge, formatBytes, formatRate, parsePositiveInt, parseSize, printJson } from '../output.js';
import { AgentClient } from '../../agent/control-client.js';
import type { BackupStatus, DiskStatus } from '../../agent/backup-request.js';
import type { ScheduleReport } from '../../agent/scheduled-backups.js';
import { targetFromFlag, type BackupCliOptions } from './backup-options.js';
import { addUploadOptions, hasUploadFlags } from '../upload-flags.js';
import { progressWanted, startProgress } from '../progress.js';
import { DEFAULT_AGENT_SOCKET, agentSocket } from '../agent-socket.js';

export { DEFAULT_AGENT_SOCKET, agentSocket };

const collect = (v: string, prev: string[]): string[] => [...prev, v];

/** Builds the POST /backups body from CLI flags (UsageError on bad values). */
export function backupBodyFromOptions(o: BackupCliOptions): Record<string, unknown> {
  const body: Record<string, unknown> = { mode: o.incremental ? 'incremental' : 'full', target: targetFromFlag(o.to) };
  if (o.disk.length > 0) body.disks = o.disk;
  if (o.fleecing !== undefined) {
    body.fleecing = { dir: resolve(o.fleecing), maxBytes: parseSize(o.fleecingMax ?? '1G', '--fleecing-max') };
  } else if (o.fleecingMax !== undefined) throw new UsageError('--fleecing-max needs --fleecing DIR');
  if (o.speed !== undefined) {
    const s = parseSize(o.speed, '--speed');
    if (s <= 0) throw new UsageError('--speed must be positive');
    body.speed = s;
  }
  if (o.configFile.length > 0) body.configFiles = o.configFile.map((f) => resolve(f));
  if (o.cbwTimeout !== undefined) body.cbwTimeoutMs = parsePositiveInt(o.cbwTimeout, '--cbw-timeout', 3_600_000);
  if (o.onCbwError !== undefined) body.onCbwError = o.onCbwError;
  if (o.key !== undefined) body.key = resolve(o.key);
  return body;
}

/** What a finished backup cost: wall time, throughput (bytes read per second) and compression (bytes read / bytes written). */
export interface BackupSummary {
  durationMs: number;
  bytesPerSecond: number;
  /** null when nothing was read or written (e.g. an incremental of an unchanged disk). */
  compressionRatio: number | null;
}

/** The summary of a backup that has ended; null while it runs. */
export function backupSummary(s: BackupStatus): BackupSummary | null {
  if (s.endTime === null) return null;
  const durationMs = Math.max(0, Date.parse(s.endTime) - Date.parse(s.startTime));
  return {
    durationMs,
    bytesPerSecond: Math.round(s.transferred / Math.max(0.001, durationMs / 1000)),
    compressionRatio: s.archiveBytes > 0 && s.transferred > 0 ? Math.round((s.transferred / s.archiveBytes) * 100) / 100 : null,
  };
}

function describeSummary(m: BackupSummary, s: BackupStatus): string {
  const ratio = m.compressionRatio === null ? '-' : `${m.compressionRatio.toFixed(2)}x`;
  return `  summary:     ${(m.durationMs / 1000).toFixed(1)} s, ${formatRate(s.transferred, Math.max(0.001, m.durationMs / 1000))}, compression ${ratio} (${formatBytes(s.transferred)} read, ${formatBytes(s.archiveBytes)} written)`;
}

function describeStatus(s: BackupStatus): string {
  const lines = [
    `backup ${s.uuid}: ${s.status}`,
    `  mode:        ${s.mode}${s.modeReason ? ` (${s.modeReason})` : ''}${s.parentUuid ? `, parent ${s.parentUuid}` : ''}`,
    `  disks:       ${s.disks.join(', ')}`,
    ...(s.qemuGraph ? [`  qemu graph:  ${s.qemuGraph.kind} (${s.qemuGraph.reason})`] : []),
    `  target:      ${s.target}${s.key ? ` (s3://${s.bucket}/${s.key})` : ''}`,
    `  progress:    ${formatBytes(s.transferred)} of ${formatBytes(s.total)} (${formatBytes(s.zeroBytes)} zero), ${formatBytes(s.archiveBytes)} written`,
    `  started:     ${s.startTime}${s.endTime ? `, ended ${s.endTime}` : ''}`,
  ];
  const summary = backupSummary(s);
  if (summary) lines.push(describeSummary(summary, s));
  if (s.error) lines.push(`  error:       ${s.error}`);
  return lines.join('\n');
}

function describeDisk(d: DiskStatus): string {
  const bm = d.bitmap.state === 'valid' ? `valid, ${formatBytes(d.bitmap.dirtyBytes ?? 0)} dirty` : `invalid (${d.bitmap.reason ?? 'unknown reason'}; the next backup is full)`;
  const last = d.lastBackup ? `${d.lastBackup.mode} ${d.lastBackup.uuid} at ${d.lastBackup.time}` : 'none';
  const where = d.kind === 'qemu' ? `QEMU node ${d.node} via ${d.qmpSocket}${d.format ? ` (${d.format})` : ''}` : d.path;
  const size = d.size === null ? '?' : formatBytes(d.size);
  return `  ${d.name}  ${size}  ${where}\n    dirty bitmap: ${bm}\n    last backup:  ${last}`;
}

/**
 * POST /backups; when a backup is already running, the agent's answer names
 * its HTTP route, so a CLI user is told the commands instead.
 */
async function startOrExplain(client: AgentClient, body: Record<string, unknown>): Promise<Awaited<ReturnType<AgentClient['startBackup']>>> {
  try {
    return await client.startBackup(body);
  } catch (err) {
    if (!(err instanceof BackupRunningError)) throw err;
    const current = await client.status().catch(() => null);
    const which = current?.status === 'active' ? `backup ${current.uuid} (started ${current.startTime})` : 'another backup';
    // No cause: it is the same refusal, worded for API clients (describeError would print both).
    throw new BackupRunningError(`${which} is still running: \`cowstream status\` shows its progress, \`cowstream cancel\` stops it`);
  }
}

function describeSchedule(g: ScheduleReport): string {
  const next = g.next ? `${g.next.mode} at ${g.next.at}` : 'none (the cron expressions have no future time)';
  const o = g.last?.outcome;
  const last = !g.last ? 'none yet' : `${g.last.mode} slot ${g.last.slot}: ${g.running ? 'running' : !o ? 'interrupted' : o.ok ? `ok ${o.uuid ?? ''}`.trim() : `FAILED${o.error ? ` (${o.error})` : ''}`}${g.last.finishedAt ? `, ended ${g.last.finishedAt}` : ''}`;
  const retention = g.retention.appliedBy === 'agent' ? JSON.stringify(g.retention.policy) : g.retention.appliedBy === 'catalogue' ? 'left to the catalogue' : 'none (keeps everything)';
  const good = g.lastGood.map((d) => (d.uuid === null ? `    ${d.disk}: no successful backup` : `    ${d.disk}: ${formatAge(d.ageSeconds)} ago (${d.mode} ${d.uuid} at ${d.time})`));
  return [`  ${g.name}  disks ${g.disks.join(', ')}`, `    next run:     ${next}`, `    last run:     ${last}`, `    retention:    ${retention}`, '    last good backup:', ...good.map((l) => `  ${l}`)].join('\n');
}

/** GET /schedules; an agent from before schedules has no such route: no schedules. */
async function fetchSchedules(client: AgentClient): Promise<ScheduleReport[]> {
  try {
    return await client.schedules();
  } catch (err) {
    if ((err as { code?: string }).code === 'NOT_FOUND') return [];
    throw err;
  }
}

async function runAgentBackup(o: BackupCliOptions): Promise<void> {
  const body = backupBodyFromOptions(o);
  const toStdout = body.target === '-';
  if (toStdout && o.json) throw new UsageError('--to - writes the archive to stdout and cannot be combined with --json');
  // Messages never go to stdout when stdout carries the archive.
  const say = (text: string): void => void (toStdout ? process.stderr : process.stdout).write(text + '\n');
  if (o.detach && toStdout) throw new UsageError('--detach cannot be combined with --to -: the archive streams through this command');
  const client = new AgentClient(agentSocket(o.agent));
  const started = await startOrExplain(client, body);
  if (!o.json) say(`backup ${started.uuid} started: ${started.mode}${started.modeReason ? ` (${started.modeReason})` : ''}${started.qemuGraph ? `, ${started.qemuGraph.kind} graph` : ''} → ${started.key ? `s3://${started.bucket}/${started.key}` : started.target}`);

  if (toStdout) {
    const res = await client.raw('GET', '/backups/current/stream');
    if ((res.statusCode ?? 500) >= 400) {
      const chunks: Buffer[] = [];
      for await (const c of res) chunks.push(c as Buffer);
      throw new BackupError(`agent refused the archive stream: ${Buffer.concat(chunks).toString('utf8').trim()}`);
    }
    await pipeline(res, process.stdout, { end: false });
  }

  if (o.detach) {
    if (o.json) printJson(started);
    else say(`detached: \`cowstream status\` follows it, \`cowstream cancel\` stops it`);
    return;
  }
  const bar = startProgress({ label: 'backup', enabled: !toStdout && progressWanted(o) });
  let final: BackupStatus;
  try {
    final = await client.waitForBackup(started.uuid, (s) => bar.update(s.transferred, s.total));
  } finally {
    bar.stop();
  }
  const summary = backupSummary(final);
  // On failure main() prints the one JSON error document.
  if (o.json && final.status === 'done') printJson({ ...final, ...summary });
  else if (!o.json) say(describeStatus(final));
  if (final.status !== 'done') throw new BackupError(`backup ${final.uuid} ${final.status}${final.error ? `: ${final.error}` : ''}`);
}

async function runQemu(o: BackupCliOptions): Promise<void> {
  // Lazy, so agent-mode backups never load the QMP/NBD client code. The
  // specifier is a plain literal so esbuild (scripts/bundle-cli.mjs) sees the
  // import and emits the module as a chunk of the CLI bundle.
  let mod: { runQemuBackup?: (opts: BackupCliOptions) => Promise<void> };
  try {
    mod = await import('./backup-qemu.js');
  } catch (err) {
    throw new UsageError(`--qemu backups are not available in this build (cannot load backup-qemu module: ${(err as Error).message})`, { cause: err });
  }
  if (typeof mod.runQemuBackup !== 'function') throw new UsageError('--qemu backups are not available: backup-qemu module has no runQemuBackup');
  await mod.runQemuBackup(o);
}

export function registerBackupCommands(program: Command): void {
  const backup = program
    .command('backup')
    .description('start a live backup of the agent\'s disks (or of a QEMU VM with --qemu)')
    .option('--disk <name>', 'disk to back up (repeatable; default: all disks)', collect, [])
    .option('--incremental', 'only the clusters changed since the last successful backup (falls back to full, saying why, when the dirty bitmap is invalid)')
    .option('--fleecing <dir>', 'copy-before-write into a scratch store in DIR (on the agent host) instead of waiting for the target')
    .option('--fleecing-max <size>', 'scratch store limit, e.g. 512M (default 1G)')
    .option('--speed <rate>', 'limit the background copy to RATE bytes/s, e.g. 50M (guest-write copies are never limited)')
    .option('--config-file <file>', 'embed a config file in the archive (repeatable)', collect, [])
    .option('--cbw-timeout <ms>', 'longest a guest write may wait for its copy-before-write')
    .addOption(new Option('--on-cbw-error <policy>', 'what a copy-before-write failure breaks').choices(['break-snapshot', 'break-guest-write']))
    .option('--key <file>', 'encrypt with this key file (path on the agent host)')
    .option('--to <target>', 's3 (the configured bucket), file:PATH or PATH (a .cwa file written by the agent), or - (stdout)', 's3')
    .option('--detach', 'return as soon as the backup has started (default: wait until it ends, showing progress; exit 1 if it failed)')
    .option('--wait', 'accepted for compatibility: waiting is the default')
    .option('--progress', 'show the progress bar even when stderr is not a TTY')
    .option('--json', 'print JSON')
    .option('--agent <socket>', `agent control socket (default $COWSTREAM_AGENT_SOCKET or ${DEFAULT_AGENT_SOCKET})`)
    .option('--qemu <socket>', 'back up a running QEMU through its QMP socket (pull mode) instead of the agent')
    .option('--drive <node[=name]>', 'QEMU block node to back up, optionally named (repeatable, with --qemu)', collect, [])
    .option('--qemu-nbd <socket>', 'with --qemu: Unix socket of the NBD server QEMU already runs (QEMU allows only one; default: start a private one)');
  addUploadOptions(backup).action(async (o: BackupCliOptions) => {
    if (o.qemu !== undefined) return runQemu(o);
    if (hasUploadFlags(o)) throw new UsageError('upload options (--storage-class, --sse, --object-lock-*, --checksum-algorithm) apply to --qemu backups; the agent takes them from store.upload in its config');
    if (o.drive.length > 0) throw new UsageError('--drive needs --qemu <socket>');
    if (o.qemuNbd !== undefined) throw new UsageError('--qemu-nbd needs --qemu <socket>');
    return runAgentBackup(o);
  });

  program
    .command('status')
    .description('show the agent\'s current/last backup, its disks with their dirty bitmaps, and its schedules (next run, last result, age of the last good backup per disk)')
    .option('--json', 'print JSON')
    .option('--agent <socket>', `agent control socket (default $COWSTREAM_AGENT_SOCKET or ${DEFAULT_AGENT_SOCKET})`)
    .action(async (o: { json?: boolean; agent?: string }) => {
      const client = new AgentClient(agentSocket(o.agent));
      const disks = await client.disks();
      let backup: BackupStatus | null = null;
      try {
        backup = await client.status();
      } catch (err) {
        if ((err as { code?: string }).code !== 'NOT_FOUND') throw err;
      }
      const schedules = await fetchSchedules(client);
      // Start-up checks that failed under `startDegraded` (src/agent/startup-checks.ts).
      const degraded = (await client.call<{ degraded?: Array<{ name: string; field?: string; detail: string }> }>('GET', '/')).degraded ?? [];
      if (o.json) return printJson({ backup, disks, schedules, ...(degraded.length > 0 ? { degraded } : {}) });
      const sched = schedules.length > 0 ? 'schedules:\n' + schedules.map(describeSchedule).join('\n') : 'schedules: none configured';
      const warn = degraded.map((d) => `DEGRADED: start-up check ${d.name} failed: ${d.detail}\n`).join('');
      process.stdout.write(warn + (backup ? describeStatus(backup) : 'no backup since the agent started') + '\ndisks:\n' + disks.map(describeDisk).join('\n') + '\n' + sched + '\n');
    });

  program
    .command('cancel')
    .description('cancel the running backup (its dirty bits are merged back; nothing is lost)')
    .option('--json', 'print JSON')
    .option('--agent <socket>', `agent control socket (default $COWSTREAM_AGENT_SOCKET or ${DEFAULT_AGENT_SOCKET})`)
    .action(async (o: { json?: boolean; agent?: string }) => {
      const st = await new AgentClient(agentSocket(o.agent)).cancel();
      if (o.json) return printJson(st);
      process.stdout.write(describeStatus(st) + '\n');
    });
}
