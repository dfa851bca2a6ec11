import type { Command } from 'commander';
import { AgentClient } from '../../agent/control-client.js';
import type { ExportInfo } from '../../agent/archive-exports.js';
import { formatBytes, parseSize } from '../../units.js';
import { agentSocket, DEFAULT_AGENT_SOCKET } from '../agent-socket.js';
import { printJson } from '../output.js';
import { UsageError } from '../../errors.js';
import type { ExportJob } from '../../catalog/records.js';
import { addCatalogAuthOptions, catalogClient, type CatalogFlags } from './catalog.js';

const AGENT_FLAG = `agent control socket (default $COWSTREAM_AGENT_SOCKET or ${DEFAULT_AGENT_SOCKET})`;

function describeExport(e: ExportInfo): string {
  const head = `${e.id}  archive ${e.archive.uuid} of ${e.archive.host}${e.overlay ? `  overlay ${e.overlay}` : ''}${e.jobId ? `  (catalogue job ${e.jobId})` : ''}`;
  const disks = e.exports.map((d) => `  ${d.disk}  ${formatBytes(d.size)}${d.readOnly ? '  read-only' : ''}\n${d.uris.map((u) => `    ${u}`).join('\n')}`);
  return [head, ...disks].join('\n');
}

function cacheFlags(o: { cacheMemory?: string; cacheDisk?: string }): { memoryBytes?: number; diskBytes?: number } | undefined {
  const cache = {
    ...(o.cacheMemory !== undefined ? { memoryBytes: parseSize(o.cacheMemory, '--cache-memory') } : {}),
    ...(o.cacheDisk !== undefined ? { diskBytes: parseSize(o.cacheDisk, '--cache-disk') } : {}),
  };
  return Object.keys(cache).length > 0 ? cache : undefined;
}

function describeJob(j: ExportJob): string {
  const head = `${j.id}  ${j.status}  archive ${j.archiveId} on host ${j.hostId}${j.error ? `: ${j.error}` : ''}`;
  const disks = (j.served?.exports ?? []).map((d) => `  ${d.disk}  ${formatBytes(d.size)}\n${d.uris.map((u) => `    ${u}`).join('\n')}`);
  return [head, ...disks].join('\n');
}

/** Follows an export job until its agent serves it (or it ends): the state an operator acts on. */
async function waitServed(get: () => Promise<ExportJob>, timeoutMs: number, intervalMs = 500): Promise<ExportJob> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const j = await get();
    if (j.status !== 'PENDING' && j.status !== 'CLAIMED' && !(j.status === 'RUNNING' && !j.served)) return j;
    if (Date.now() > deadline) throw new UsageError(`export job ${j.id} is still ${j.status} after ${timeoutMs / 1000} s (is the agent of host ${j.hostId} running and polling the catalogue?)`);
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/** `cowstream export add|list|rm` (the agent's /exports) and `export request|end` (the catalogue's), docs/file-restore.md. */
export function registerExportCommands(program: Command): void {
  const exp = program.command('export').description("serve archives of the agent's bucket over its NBD server (instant restore, file-level restore)");

  exp
    .command('add <ref>')
    .description('serve the disks of an archive (UUID, key or s3://bucket/key of the agent\'s bucket) as export-<id>/<disk>; prints the NBD URIs')
    .option('--disk <name...>', 'serve only these disks of the archive')
    .option('--overlay <path>', 'writable view: writes go to this local file (inside the agent\'s restore.allowedDirs), never to the bucket')
    .option('--cache-memory <size>', 'memory cache of this export (e.g. 64M; at most the agent\'s exports.maxCacheMemoryBytes)')
    .option('--cache-disk <size>', 'disk cache of this export (at most the agent\'s exports.maxCacheDiskBytes)')
    .option('--json', 'print JSON')
    .option('--agent <socket>', AGENT_FLAG)
    .action(async (ref: string, o: { disk?: string[]; overlay?: string; cacheMemory?: string; cacheDisk?: string; json?: boolean; agent?: string }) => {
      const cache = cacheFlags(o);
      const body = { ref, ...(o.disk ? { disks: o.disk } : {}), ...(o.overlay !== undefined ? { overlay: o.overlay } : {}), ...(cache ? { cache } : {}) };
      const e = await new AgentClient(agentSocket(o.agent)).call<ExportInfo>('POST', '/exports', body);
      if (o.json) return printJson(e);
      process.stdout.write(describeExport(e) + '\n');
    });

  exp
    .command('list')
    .description('list the archives the agent serves, with their URIs and stats')
    .option('--json', 'print JSON')
    .option('--agent <socket>', AGENT_FLAG)
    .action(async (o: { json?: boolean; agent?: string }) => {
      const { exports } = await new AgentClient(agentSocket(o.agent)).call<{ exports: ExportInfo[] }>('GET', '/exports');
      if (o.json) return printJson(exports);
      process.stdout.write(exports.length === 0 ? 'no exports\n' : exports.map(describeExport).join('\n') + '\n');
    });

  exp
    .command('rm <id>')
    .description('stop serving an export set: its names disappear and connected clients get I/O errors')
    .option('--json', 'print JSON')
    .option('--agent <socket>', AGENT_FLAG)
    .action(async (id: string, o: { json?: boolean; agent?: string }) => {
      const e = await new AgentClient(agentSocket(o.agent)).call<ExportInfo>('DELETE', `/exports/${encodeURIComponent(id)}`);
      if (o.json) return printJson(e);
      process.stdout.write(`removed ${e.id} (${e.exports.map((d) => d.name).join(', ')})\n`);
    });

  addCatalogAuthOptions(
    exp
      .command('request <archive>')
      .description("ask the catalogue for an export: the agent of --host serves the archive and reports its NBD URIs")
      .requiredOption('--host <id>', 'the host whose agent serves it')
      .option('--disk <name...>', 'serve only these disks of the archive')
      .option('--overlay <path>', "writable view in this file on the host (inside its agent's restore.allowedDirs)")
      .option('--cache-memory <size>', "memory cache (at most the agent's exports.maxCacheMemoryBytes)")
      .option('--cache-disk <size>', "disk cache (at most the agent's exports.maxCacheDiskBytes)")
      .option('--wait', 'wait until the agent serves it (or the job fails), then print the URIs')
      .option('--timeout <seconds>', 'with --wait: give up after this long (default 120)')
      .option('--catalog <url>', 'catalogue URL (default $COWSTREAM_CATALOG_URL, else the embedded catalogue of --state)')
      .option('--json', 'print JSON'),
  ).action(async (archive: string, o: CatalogFlags & { host: string; disk?: string[]; overlay?: string; cacheMemory?: string; cacheDisk?: string; wait?: boolean; timeout?: string }) => {
    const client = await catalogClient(o);
    const cache = cacheFlags(o);
    const { exportId } = await client.createExport({ archiveId: archive, hostId: o.host, ...(o.disk ? { devices: o.disk } : {}), ...(o.overlay !== undefined ? { overlay: o.overlay } : {}), ...(cache ? { cache } : {}) });
    const timeoutMs = (o.timeout !== undefined ? Number(o.timeout) : 120) * 1000;
    if (!Number.isFinite(timeoutMs) || timeoutMs <= 0) throw new UsageError('--timeout must be a positive number of seconds');
    const job = o.wait ? await waitServed(() => client.getExport(exportId), timeoutMs) : await client.getExport(exportId);
    if (o.json) printJson(job);
    else process.stdout.write(describeJob(job) + '\n');
    if (o.wait && job.status !== 'RUNNING') process.exitCode = 1;
  });

  addCatalogAuthOptions(
    exp
      .command('end <id>')
      .description('end an export requested through the catalogue (its agent stops serving it at its next report)')
      .option('--catalog <url>', 'catalogue URL (default $COWSTREAM_CATALOG_URL, else the embedded catalogue of --state)')
      .option('--json', 'print JSON'),
  ).action(async (id: string, o: CatalogFlags) => {
    const job = await (await catalogClient(o)).endExport(id);
    if (o.json) printJson(job);
    else process.stdout.write(describeJob(job) + '\n');
  });
}
