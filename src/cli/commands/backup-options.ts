/** `cowstream backup` options, shared by the agent path (backup.ts) and the QEMU path (backup-qemu.ts). */
import { resolve } from 'node:path';
import { UsageError } from '../../errors.js';
import type { UploadFlags } from '../upload-flags.js';

/** Options of `cowstream backup` as commander parses them (also handed to runQemuBackup). */
export interface BackupCliOptions extends UploadFlags {
  disk: string[];
  incremental?: boolean;
  fleecing?: string;
  fleecingMax?: string;
  speed?: string;
  configFile: string[];
  cbwTimeout?: string;
  onCbwError?: 'break-snapshot' | 'break-guest-write';
  key?: string;
  to: string;
  /** Accepted and ignored: waiting is the default (see `detach`). */
  wait?: boolean;
  /** Return once the backup has started instead of waiting for its end. */
  detach?: boolean;
  json?: boolean;
  progress?: boolean;
  agent?: string;
  /** QMP socket of a QEMU process: pull-mode backup instead of the agent (src/cli/commands/backup-qemu.ts). */
  qemu?: string;
  /** `node[=name]` drives of the QEMU backup. */
  drive: string[];
  /** Unix socket of an NBD server the QEMU process already runs (QEMU allows one per process). */
  qemuNbd?: string;
}

/** `--to` forms: s3, -, file:PATH, or a bare path (= file:, resolved against the cwd). */
export function targetFromFlag(to: string): string {
  if (to === 's3' || to === '-') return to;
  const path = to.startsWith('file:') ? to.slice(5) : to;
  if (path === '') throw new UsageError('--to file: needs a path');
  return `file:${resolve(path)}`;
}
