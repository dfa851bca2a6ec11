import { resolve } from 'node:path';
import type { Command } from 'commander';
import { UsageError } from '../../errors.js';
import { describeLocator } from '../../restore/chain.js';
import { restoreArchive, DEFAULT_PARALLEL, MAX_PARALLEL } from '../../restore/engine.js';
import { buildRestorePlan, sourceOpener } from '../../restore/locate.js';
import type { StoreFlags } from '../../store/config.js';
import { formatBytes, formatRate, parseDuration, parsePositiveInt, printJson } from '../output.js';
import { addStoreOptions, archiveContextFromFlags, loadKeyFile } from './store-options.js';
import { progressWanted, startProgress } from '../progress.js';

interface RestoreFlags extends StoreFlags {
  to?: string;
  device: string[];
  parallel?: string;
  verify?: boolean;
  key?: string;
  force?: boolean;
  json?: boolean;
  progress?: boolean;
  viaCatalog?: boolean;
  host?: string;
  wait?: boolean;
  timeout?: string;
  catalog?: string;
  catalogToken?: string;
}

const collect = (v: string, prev: string[]): string[] => [...prev, v];

async function runRestore(ref: string, o: RestoreFlags): Promise<void> {
  if (o.viaCatalog) {
    // The catalogue path: request the restore, the agent executes it.
    const { timeout, ...rest } = o;
    if (timeout !== undefined && !o.wait) throw new UsageError('--timeout needs --wait');
    // Loaded here only: the catalogue client brings SigV4 signing and zod (docs/startup.md).
    const { runRestoreViaCatalog } = await import('./restore-via-catalog.js');
    await runRestoreViaCatalog({ ref, ...rest, ...(timeout !== undefined ? { timeoutMs: parseDuration(timeout, '--timeout') } : {}) });
    return;
  }
  if (!o.to) throw new UsageError('restore needs --to <dir|file>');
  const parallel = o.parallel !== undefined ? parsePositiveInt(o.parallel, '--parallel', MAX_PARALLEL) : DEFAULT_PARALLEL;
  const ctx = await archiveContextFromFlags(o);
  const key = o.key ? await loadKeyFile(o.key) : undefined;
  const { ZstdPool } = await import('../../codec/zstd-pool.js');
  const pool = new ZstdPool({});
  const bar = startProgress({ label: 'restore', enabled: progressWanted(o) });
  try {
    const plan = await buildRestorePlan(ref, ctx, o.device.length > 0 ? { devices: o.device } : {});
    const result = await restoreArchive({
      plan,
      openSource: sourceOpener(ctx),
      // a trailing '/' means "directory" even for one device: keep it
      target: resolve(o.to) + (o.to.endsWith('/') ? '/' : ''),
      parallel,
      verify: o.verify ?? false,
      ...(key ? { key } : {}),
      compressor: pool,
      force: o.force ?? false,
      onProgress: (p) => bar.update(p.bytesDone, p.bytesTotal, `fetched ${formatBytes(p.fetchedBytes)}`),
    });
    bar.stop();
    if (o.json) {
      printJson({ ok: true, ...result, chain: plan.chain.map((c) => ({ uuid: c.uuid, source: describeLocator(c.locator) })) });
    } else {
      const secs = Math.max(0.001, result.durationMs / 1000);
      process.stdout.write(
        `restored archive ${result.archiveUuid} (chain of ${result.chainLength}) in ${secs.toFixed(1)} s: ` +
          `${formatBytes(result.bytesTotal)} of disk, ${formatBytes(result.fetchedBytes)} fetched in ${result.ranges} ranges, ` +
          `${formatRate(result.bytesTotal, secs)}${result.verified ? ', verified' : ''}\n`,
      );
      for (const d of result.devices) process.stdout.write(`  ${d.name} → ${d.path} (${formatBytes(d.size)})\n`);
    }
  } finally {
    bar.stop();
    await pool.close();
    ctx.close();
  }
}

export function registerRestoreCommands(program: Command): void {
  addStoreOptions(
    program
      .command('restore <ref>')
      .description(
        'restore an archive (and its incremental chain) to raw images; ref = archive UUID (looked up under the bucket/prefix), s3://bucket/key, a key, or a local .cwa file',
      )
      .option('--to <path>', 'target: an existing directory or a path ending in "/" (gets <NAME>.raw per device; also any new path when restoring several devices), else one file or block device')
      .option('--device <name>', 'restore only this device (repeatable)', collect, [] as string[])
      .option('--parallel <n>', `ranged GETs in flight (1-${MAX_PARALLEL}, default ${DEFAULT_PARALLEL})`)
      .option('--verify', 'check every extent (naming all damaged clusters) and read back what was written')
      .option('--key <file>', 'key file for encrypted archives')
      .option('--force', 'overwrite an existing file or block device (must be large enough)')
      .option('--json', 'print the result as JSON')
      .option('--progress', 'show a progress bar even when stderr is not a TTY')
      .option('--via-catalog', 'ask the catalogue to have the host agent restore (see --host, --wait)')
      .option('--host <id>', 'with --via-catalog: the host whose agent restores')
      .option('--wait', 'with --via-catalog: follow the restore until it is done')
      .option('--timeout <duration>', 'with --wait: give up waiting after this long (e.g. 90s, 30m, 2h; default: wait until the job ends)')
      .option('--catalog <url>', 'with --via-catalog: catalogue URL (default $COWSTREAM_CATALOG_URL, else the embedded catalogue of --state)')
      .option('--catalog-token <token>', 'with --via-catalog: bearer token of an embedded catalogue (default $COWSTREAM_CATALOG_TOKEN, else from --state)'),
  ).action(async (ref: string, o: RestoreFlags) => runRestore(ref, o));
}
