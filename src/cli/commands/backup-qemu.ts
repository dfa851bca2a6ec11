/**
 * `cowstream backup --qemu <qmp-socket> --drive <node[=name]>...` — pull-mode
 * backup of a running QEMU (src/qemu/pull-backup.ts), loaded lazily by
 * src/cli/commands/backup.ts. Runs in this process (no agent): the archive
 * goes straight from QEMU's NBD export to the target.
 */
import { stat } from 'node:fs/promises';
import { hostname, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { UsageError } from '../../errors.js';
import { formatBytes, printJson } from '../output.js';
import { ZstdPool } from '../../codec/zstd-pool.js';
import { readKeyFile } from '../../codec/crypto.js';
import type { ByteSink } from '../../format/sink.js';
import { storeConfigFromFlags } from '../../store/config.js';
import type { S3Client } from '@aws-sdk/client-s3';
import { createS3Client } from '../../store/s3-client.js';
import { openArchiveTarget, type ArchiveTargetSpec } from '../../backup/target.js';
import { resolveChecksumPolicy } from '../../store/upload-options.js';
import { hasUploadFlags, uploadOptionsFromFlags } from '../upload-flags.js';
import { progressWanted, startProgress } from '../progress.js';
import { QmpClient } from '../../qemu/qmp.js';
import { runPullBackup, type OutputContext, type PullBackupResult, type PullDrive } from '../../qemu/pull-backup.js';
import { targetFromFlag, type BackupCliOptions } from './backup-options.js';

/** Parses `node[=name]`. */
export function parseDriveFlag(text: string): PullDrive {
  const i = text.indexOf('=');
  const node = (i < 0 ? text : text.slice(0, i)).trim();
  const name = i < 0 ? undefined : text.slice(i + 1).trim();
  if (node === '') throw new UsageError(`--drive "${text}": empty node name`);
  if (name === '') throw new UsageError(`--drive "${text}": empty disk name after '='`);
  return name === undefined ? { node } : { node, name };
}

function rejectAgentOnlyFlags(o: BackupCliOptions): void {
  const bad: string[] = [];
  if (o.disk.length > 0) bad.push('--disk (use --drive)');
  if (o.speed !== undefined) bad.push('--speed');
  if (o.fleecingMax !== undefined) bad.push('--fleecing-max (a QEMU fleecing image is at most the drive size)');
  if (o.configFile.length > 0) bad.push('--config-file');
  if (o.agent !== undefined) bad.push('--agent');
  if (o.onCbwError === 'break-guest-write') bad.push('--on-cbw-error break-guest-write (QEMU pull mode always breaks the snapshot, never a guest write)');
  if (bad.length > 0) throw new UsageError(`not supported with --qemu: ${bad.join(', ')}`);
  if (o.drive.length === 0) throw new UsageError('--qemu needs at least one --drive <node[=name]>');
  if (o.qemuNbd !== undefined && o.qemuNbd.trim() === '') throw new UsageError('--qemu-nbd needs a socket path');
}

/** Where `--to` sends the archive: the S3 bucket of the environment (with --storage-class & co.), a file, a directory (`<uuid>.cwa`) or stdout. */
async function targetSpec(o: BackupCliOptions, target: string): Promise<{ spec: ArchiveTargetSpec; client: S3Client | null }> {
  const store = target === 's3' ? storeConfigFromFlags({}) : null;
  if (target === 's3' && !store) throw new UsageError('--to s3 with --qemu needs a bucket: set COWSTREAM_S3_BUCKET (and AWS_ENDPOINT_URL_S3 / credentials as usual), or use --to file:PATH');
  let fileTarget: string | ((uuid: string) => string) = '-';
  if (target.startsWith('file:')) {
    const path = target.slice(5);
    // A directory gets <uuid>.cwa, which is where restore looks for a parent.
    fileTarget = (await stat(path).then((s) => s.isDirectory()).catch(() => false)) ? (uuid) => join(path, `${uuid}.cwa`) : path;
  }
  const client = store ? createS3Client(store) : null;
  const upload = uploadOptionsFromFlags(o);
  if (!store && hasUploadFlags(o)) throw new UsageError('upload options (--storage-class, --sse, --object-lock-*, --checksum-algorithm) need --to s3');
  const spec: ArchiveTargetSpec =
    store && client ? { kind: 's3', store: { client, bucket: store.bucket, prefix: store.prefix, upload, checksums: resolveChecksumPolicy(store) } } : { kind: 'file', path: fileTarget };
  return { spec, client };
}

/** The human summary; on stderr when stdout carries the archive. */
function printResult(r: PullBackupResult, where: string, toStdout: boolean): void {
  const say = (text: string): void => void (toStdout ? process.stderr : process.stdout).write(text + '\n');
  say(`backup ${r.uuid}: done (${r.mode}${r.modeReason ? `, ${r.modeReason}` : ''}${r.parentUuid ? `, parent ${r.parentUuid}` : ''}) → ${where}`);
  say(`  graph: ${r.graph} (${r.graphReason})`);
  for (const d of r.devices) {
    say(`  ${d.name} (node ${d.node}): ${formatBytes(d.size)}, read ${formatBytes(d.bytesRead)} in ${formatBytes(d.readSize)} READs over ${d.connections} connection(s), ${d.zeroClusters} zero / ${d.skippedClusters} unchanged clusters`);
  }
  say(`  archive: ${formatBytes(r.summary.bytesWritten)} in ${(r.durationMs / 1000).toFixed(1)} s (QEMU ${r.qemuVersion})`);
}

export async function runQemuBackup(o: BackupCliOptions): Promise<void> {
  rejectAgentOnlyFlags(o);
  const drives = o.drive.map(parseDriveFlag);
  const target = targetFromFlag(o.to);
  if (target === '-' && o.json) throw new UsageError('--to - writes the archive to stdout and cannot be combined with --json');
  const cbwTimeoutSec = o.cbwTimeout === undefined ? undefined : Math.max(1, Math.ceil(Number(o.cbwTimeout) / 1000));
  if (cbwTimeoutSec !== undefined && !Number.isFinite(cbwTimeoutSec)) throw new UsageError(`--cbw-timeout must be milliseconds, got "${o.cbwTimeout}"`);
  const fleecingDir = resolve(o.fleecing ?? tmpdir());
  const hostId = process.env.COWSTREAM_HOST_ID ?? hostname();
  const key = o.key !== undefined ? await readKeyFile(resolve(o.key)) : undefined;

  const { spec, client } = await targetSpec(o, target);
  let where = '';
  const openOutput = async (ctx: OutputContext): Promise<ByteSink> => {
    const t = await openArchiveTarget(spec, ctx);
    where = t.location;
    return t.sink;
  };

  const bar = startProgress({ label: 'backup', enabled: progressWanted(o) });

  const ac = new AbortController();
  const onSignal = (): void => ac.abort(new UsageError('interrupted'));
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  const qmp = await QmpClient.connect(resolve(o.qemu as string));
  const pool = new ZstdPool({ level: 1 });
  try {
    const r = await runPullBackup({
      qmp,
      drives,
      mode: o.incremental ? 'incremental' : 'full',
      fleecingDir,
      hostId,
      compressor: pool,
      encryptionKey: key,
      openOutput,
      // --qemu-nbd wins over the environment (older scripts set COWSTREAM_QEMU_NBD_SOCKET).
      nbdServerSocket: o.qemuNbd !== undefined ? resolve(o.qemuNbd) : process.env.COWSTREAM_QEMU_NBD_SOCKET || undefined,
      cbwTimeoutSec,
      signal: ac.signal,
      onWarning: (m) => process.stderr.write(`warning: ${m}\n`),
      onProgress: (p) => bar.update(p.done, p.total),
    });
    bar.stop();
    if (o.json) printJson({ ...r, target: where });
    else printResult(r, where, target === '-');
  } finally {
    bar.stop();
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await qmp.close();
    await pool.close();
    client?.destroy();
  }
}
