/**
 * `cowstream serve REF`: the disks of an archive (chain resolved) over NBD,
 * read-only, fetched lazily from the bucket or a local .cwa (docs/serve.md).
 * Runs in the foreground until SIGINT/SIGTERM, then closes cleanly.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Command } from 'commander';
import { UsageError } from '../../errors.js';
import { jsonLineEmitter } from '../../log.js';
import type { NbdExport } from '../../nbd/types.js';
import type { ArchiveExportSet } from '../../serve/archive-exports.js';
import type { StoreFlags } from '../../store/config.js';
import { formatBytes, parseSize, printJson } from '../output.js';
import { untilInterrupted } from '../signals.js';
import { addStoreOptions, archiveContextFromFlags, loadKeyFile } from './store-options.js';

interface ServeFlags extends StoreFlags {
  state?: string;
  key?: string;
  disk: string[];
  socket?: string;
  tcp?: string;
  cacheMemory?: string;
  cacheDir?: string;
  cacheDisk?: string;
  readAhead?: string;
  json?: boolean;
}

const collect = (v: string, prev: string[]): string[] => [...prev, v];

/** `HOST:PORT` or `[V6]:PORT`. */
export function parseHostPort(text: string): { host: string; port: number } {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]]+)):(\d{1,5})$/.exec(text.trim());
  const port = m ? Number(m[3]) : NaN;
  if (!m || !Number.isInteger(port) || port < 0 || port > 65535) throw new UsageError(`--tcp must be HOST:PORT (e.g. 127.0.0.1:10809 or [::1]:10809), got "${text}"`);
  return { host: (m[1] ?? m[2])!, port };
}

/**
 * Where the socket goes by default: a fresh directory (mkdtemp: mode 0700,
 * a name no other user can predict) under $XDG_RUNTIME_DIR, else the
 * temporary directory. Removed when serve stops.
 */
async function defaultSocketDir(): Promise<string> {
  const base = process.env.XDG_RUNTIME_DIR || tmpdir();
  return mkdtemp(join(base, 'cowstream-serve-'));
}

interface Listening {
  socket: string;
  tcp?: { host: string; port: number };
  close(): Promise<void>;
}

async function listen(set: ArchiveExportSet, o: ServeFlags, log: ReturnType<typeof jsonLineEmitter>): Promise<Listening> {
  const { NbdServer } = await import('../../nbd/server.js');
  const ownDir = o.socket === undefined ? await defaultSocketDir() : undefined;
  const socket = o.socket ?? join(ownDir!, 'nbd.sock');
  const exports = new Map<string, NbdExport>(set.exports.map((e) => [e.name, { device: e.device, readOnly: true, description: `${e.name} of archive ${set.archive.uuid}` }]));
  const server = new NbdServer({
    exports,
    ...(set.exports.length === 1 ? { defaultExport: set.exports[0]!.name } : {}),
    unixSocket: socket,
    ...(o.tcp !== undefined ? { tcp: parseHostPort(o.tcp) } : {}),
    logger: { warn: (msg, fields) => log('warn', msg, fields), info: (msg, fields) => log('info', msg, fields) },
  });
  try {
    const addrs = await server.listen();
    return {
      socket,
      ...(addrs.tcp ? { tcp: addrs.tcp } : {}),
      close: async () => {
        await server.close();
        if (ownDir) await rm(ownDir, { recursive: true, force: true });
      },
    };
  } catch (err) {
    if (ownDir) await rm(ownDir, { recursive: true, force: true });
    throw err;
  }
}

function unixUri(name: string, socket: string): string {
  return `nbd+unix:///${encodeURIComponent(name)}?socket=${socket}`;
}

function tcpUri(name: string, tcp: { host: string; port: number }): string {
  const host = tcp.host.includes(':') ? `[${tcp.host}]` : tcp.host;
  return `nbd://${host}:${tcp.port}/${encodeURIComponent(name)}`;
}

function printExports(set: ArchiveExportSet, l: Listening, json: boolean): void {
  const exports = set.exports.map((e) => ({ name: e.name, size: e.size, uri: unixUri(e.name, l.socket), ...(l.tcp ? { tcpUri: tcpUri(e.name, l.tcp) } : {}) }));
  if (json) {
    printJson({ ok: true, archive: set.archive, readOnly: true, socket: l.socket, ...(l.tcp ? { tcp: l.tcp } : {}), exports });
    return;
  }
  const a = set.archive;
  const lines = [`serving archive ${a.uuid} (host ${a.host}, created ${a.created}, chain of ${a.chainDepth}) read-only on ${l.socket}`];
  for (const e of exports) lines.push(`  ${e.name}  ${formatBytes(e.size)}  ${e.uri}${e.tcpUri ? `  ${e.tcpUri}` : ''}`);
  lines.push('press Ctrl-C to stop');
  process.stdout.write(lines.join('\n') + '\n');
}

async function runServe(ref: string, o: ServeFlags): Promise<void> {
  const cache = {
    ...(o.cacheMemory !== undefined ? { memoryBytes: parseSize(o.cacheMemory, '--cache-memory') } : {}),
    ...(o.cacheDir !== undefined ? { dir: o.cacheDir } : {}),
    ...(o.cacheDisk !== undefined ? { diskBytes: parseSize(o.cacheDisk, '--cache-disk') } : {}),
  };
  if (o.cacheDisk !== undefined && o.cacheDir === undefined) throw new UsageError('--cache-disk needs --cache-dir');
  if (o.tcp !== undefined) parseHostPort(o.tcp);
  const log = jsonLineEmitter({ layout: 'agent', level: 'info', keys: { component: 'serve' } });
  const ctx = await archiveContextFromFlags(o);
  const key = o.key ? await loadKeyFile(o.key) : undefined;
  const { openArchiveExports } = await import('../../serve/archive-exports.js');
  try {
    const set = await openArchiveExports({
      ref,
      context: ctx,
      ...(key ? { key } : {}),
      ...(o.disk.length > 0 ? { devices: o.disk } : {}),
      cache,
      ...(o.readAhead !== undefined ? { readAheadBytes: parseSize(o.readAhead, '--read-ahead') } : {}),
      log,
    });
    try {
      const listening = await listen(set, o, log);
      try {
        printExports(set, listening, o.json === true);
        await untilInterrupted();
      } finally {
        await listening.close();
      }
      log('info', 'serve stopped', { archive: set.archive.uuid, stats: set.stats() });
    } finally {
      await set.close();
    }
  } finally {
    ctx.close();
  }
}

export function registerServeCommands(program: Command): void {
  addStoreOptions(
    program
      .command('serve <ref>')
      .description(
        'serve the disks of an archive (its incremental chain resolved) over NBD, read-only, fetching extents as clients read them; ref = archive UUID, s3://bucket/key, a key, or a local .cwa file. Runs until SIGINT/SIGTERM',
      )
      .option('--disk <name>', 'serve only this disk (repeatable; default: every disk of the archive)', collect, [] as string[])
      .option('--key <file>', 'key file for encrypted archives')
      .option('--socket <path>', 'Unix socket to serve on, mode 0600 (default: nbd.sock in a new private directory under $XDG_RUNTIME_DIR or the temporary directory)')
      .option('--tcp <host:port>', 'also serve on TCP, without TLS or authentication: anyone who can reach it reads the disks (use 127.0.0.1)')
      .option('--cache-memory <size>', 'decoded clusters kept in memory, e.g. 512M (default 256M; 0 disables)')
      .option('--cache-dir <dir>', 'also keep fetched extents (as stored, re-checked on use) in a private directory created inside <dir>, removed at exit')
      .option('--cache-disk <size>', 'with --cache-dir: its bound (default 4G)')
      .option('--read-ahead <size>', 'fetched ahead of a sequential reader (default 32M, at most half of --cache-memory; 0 disables)')
      .option('--json', 'print the exports (names, sizes, nbd URIs) as JSON; logs stay JSON lines on stderr'),
  ).action(async (ref: string, o: ServeFlags) => runServe(ref, o));
}
