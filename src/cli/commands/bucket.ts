/**
 * Commands that work on a bucket alone, with no catalogue service:
 * `snapshots` (list archives from their footers and headers) and `forget`
 * (apply a retention policy, chain-aware, with --dry-run).
 */
import type { Command } from 'commander';
import { UsageError } from '../../errors.js';
import { listBucketArchives } from '../../catalog/bucket-listing.js';
import { forget, type ForgetReport } from '../../catalog/forget.js';
import { ListingCache, defaultCacheDir } from '../../catalog/listing-cache.js';
import type { ArchiveRecord } from '../../catalog/records.js';
import type { RetentionPolicy } from '../../catalog/retention.js';
import { effectiveEndpoint, storeConfigFromFlags, type StoreConfig, type StoreFlags } from '../../store/config.js';
import { createS3Client } from '../../store/s3-client.js';
import { formatBytes, parsePositiveInt, printJson } from '../output.js';
import { addStoreOptions, withStateCredentials } from './store-options.js';

interface BucketFlags extends StoreFlags {
  state?: string;
  host?: string;
  disk?: string;
  json?: boolean;
  cache: boolean;
  parallel?: string;
}

async function requireStore(o: StoreFlags & { state?: string }): Promise<StoreConfig> {
  const store = storeConfigFromFlags(await withStateCredentials(o));
  if (!store) throw new UsageError('no bucket: give --bucket <name>, set COWSTREAM_S3_BUCKET, or --state <dir> of an agent with the embedded store');
  return store;
}

async function openCache(o: BucketFlags, store: StoreConfig): Promise<ListingCache | undefined> {
  if (!o.cache) return undefined;
  return ListingCache.open(defaultCacheDir(), effectiveEndpoint(store) ?? 'aws', store.bucket, store.prefix);
}

function matches(a: ArchiveRecord, o: { host?: string; disk?: string }): boolean {
  return (o.host === undefined || a.hostId === o.host) && (o.disk === undefined || a.devices.some((d) => d.name === o.disk));
}

function snapshotRow(a: ArchiveRecord): string[] {
  const logical = a.dataBytes + a.zeroBytes;
  return [
    a.uuid,
    a.hostId,
    a.devices.map((d) => d.name).join(',') || '-',
    a.createdAt.replace('T', ' ').slice(0, 19),
    a.parentUuid === null ? 'full' : `incr (depth ${a.chainDepth})`,
    a.parentUuid ?? '-',
    formatBytes(a.bytesStored),
    formatBytes(logical),
    // The catalogue's ratio (non-zero data over stored payload), so `list` and `snapshots` agree.
    a.compressionRatio > 0 ? `${a.compressionRatio.toFixed(2)}x` : '-',
    a.status === 'INDEXED' ? 'ok' : `${a.status}: ${a.reason ?? ''}`,
  ];
}

function printTable(header: string[], rows: string[][]): void {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (r: string[]): string => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join('  ');
  process.stdout.write([line(header), ...rows.map(line)].join('\n') + '\n');
}

async function runSnapshots(o: BucketFlags): Promise<void> {
  const store = await requireStore(o);
  const client = createS3Client(store);
  try {
    const cache = await openCache(o, store);
    const concurrency = o.parallel ? parsePositiveInt(o.parallel, '--parallel', 64) : 16;
    const listing = await listBucketArchives({ client, bucket: store.bucket, prefix: store.prefix, concurrency, ...(cache ? { cache } : {}) });
    const shown = listing.archives.filter((a) => matches(a, o));
    if (o.json) {
      printJson({ ok: true, bucket: store.bucket, prefix: store.prefix, cached: listing.cached, read: listing.read, archives: shown });
      return;
    }
    const header = ['UUID', 'HOST', 'DISKS', 'CREATED (UTC)', 'KIND', 'PARENT', 'STORED', 'LOGICAL', 'RATIO', 'STATUS'];
    printTable(header, shown.map(snapshotRow));
    process.stderr.write(`${shown.length} archive(s); ${listing.read} read from the bucket, ${listing.cached} from the cache\n`);
  } finally {
    client.destroy();
  }
}

interface ForgetFlags extends BucketFlags {
  keepLast?: string;
  keepHourly?: string;
  keepDaily?: string;
  keepWeekly?: string;
  keepMonthly?: string;
  keepYearly?: string;
  dryRun?: boolean;
}

const KEEP_FLAGS = ['keepLast', 'keepHourly', 'keepDaily', 'keepWeekly', 'keepMonthly', 'keepYearly'] as const;

/** A policy with at least one positive rule: `forget` with none would be a no-op at best. */
function policyFromFlags(o: ForgetFlags): RetentionPolicy {
  const policy: RetentionPolicy = {};
  for (const k of KEEP_FLAGS) {
    const v = o[k];
    if (v !== undefined) policy[k] = parsePositiveInt(v, `--${k.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`, 100_000);
  }
  if (Object.keys(policy).length === 0) {
    throw new UsageError('forget needs at least one of --keep-last, --keep-hourly, --keep-daily, --keep-weekly, --keep-monthly, --keep-yearly');
  }
  return policy;
}

function printForget(r: ForgetReport): void {
  const verb = r.dryRun ? 'would remove' : 'removed';
  for (const d of r.removed) process.stdout.write(`${verb} ${d.uuid}  ${d.hostId}  ${d.createdAt}  ${d.key}\n`);
  for (const k of r.kept) process.stdout.write(`keep   ${k.uuid}  ${k.hostId}  ${k.createdAt}  (${k.why})\n`);
  for (const s of r.skipped) process.stdout.write(`NOT removed ${s.uuid}  ${s.key}: ${s.reason}\n`);
  process.stderr.write(`${r.removed.length} ${verb}, ${r.kept.length} kept, ${r.skipped.length} not removed${r.dryRun ? ' (dry run: nothing was deleted)' : ''}\n`);
}

async function runForget(o: ForgetFlags): Promise<void> {
  const policy = policyFromFlags(o);
  const store = await requireStore(o);
  const client = createS3Client(store);
  try {
    const cache = await openCache(o, store);
    const report = await forget({
      client,
      bucket: store.bucket,
      prefix: store.prefix,
      policy,
      dryRun: o.dryRun === true,
      ...(o.host ? { host: o.host } : {}),
      ...(o.disk ? { disk: o.disk } : {}),
      ...(cache ? { cache } : {}),
    });
    if (o.json) printJson({ ok: report.skipped.length === 0, ...report });
    else printForget(report);
    // Partial: some deletions were refused. Reported, and the exit code says so.
    if (report.skipped.length > 0) process.exitCode = 3;
  } finally {
    client.destroy();
  }
}

export function registerBucketCommands(program: Command): void {
  addStoreOptions(
    program
      .command('snapshots')
      .description('list the archives in a bucket from their headers and footers, no catalogue needed (like restic snapshots)')
      .option('--host <id>', 'only this host')
      .option('--disk <name>', 'only archives holding this disk')
      .option('--parallel <n>', 'headers read at once (1-64, default 16)')
      .option('--no-cache', 'read every archive again instead of using the local cache (keyed by key + ETag)')
      .option('--json', 'print the listing as JSON'),
  ).action((o: BucketFlags) => runSnapshots(o));

  const cmd = program
    .command('forget')
    .description('delete archives a retention policy does not keep; an archive a kept one depends on is never deleted')
    .option('--keep-last <n>', 'keep the n newest archives')
    .option('--keep-hourly <n>', 'keep the newest archive of each of the last n hours that have one')
    .option('--keep-daily <n>', 'likewise for days (UTC)')
    .option('--keep-weekly <n>', 'likewise for ISO weeks')
    .option('--keep-monthly <n>', 'likewise for months')
    .option('--keep-yearly <n>', 'likewise for years')
    .option('--host <id>', 'apply the policy to this host only')
    .option('--disk <name>', 'apply the policy to this disk only')
    .option('--dry-run', 'print what would be deleted and why the rest is kept; delete nothing')
    .option('--no-cache', 'read every archive again instead of using the local cache')
    .option('--json', 'print the report as JSON');
  addStoreOptions(cmd).action((o: ForgetFlags) => runForget(o));
}
