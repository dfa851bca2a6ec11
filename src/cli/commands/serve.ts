/**
 * `cowstream serve REF`: the disks of an archive (chain resolved) over NBD,
 * fetched lazily from the bucket or a local .cwa (docs/serve.md); read-only,
 * or writable through local overlays (--overlay), optionally copied to local
 * files while in use (--hydrate; both in docs/overlay.md).
 * Runs in the foreground until SIGINT/SIGTERM, then closes cleanly.
 */
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Command } from 'commander';
import { UsageError, describeError } from '../../errors.js';
import { jsonLineEmitter } from '../../log.js';
import type { Hydration } from '../../device/hydrate.js';
import type { BlockDevice } from '../../device/types.js';
import type { NbdExport } from '../../nbd/types.js';
import type { ArchiveExportSet } from '../../serve/archive-exports.js';
import type { StoreFlags } from '../../store/config.js';
import { formatBytes, parseSize, printJson } from '../output.js';
import { untilInterrupted } from '../signals.js';
import { addStoreOptions, archiveContextFromFlags, loadKeyFile } from './store-options.js';
import { overlayBaseId } from '../../serve/overlay-base.js';

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
  overlay?: string;
  hydrate?: string;
  force?: boolean;
  json?: boolean;
}

type Log = ReturnType<typeof jsonLineEmitter>;

/** How often hydration progress is logged. */
const PROGRESS_INTERVAL_MS = 5000;

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

/** What is put on the wire for one disk of the archive. */
interface ServedDisk {
  name: string;
  size: number;
  device: BlockDevice;
  readOnly: boolean;
}

/**
 * A per-disk path flag (`--overlay`, `--hydrate`): with one disk PATH is its
 * file; with several, an existing directory holding `<NAME><suffix>` per disk.
 */
async function perDiskPaths(set: ArchiveExportSet, path: string, flag: string, suffix: string): Promise<Map<string, string>> {
  const isDir = await stat(path).then((st) => st.isDirectory(), () => false);
  if (set.exports.length === 1 && !isDir) return new Map([[set.exports[0]!.name, path]]);
  if (!isDir) throw new UsageError(`${flag} ${path}: the archive has ${set.exports.length} disks (${set.exports.map((e) => e.name).join(', ')}); give an existing directory (one <NAME>${suffix} per disk) or pick one disk with --disk`);
  return new Map(set.exports.map((e) => [e.name, join(path, `${e.name}${suffix}`)]));
}

interface Stack {
  disks: ServedDisk[];
  /** Hydrations, by disk name, still worth waiting for. */
  hydrations: Map<string, Hydration>;
  close(): Promise<void>;
}

/**
 * The devices to serve: the archive's (read-only), under writable overlays
 * with --overlay, under hydrations with --hydrate (reads of copied clusters
 * come from the target; with an overlay the target ends as archive + writes).
 */
async function servedDisks(set: ArchiveExportSet, o: ServeFlags): Promise<Stack> {
  const layers: BlockDevice[] = [];
  const hydrations = new Map<string, Hydration>();
  // Outermost first: hydrations cancel and close their targets, then overlays flush.
  const close = async (): Promise<void> => {
    for (const d of layers.reverse()) await d.close();
  };
  try {
    const overlays = o.overlay !== undefined ? await perDiskPaths(set, o.overlay, '--overlay', '.overlay') : undefined;
    const targets = o.hydrate !== undefined ? await perDiskPaths(set, o.hydrate, '--hydrate', '.raw') : undefined;
    const { openOverlay } = overlays ? await import('../../device/overlay-device.js') : { openOverlay: undefined };
    const { startHydration } = targets ? await import('../../device/hydrate.js') : { startHydration: undefined };
    const disks: ServedDisk[] = [];
    for (const e of set.exports) {
      let device: BlockDevice = e.device;
      if (overlays && openOverlay) {
        device = await openOverlay(device, overlays.get(e.name)!, { baseId: overlayBaseId(set.archive.uuid, e.name) });
        layers.push(device);
      }
      if (targets && startHydration) {
        const h = startHydration(device, targets.get(e.name)!, { force: o.force === true });
        layers.push(h.device);
        await hydrationOpened(h);
        hydrations.set(e.name, h);
        device = h.device;
      }
      disks.push({ name: e.name, size: e.size, device, readOnly: !overlays });
    }
    return { disks, hydrations, close };
  } catch (err) {
    await close().catch(() => undefined);
    throw err;
  }
}

/** Waits until the hydration has its target open: a target it refuses stops serve at once, with the reason. */
async function hydrationOpened(h: Hydration): Promise<void> {
  while (h.progress().state === 'opening') await new Promise((r) => setTimeout(r, 10));
  if (h.progress().state === 'failed') await h.done;
}

/** Logs each hydration's progress every few seconds on stderr, and its end. */
function followHydrations(hydrations: Map<string, Hydration>, log: Log): () => void {
  const timer = setInterval(() => {
    for (const [disk, h] of hydrations) {
      const p = h.progress();
      if (p.state === 'running') log('info', 'hydration progress', { disk, ...p, percent: Math.floor((100 * p.bytesDone) / Math.max(1, p.bytesTotal)) });
    }
  }, PROGRESS_INTERVAL_MS);
  timer.unref();
  for (const [disk, h] of hydrations) {
    log('info', 'hydration started', { disk, bytesTotal: h.progress().bytesTotal });
    h.done.then(
      (r) => log('info', 'hydration complete: reads are served from the target', { disk, ...r }),
      (err: unknown) => log(h.progress().state === 'cancelled' ? 'warn' : 'error', 'hydration stopped: the target is incomplete; serving continues from the archive', { disk, error: describeError(err), ...h.progress() }),
    );
  }
  return () => clearInterval(timer);
}

interface Listening {
  socket: string;
  tcp?: { host: string; port: number };
  close(): Promise<void>;
}

async function listen(set: ArchiveExportSet, disks: ServedDisk[], o: ServeFlags, log: Log): Promise<Listening> {
  const { NbdServer } = await import('../../nbd/server.js');
  const ownDir = o.socket === undefined ? await defaultSocketDir() : undefined;
  const socket = o.socket ?? join(ownDir!, 'nbd.sock');
  const exports = new Map<string, NbdExport>(disks.map((d) => [d.name, { device: d.device, readOnly: d.readOnly, description: `${d.name} of archive ${set.archive.uuid}${d.readOnly ? '' : ' (overlay)'}` }]));
  const server = new NbdServer({
    exports,
    ...(disks.length === 1 ? { defaultExport: disks[0]!.name } : {}),
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

function printExports(set: ArchiveExportSet, disks: ServedDisk[], l: Listening, o: ServeFlags): void {
  const readOnly = disks.every((d) => d.readOnly);
  const exports = disks.map((e) => ({ name: e.name, size: e.size, uri: unixUri(e.name, l.socket), ...(l.tcp ? { tcpUri: tcpUri(e.name, l.tcp) } : {}) }));
  if (o.json) {
    printJson({ ok: true, archive: set.archive, readOnly, socket: l.socket, ...(l.tcp ? { tcp: l.tcp } : {}), ...(o.overlay !== undefined ? { overlay: o.overlay } : {}), ...(o.hydrate !== undefined ? { hydrate: o.hydrate } : {}), exports });
    return;
  }
  const a = set.archive;
  const mode = readOnly ? 'read-only' : `writable (writes go to overlay ${o.overlay})`;
  const lines = [`serving archive ${a.uuid} (host ${a.host}, created ${a.created}, chain of ${a.chainDepth}) ${mode} on ${l.socket}`];
  for (const e of exports) lines.push(`  ${e.name}  ${formatBytes(e.size)}  ${e.uri}${e.tcpUri ? `  ${e.tcpUri}` : ''}`);
  if (o.hydrate !== undefined) lines.push(`copying to ${o.hydrate} in the background (progress on stderr)`);
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
  if (o.force && o.hydrate === undefined) throw new UsageError('--force needs --hydrate');
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
      const served = await servedDisks(set, o);
      try {
        const listening = await listen(set, served.disks, o, log);
        try {
          printExports(set, served.disks, listening, o);
          const stopFollowing = followHydrations(served.hydrations, log);
          await untilInterrupted();
          stopFollowing();
        } finally {
          await listening.close();
        }
      } finally {
        await served.close();
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
        'serve the disks of an archive (its incremental chain resolved) over NBD, read-only unless --overlay, fetching extents as clients read them; ref = archive UUID, s3://bucket/key, a key, or a local .cwa file. Runs until SIGINT/SIGTERM',
      )
      .option('--disk <name>', 'serve only this disk (repeatable; default: every disk of the archive)', collect, [] as string[])
      .option('--key <file>', 'key file for encrypted archives')
      .option('--socket <path>', 'Unix socket to serve on, mode 0600 (default: nbd.sock in a new private directory under $XDG_RUNTIME_DIR or the temporary directory)')
      .option('--tcp <host:port>', 'also serve on TCP, without TLS or authentication: anyone who can reach it reads the disks (use 127.0.0.1)')
      .option('--cache-memory <size>', 'decoded clusters kept in memory, e.g. 512M (default 256M; 0 disables)')
      .option('--cache-dir <dir>', 'also keep fetched extents (as stored, re-checked on use) in a private directory created inside <dir>, removed at exit')
      .option('--cache-disk <size>', 'with --cache-dir: its bound (default 4G)')
      .option('--overlay <path>', 'writable export: writes go to this local overlay file (created 0600 when absent, reused by a later serve of the same archive), never to the bucket; with several disks, an existing directory holding <NAME>.overlay per disk')
      .option('--hydrate <path>', 'while serving, copy each disk to this local file in the background (created 0600; progress on stderr); copied clusters are then read from it; with --overlay it ends as the archive plus the overlay writes; with several disks, an existing directory getting <NAME>.raw per disk')
      .option('--force', 'with --hydrate: overwrite a non-empty target file (it must still be a private regular file of yours)')
      .option('--read-ahead <size>', 'fetched ahead of a sequential reader (default 32M, at most half of --cache-memory; 0 disables)')
      .option('--json', 'print the exports (names, sizes, nbd URIs) as JSON; logs stay JSON lines on stderr'),
  ).action(async (ref: string, o: ServeFlags) => runServe(ref, o));
}
