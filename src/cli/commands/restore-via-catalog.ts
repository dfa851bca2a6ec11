/**
 * `cowstream restore <uuid> --via-catalog --host H --to PATH [--wait]`:
 * asks the catalogue for a restore that the host's agent executes (the CLI
 * never touches the data), then optionally follows the job's progress.
 */
import { isAbsolute } from 'node:path';
import { RestoreError, UsageError } from '../../errors.js';
import { CatalogClient } from '../../catalog/client.js';
import { uuidSchema, type RestoreJob } from '../../catalog/records.js';
import { formatBytes, printJson } from '../output.js';
import { resolveCatalogToken } from '../embedded-auth.js';
import { catalogUrlWithState } from '../state-defaults.js';
import { progressWanted, startProgress } from '../progress.js';

export interface RestoreViaCatalogOptions {
  /** Archive UUID (catalogue id). */
  ref: string;
  /** Host whose agent restores. */
  host?: string;
  /** Absolute target path on that host (must lie inside the agent's restore.allowedDirs). */
  to?: string;
  /** Restrict to these devices. */
  device?: string[];
  wait?: boolean;
  /** Catalogue URL; default $COWSTREAM_CATALOG_URL. */
  catalog?: string;
  json?: boolean;
  progress?: boolean;
  /** How often to poll the job with --wait (default 1000 ms). */
  pollMs?: number;
  /** Give up waiting after this long (default: never). */
  timeoutMs?: number;
  /** Bearer token of an embedded catalogue; default $COWSTREAM_CATALOG_TOKEN, else read from `state`. */
  catalogToken?: string;
  /** State directory whose credentials.json holds the token. */
  state?: string;
}

const FINAL = new Set(['SUCCEEDED', 'FAILED', 'CANCELLED']);

/** Requests the restore; with `wait`, resolves with the finished job or throws RestoreError if it failed. */
export async function runRestoreViaCatalog(opts: RestoreViaCatalogOptions): Promise<RestoreJob> {
  const { url, state } = await catalogUrlWithState(opts);
  if (!url) throw new UsageError('--via-catalog needs --catalog <url> (or COWSTREAM_CATALOG_URL, or --state <dir> of an agent with the embedded catalogue)');
  if (!opts.host) throw new UsageError('--via-catalog needs --host <id>: the host whose agent restores');
  if (!opts.to) throw new UsageError('--via-catalog needs --to <path> on that host');
  if (!isAbsolute(opts.to)) throw new UsageError(`--to must be an absolute path on host ${opts.host}, got "${opts.to}"`);
  if (!uuidSchema.safeParse(opts.ref).success) throw new UsageError(`--via-catalog needs an archive UUID, got "${opts.ref}"`);
  const token = await resolveCatalogToken({ ...opts, ...(state !== undefined ? { state } : {}) }, url);
  const client = new CatalogClient({ url, ...(token !== undefined ? { token } : {}) });
  const devices = opts.device && opts.device.length > 0 ? opts.device : undefined;
  const { restoreId } = await client.createRestore({ archiveId: opts.ref, hostId: opts.host, target: { path: opts.to }, ...(devices ? { devices } : {}) });
  let job = await client.getRestore(restoreId);
  if (!opts.wait) {
    if (opts.json) printJson({ ok: true, restoreId, job });
    else process.stdout.write(`restore ${restoreId} requested: host ${opts.host} will restore ${opts.ref} to ${opts.to}\n`);
    return job;
  }
  if (!opts.json) process.stderr.write(`restore ${restoreId} requested; waiting for the agent of ${opts.host}\n`);
  const showBar = progressWanted(opts);
  const bar = startProgress({ label: 'restore', enabled: showBar });
  let lastStatus = '';
  const deadline = opts.timeoutMs !== undefined ? Date.now() + opts.timeoutMs : Infinity;
  try {
    while (!FINAL.has(job.status)) {
      if (Date.now() > deadline) {
        throw new RestoreError(`restore ${restoreId} still ${job.status} after ${opts.timeoutMs} ms (--timeout); it goes on in the catalogue: cancel it or look again later`);
      }
      await new Promise((r) => setTimeout(r, opts.pollMs ?? 1000));
      job = await client.getRestore(restoreId);
      if (showBar) bar.update(job.progress.bytesDone, job.progress.bytesTotal, job.status);
      else if (!opts.json && job.status !== lastStatus) {
        process.stderr.write(`  ${job.status}${job.claimedBy ? ` (agent ${job.claimedBy})` : ''}\n`);
      }
      lastStatus = job.status;
    }
  } finally {
    bar.stop();
  }
  // On failure main() prints the one JSON error document.
  if (opts.json && job.status === 'SUCCEEDED') printJson({ ok: true, restoreId, job });
  if (job.status !== 'SUCCEEDED') throw new RestoreError(`restore ${restoreId} ${job.status}${job.error ? `: ${job.error}` : ''}`);
  if (!opts.json) process.stdout.write(`restore ${restoreId} SUCCEEDED: ${formatBytes(job.progress.bytesTotal)} restored to ${opts.to} on ${opts.host}\n`);
  return job;
}
