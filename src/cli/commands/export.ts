import type { Command } from 'commander';
import { AgentClient } from '../../agent/control-client.js';
import type { ExportInfo } from '../../agent/archive-exports.js';
import { formatBytes, parseSize } from '../../units.js';
import { agentSocket, DEFAULT_AGENT_SOCKET } from '../agent-socket.js';
import { printJson } from '../output.js';

const AGENT_FLAG = `agent control socket (default $COWSTREAM_AGENT_SOCKET or ${DEFAULT_AGENT_SOCKET})`;

function describeExport(e: ExportInfo): string {
  const head = `${e.id}  archive ${e.archive.uuid} of ${e.archive.host}${e.overlay ? `  overlay ${e.overlay}` : ''}${e.jobId ? `  (catalogue job ${e.jobId})` : ''}`;
  const disks = e.exports.map((d) => `  ${d.disk}  ${formatBytes(d.size)}${d.readOnly ? '  read-only' : ''}\n${d.uris.map((u) => `    ${u}`).join('\n')}`);
  return [head, ...disks].join('\n');
}

/** `cowstream export add|list|rm`: the agent's POST/GET/DELETE /exports (docs/file-restore.md). */
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
      const cache = {
        ...(o.cacheMemory !== undefined ? { memoryBytes: parseSize(o.cacheMemory, '--cache-memory') } : {}),
        ...(o.cacheDisk !== undefined ? { diskBytes: parseSize(o.cacheDisk, '--cache-disk') } : {}),
      };
      const body = { ref, ...(o.disk ? { disks: o.disk } : {}), ...(o.overlay !== undefined ? { overlay: o.overlay } : {}), ...(Object.keys(cache).length > 0 ? { cache } : {}) };
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
}
