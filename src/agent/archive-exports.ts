/**
 * Archives served by the agent's own NBD server (POST /exports, and export
 * jobs of the catalogue): each set's devices are added to the server's
 * export map as `export-<id>/<disk>` and removed again on DELETE.
 *
 * - Bounded: at most `exports.max` sets, counting those still opening; cache
 *   sizes are capped by the agent config, never chosen by the request alone.
 * - Removal never hangs a client: the names leave the map first (new
 *   connections get "unknown export"), then every served device is revoked,
 *   so a client still connected gets EIO for each further request, and the
 *   set closes once the requests already running have finished.
 * - An overlay path is attacker-controlled (it may come from the catalogue):
 *   it is confined to `restore.allowedDirs` like a restore target
 *   (src/restore/confined.ts) and opened through the confined directory.
 */
import { randomBytes } from 'node:crypto';
import type { FileHandle } from 'node:fs/promises';
import { z } from 'zod';
import { ConfigError, ConflictError, NotFoundError, UsageError, describeError } from '../errors.js';
import { readKeyFile } from '../codec/crypto.js';
import type { BlockDevice, DeviceExtent } from '../device/types.js';
import { OverlayError } from '../device/errors.js';
import { NbdErrnoError, type NbdExport } from '../nbd/index.js';
import { NBD_EIO } from '../nbd/protocol.js';
import type { ArchiveLocator } from '../restore/plan.js';
import type { ArchiveContext } from '../restore/locate.js';
import { findArchiveByUuid } from '../restore/locate.js';
import { openConfinedFile } from '../restore/confined.js';
import { parseS3Uri } from '../store/config.js';
import { DEVICE_NAME_PATTERN, DEVICE_NAME_RULE } from '../names.js';
import { exportOptionsShape } from '../catalog/records.js';
import type { AgentConfig, ExportsConfig } from './config.js';
import type { AgentStore } from './targets.js';
import { BadRequestError, parseRequestBody } from './http-util.js';
import type { Logger } from './log.js';
import { overlayBaseId } from '../serve/overlay-base.js';

/** The served archive as src/serve's openArchiveExports returns it (SERVE-SPEC.md). */
export interface ServedArchive {
  archive: { uuid: string; host: string; created: string; chainDepth: number };
  exports: Array<{ name: string; size: number; device: BlockDevice }>;
  stats(): object;
  close(): Promise<void>;
}

/** src/serve's openArchiveExports, as far as the agent uses it. */
export type OpenArchiveExports = (opts: {
  ref: ArchiveLocator;
  context: ArchiveContext;
  key?: Buffer;
  devices?: string[];
  cache?: { memoryBytes?: number; dir?: string; diskBytes?: number };
  log?: (level: 'debug' | 'info' | 'warn' | 'error', message: string, fields?: Record<string, unknown>) => void;
}) => Promise<ServedArchive>;

/** src/device/overlay-device.ts openOverlay: a writable view whose writes go to a local file, made over the base `baseId` names. */
export type OpenOverlay = (base: BlockDevice, path: string, baseId: string) => Promise<BlockDevice>;

/** POST /exports body. */
export const exportRequestSchema = z.strictObject({
  /** An archive UUID, a key in the agent's bucket or `s3://<agent bucket>/<key>`. */
  ref: z.string().min(1).max(1024),
  disks: z
    .array(z.string().regex(DEVICE_NAME_PATTERN, `must be ${DEVICE_NAME_RULE}`))
    .min(1, 'must name at least one disk (omit it to serve all disks)')
    .max(255)
    .refine((a) => new Set(a).size === a.length, 'disk names must be unique')
    .optional(),
  ...exportOptionsShape,
});
export type ExportRequest = z.output<typeof exportRequestSchema>;

export function parseExportRequest(body: unknown): ExportRequest {
  return parseRequestBody(exportRequestSchema, body, 'export request');
}

export interface ExportedDisk {
  /** The NBD export name, `export-<id>/<disk>`. */
  name: string;
  disk: string;
  size: number;
  readOnly: boolean;
  /** Where clients connect: `nbd+unix://…?socket=…` and/or `nbd://host:port/…`. */
  uris: string[];
}

export interface ExportInfo {
  id: string;
  archive: ServedArchive['archive'];
  exports: ExportedDisk[];
  overlay?: string;
  createdAt: string;
  /** The catalogue job this set serves, if any. */
  jobId?: string;
  stats: object;
}

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/**
 * A served device that can be cut off: after revoke() every request fails
 * with EIO at once, and drained() resolves when the ones already running
 * are done (so the set underneath can close without pulling data from
 * under a read).
 */
export class RevocableDevice implements BlockDevice {
  private revoked: string | null = null;
  private inflight = 0;
  private idle: Array<() => void> = [];
  readonly mapExtents?: (offset: number, length: number) => Promise<DeviceExtent[]>;
  readonly readShared?: (offset: number, length: number) => Promise<Buffer>;

  constructor(
    private readonly inner: BlockDevice,
    private readonly label: string,
  ) {
    const map = inner.mapExtents;
    // Block status follows the device: without a map the server reports everything allocated.
    if (map) this.mapExtents = (o, l) => this.run(() => map.call(inner, o, l));
    const shared = inner.readShared;
    if (shared) this.readShared = (o, l) => this.run(() => shared.call(inner, o, l));
  }

  get size(): number {
    return this.inner.size;
  }
  get readOnly(): boolean {
    return this.inner.readOnly;
  }

  revoke(reason: string): void {
    this.revoked ??= reason;
  }

  async drained(): Promise<void> {
    if (this.inflight === 0) return;
    await new Promise<void>((r) => this.idle.push(r));
  }

  private async run<T>(fn: () => Promise<T>): Promise<T> {
    if (this.revoked !== null) throw new NbdErrnoError(NBD_EIO, `${this.label}: ${this.revoked}`);
    this.inflight++;
    try {
      return await fn();
    } finally {
      if (--this.inflight === 0) for (const r of this.idle.splice(0)) r();
    }
  }

  read(offset: number, length: number): Promise<Buffer> {
    return this.run(() => this.inner.read(offset, length));
  }
  write(offset: number, data: Uint8Array, opts?: { fua?: boolean }): Promise<void> {
    return this.run(() => this.inner.write(offset, data, opts));
  }
  writeZeroes(offset: number, length: number, opts?: { fua?: boolean; mayTrim?: boolean }): Promise<void> {
    return this.run(() => this.inner.writeZeroes(offset, length, opts));
  }
  trim(offset: number, length: number): Promise<void> {
    return this.run(() => this.inner.trim(offset, length));
  }
  flush(): Promise<void> {
    return this.run(() => this.inner.flush());
  }
  /** The set owns the devices; closing happens there. */
  async close(): Promise<void> {}
}

interface OpenSet {
  info: Omit<ExportInfo, 'stats'>;
  served: ServedArchive;
  devices: RevocableDevice[];
  /** Overlays (closed before the set) and the confined directory they live in. */
  overlays: BlockDevice[];
  overlayDir: FileHandle | null;
}

export interface ArchiveExportsOptions {
  /** The agent NbdServer's export map: names are added and removed here. */
  exports: Map<string, NbdExport>;
  config: ExportsConfig;
  /** Where overlays may go (the agent's restore.allowedDirs). */
  allowedDirs: string[];
  /** The agent's store, for refs; null when it has none. */
  context: ArchiveContext | null;
  /** Key file for encrypted archives (restore.keyFile), read when an export needs it. */
  keyFile?: string | undefined;
  open: OpenArchiveExports;
  openOverlay?: OpenOverlay;
  /** The client URIs of an export name (depends on the NBD listeners). */
  uris: (name: string) => string[];
  log: Logger;
}

export class ArchiveExports {
  private readonly sets = new Map<string, OpenSet>();
  private opening = 0;
  private closed = false;

  constructor(private readonly opts: ArchiveExportsOptions) {}

  /** Opens an archive's devices and adds them to the NBD server. */
  async add(req: ExportRequest, origin: { jobId?: string } = {}): Promise<ExportInfo> {
    if (this.closed) throw new ConflictError('the agent is stopping');
    const { open, config } = this.opts;
    const cache = this.cacheFor(req);
    if (req.overlay !== undefined && !this.opts.openOverlay) throw new BadRequestError('overlay', 'overlay: this agent cannot open overlays');
    if (this.sets.size + this.opening >= config.max) {
      throw new ConflictError(`${this.sets.size + this.opening} exports are open, the configured maximum (exports.max = ${config.max}); remove one first`);
    }
    this.opening++;
    try {
      const context = this.opts.context;
      if (!context?.store) throw new UsageError('this agent has no S3 store to serve archives from');
      const ref = await this.locate(req.ref, context);
      const overlay = req.overlay !== undefined ? await openConfinedFile(req.overlay, this.opts.allowedDirs, 'overlay') : null;
      let served: ServedArchive;
      try {
        const log = this.opts.log;
        served = await open({
          ref,
          context,
          ...(this.opts.keyFile !== undefined ? { key: await this.key(this.opts.keyFile) } : {}),
          ...(req.disks ? { devices: req.disks } : {}),
          cache,
          log: (level, message, fields) => log[level](message, { ...fields, archive: ref.kind === 's3' ? ref.key : ref.path }),
        });
      } catch (err) {
        await overlay?.dir.close().catch(() => undefined);
        throw err;
      }
      return await this.install(req, served, overlay, origin);
    } finally {
      this.opening--;
    }
  }

  private keyRead: Promise<Buffer> | null = null;

  private key(file: string): Promise<Buffer> {
    this.keyRead ??= readKeyFile(file).catch((err: unknown) => {
      this.keyRead = null;
      throw new ConfigError(`restore.keyFile: ${describeError(err)}`, { cause: err });
    });
    return this.keyRead;
  }

  /** Cache sizes: the request's, bounded by the config (the config's maxima by default). */
  private cacheFor(req: ExportRequest): { memoryBytes: number; diskBytes?: number; dir?: string } {
    const { config } = this.opts;
    const mem = req.cache?.memoryBytes ?? config.maxCacheMemoryBytes;
    if (mem > config.maxCacheMemoryBytes) {
      throw new BadRequestError('cache.memoryBytes', `cache.memoryBytes: ${mem} is above this agent's limit (exports.maxCacheMemoryBytes = ${config.maxCacheMemoryBytes})`);
    }
    const disk = req.cache?.diskBytes ?? 0;
    if (disk > config.maxCacheDiskBytes) {
      throw new BadRequestError('cache.diskBytes', `cache.diskBytes: ${disk} is above this agent's limit (exports.maxCacheDiskBytes = ${config.maxCacheDiskBytes})`);
    }
    return { memoryBytes: mem, ...(disk > 0 ? { diskBytes: disk, dir: config.cacheDir } : {}) };
  }

  /**
   * A ref the agent serves is in its own bucket: a UUID, a key, or an s3://
   * URI of that bucket. Never a local file: the catalogue and the control
   * API must not make the agent read arbitrary files.
   */
  private async locate(ref: string, ctx: ArchiveContext): Promise<ArchiveLocator> {
    const store = ctx.store!;
    const uri = parseS3Uri(ref);
    if (uri) {
      if (uri.bucket !== store.bucket) throw new BadRequestError('ref', `ref: this agent serves archives of its bucket ${store.bucket} only, not ${uri.bucket}`);
      return { kind: 's3', ...uri };
    }
    if (UUID_RE.test(ref)) {
      if (!ctx.client) throw new UsageError('this agent has no S3 client');
      const loc = await findArchiveByUuid(ctx.client, store, ref.toLowerCase());
      if (!loc) throw new NotFoundError(`archive ${ref} not found in s3://${store.bucket}/${store.prefix}`);
      return loc;
    }
    if (ref.startsWith('/') || ref.split('/').includes('..') || !ref.endsWith('.cwa')) {
      throw new BadRequestError('ref', `ref: "${ref}" is not an archive UUID, a .cwa key in the agent's bucket or s3://${store.bucket}/<key>`);
    }
    return { kind: 's3', bucket: store.bucket, key: ref };
  }

  private newId(): string {
    for (;;) {
      const id = randomBytes(4).toString('hex');
      if (!this.sets.has(id)) return id;
    }
  }

  /**
   * The request's overlay over `base`. An existing file the overlay module
   * refuses (another base, damaged, not ours) is the caller's conflict (409),
   * named by the path the caller gave, not the descriptor path it was opened by.
   */
  private async openOverlay(base: BlockDevice, openPath: string, givenPath: string, baseId: string): Promise<BlockDevice> {
    try {
      return await this.opts.openOverlay!(base, openPath, baseId);
    } catch (err) {
      if (!(err instanceof OverlayError)) throw err;
      throw new ConflictError(`overlay: ${err.message.split(openPath).join(givenPath)}`, { cause: err });
    }
  }

  private async install(req: ExportRequest, served: ServedArchive, overlay: Awaited<ReturnType<typeof openConfinedFile>> | null, origin: { jobId?: string }): Promise<ExportInfo> {
    const id = this.newId();
    const devices: RevocableDevice[] = [];
    const overlays: BlockDevice[] = [];
    const disks: ExportedDisk[] = [];
    try {
      if (this.closed) throw new ConflictError('the agent is stopping');
      if (overlay && served.exports.length !== 1) {
        throw new BadRequestError('overlay', `overlay: one overlay file serves one disk; this request serves ${served.exports.length} (${served.exports.map((e) => e.name).join(', ')}): name one in disks`);
      }
      for (const e of served.exports) {
        let dev = e.device;
        if (overlay) {
          dev = await this.openOverlay(dev, overlay.path, req.overlay!, overlayBaseId(served.archive.uuid, e.name));
          overlays.push(dev);
        }
        const name = `export-${id}/${e.name}`;
        const rev = new RevocableDevice(dev, `export ${name}`);
        devices.push(rev);
        disks.push({ name, disk: e.name, size: e.size, readOnly: dev.readOnly, uris: this.opts.uris(name) });
      }
    } catch (err) {
      for (const o of overlays) await o.close().catch(() => undefined);
      await overlay?.dir.close().catch(() => undefined);
      await served.close().catch(() => undefined);
      throw err;
    }
    const info: Omit<ExportInfo, 'stats'> = {
      id,
      archive: served.archive,
      exports: disks,
      ...(req.overlay !== undefined ? { overlay: req.overlay } : {}),
      createdAt: new Date().toISOString(),
      ...(origin.jobId !== undefined ? { jobId: origin.jobId } : {}),
    };
    this.sets.set(id, { info, served, devices, overlays, overlayDir: overlay?.dir ?? null });
    disks.forEach((d, i) => {
      const readOnly = d.readOnly;
      this.opts.exports.set(d.name, { device: devices[i]!, description: `cowstream archive ${served.archive.uuid} (${d.disk}) of host ${served.archive.host}`, readOnly });
    });
    this.opts.log.info('archive export added', { id, archive: served.archive.uuid, exports: disks.map((d) => d.name), ...(origin.jobId ? { jobId: origin.jobId } : {}) });
    return { ...info, stats: served.stats() };
  }

  list(): ExportInfo[] {
    return [...this.sets.values()].map((s) => ({ ...s.info, stats: s.served.stats() }));
  }

  get(id: string): ExportInfo {
    const s = this.sets.get(id);
    if (!s) throw new NotFoundError(`export ${id} not found`);
    return { ...s.info, stats: s.served.stats() };
  }

  /** Removes a set: names first, then its devices are revoked, drained and closed. */
  async remove(id: string, reason = 'the export was removed'): Promise<ExportInfo> {
    const s = this.sets.get(id);
    if (!s) throw new NotFoundError(`export ${id} not found`);
    this.sets.delete(id);
    for (const d of s.info.exports) this.opts.exports.delete(d.name);
    for (const d of s.devices) d.revoke(reason);
    const stats = s.served.stats();
    await Promise.all(s.devices.map((d) => d.drained()));
    for (const o of s.overlays) await o.close().catch((err: unknown) => this.opts.log.warn('overlay close failed', { id, error: describeError(err) }));
    await s.overlayDir?.close().catch(() => undefined);
    await s.served.close().catch((err: unknown) => this.opts.log.warn('archive export close failed', { id, error: describeError(err) }));
    this.opts.log.info('archive export removed', { id, reason });
    return { ...s.info, stats };
  }

  /** Removes every set (agent stop); later adds are refused. */
  async close(): Promise<void> {
    this.closed = true;
    for (const id of [...this.sets.keys()]) await this.remove(id, 'the agent is stopping');
  }
}

/**
 * NBD URIs of an export (the NBD URI spec, doc/uri.md of the NBD project):
 * `nbd+unix:///<name>?socket=<path>` and `nbd://host:port/<name>` (`nbds`
 * when TLS is required). The export name is the whole path after the first
 * `/`, so its own `/` stays unescaped.
 */
export function nbdUris(name: string, listeners: { unixSocket?: string | undefined; tcp?: { host: string; port: number } | null | undefined; tls?: boolean }): string[] {
  const path = name.split('/').map(encodeURIComponent).join('/');
  const out: string[] = [];
  if (listeners.unixSocket) out.push(`nbd${listeners.tls ? 's' : ''}+unix:///${path}?socket=${encodeURIComponent(listeners.unixSocket)}`);
  if (listeners.tcp) {
    const host = listeners.tcp.host.includes(':') ? `[${listeners.tcp.host}]` : listeners.tcp.host;
    out.push(`nbd${listeners.tls ? 's' : ''}://${host}:${listeners.tcp.port}/${path}`);
  }
  return out;
}

/**
 * The agent's ArchiveExports over its NBD server's export map: archives of
 * its store, overlays in restore.allowedDirs, URIs of its listeners. The
 * serve and overlay modules load on the first export, not at start-up.
 */
export function createAgentExports(
  config: AgentConfig,
  store: AgentStore,
  exports: Map<string, NbdExport>,
  addrs: { unixSocket?: string | undefined; tcp?: { host: string; port: number } | undefined },
  seams: { openExports?: OpenArchiveExports; openOverlay?: OpenOverlay },
  log: Logger,
): ArchiveExports {
  return new ArchiveExports({
    exports,
    config: config.exports,
    allowedDirs: config.restore.allowedDirs,
    context: { store: { bucket: store.bucket, prefix: store.prefix, ...(store.endpoint ? { endpoint: store.endpoint } : {}) }, client: store.client },
    keyFile: config.restore.keyFile,
    open: seams.openExports ?? (async (o) => (await import('../serve/archive-exports.js')).openArchiveExports(o)),
    openOverlay: seams.openOverlay ?? (async (base, path, baseId) => (await import('../device/overlay-device.js')).openOverlay(base, path, { baseId })),
    uris: (name) => nbdUris(name, { unixSocket: addrs.unixSocket, tcp: addrs.tcp, tls: config.nbd.tls?.mode === 'require' }),
    log,
  });
}
