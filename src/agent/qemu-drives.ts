/**
 * The agent's view of the QEMU processes listed in its config (`qemu[]`):
 * one shared QMP connection per process, the drives' bitmap state for
 * GET /disks, and the history of the agent's pull-mode backups.
 *
 * A QEMU monitor socket serves ONE client at a time (a second connect waits
 * in the listen backlog until the first client leaves), so the agent never
 * opens two connections to the same socket: a running backup and a
 * GET /disks share one, and it is closed as soon as nobody uses it, leaving
 * the monitor free between backups.
 */
import { readFile } from 'node:fs/promises';
import { writeFileAtomic } from '../device/durable.js';
import { join } from 'node:path';
import { describeError } from '../errors.js';
import { QmpClient } from '../qemu/qmp.js';
import { namedNodes } from '../qemu/graph.js';
import { BITMAP_PREFIX, qemuIncrementalBlocker } from '../qemu/pull-backup.js';
import type { QemuConfig, QemuDriveConfig } from './config.js';
import type { QemuDiskStatus } from './backup-request.js';
import type { Logger } from './log.js';

/** How long GET /disks waits for QEMU's greeting (a busy monitor must not hang the API). */
const STATUS_CONNECT_TIMEOUT_MS = 3_000;
const STATUS_COMMAND_TIMEOUT_MS = 5_000;

export interface LastBackup {
  uuid: string;
  time: string;
  mode: 'full' | 'incremental';
}

/** One `qemu[]` entry of the config. */
export class QemuHost {
  private shared: { client: QmpClient; refs: number } | null = null;
  private connecting: Promise<QmpClient> | null = null;

  constructor(
    /** Index in the config's `qemu[]`. */
    readonly index: number,
    readonly config: QemuConfig,
  ) {}

  get drives(): readonly QemuDriveConfig[] {
    return this.config.drives;
  }

  /** A QMP client for this QEMU, shared with other users; hand it back with release(). */
  async acquire(opts: { connectTimeoutMs?: number; commandTimeoutMs?: number } = {}): Promise<QmpClient> {
    for (;;) {
      if (this.shared && !this.shared.client.closed) {
        this.shared.refs++;
        return this.shared.client;
      }
      if (!this.connecting) {
        this.connecting = QmpClient.connect(this.config.qmpSocket, opts)
          .then((client) => {
            this.shared = { client, refs: 0 };
            return client;
          })
          .finally(() => {
            this.connecting = null;
          });
      }
      await this.connecting;
    }
  }

  async release(client: QmpClient): Promise<void> {
    if (this.shared?.client === client) {
      if (--this.shared.refs > 0) return;
      this.shared = null;
    }
    await client.close().catch(() => undefined);
  }

  async withQmp<T>(fn: (qmp: QmpClient) => Promise<T>, opts: { connectTimeoutMs?: number; commandTimeoutMs?: number } = {}): Promise<T> {
    const qmp = await this.acquire(opts);
    try {
      return await fn(qmp);
    } finally {
      await this.release(qmp);
    }
  }

  /**
   * GET /disks items for this QEMU's drives. QEMU being down (or its monitor
   * busy with another client) is reported per drive, never as an API error.
   */
  async status(inBackup: (name: string) => boolean, lastBackup: (name: string) => LastBackup | null): Promise<QemuDiskStatus[]> {
    let nodes: Awaited<ReturnType<typeof namedNodes>> | null = null;
    let unreachable: string | null = null;
    try {
      nodes = await this.withQmp((qmp) => namedNodes(qmp), { connectTimeoutMs: STATUS_CONNECT_TIMEOUT_MS, commandTimeoutMs: STATUS_COMMAND_TIMEOUT_MS });
    } catch (err) {
      unreachable = `cannot query QEMU on ${this.config.qmpSocket}: ${describeError(err)}`;
    }
    return this.config.drives.map((d): QemuDiskStatus => {
      const base = { kind: 'qemu' as const, name: d.name, node: d.node, qmpSocket: this.config.qmpSocket, qemuEntry: this.index, inBackup: inBackup(d.name), lastBackup: lastBackup(d.name) };
      const node = nodes?.get(d.node);
      if (!node) {
        const reason = unreachable ?? `block node '${d.node}' not found in QEMU`;
        return { ...base, size: null, format: null, bitmap: { state: 'invalid', reason, dirtyBytes: null, names: [], parentUuid: null, persistent: null } };
      }
      // QEMU lists anonymous bitmaps too (copy-before-write keeps one on the drive during a backup).
      const bms = node.bitmaps.filter((b) => typeof b.name === 'string' && b.name.startsWith(BITMAP_PREFIX));
      const why = qemuIncrementalBlocker([node], [bms]);
      const one = bms.length === 1 ? bms[0]! : null;
      return {
        ...base,
        size: node.size,
        format: node.drv,
        bitmap: {
          state: why ? 'invalid' : 'valid',
          ...(why ? { reason: why } : {}),
          // QEMU's BlockDirtyInfo.count is in bytes.
          dirtyBytes: one ? one.count : null,
          names: bms.map((b) => b.name),
          parentUuid: one ? one.name.slice(BITMAP_PREFIX.length) : null,
          persistent: one ? one.persistent : null,
        },
      };
    });
  }

  /** Closes an idle shared connection (agent stop). */
  async close(): Promise<void> {
    const s = this.shared;
    this.shared = null;
    if (s) await s.client.close().catch(() => undefined);
  }
}

/**
 * Last successful pull-mode backup per drive name, persisted in
 * `<stateDir>/qemu-backups.json` (QEMU's bitmap names carry the uuid but not
 * the mode or time; this is what GET /disks shows as `lastBackup`).
 */
export class QemuBackupHistory {
  private readonly file: string;
  private entries: Record<string, LastBackup> = {};

  private constructor(stateDir: string) {
    this.file = join(stateDir, 'qemu-backups.json');
  }

  static async open(stateDir: string, log: Logger): Promise<QemuBackupHistory> {
    const h = new QemuBackupHistory(stateDir);
    try {
      const parsed = JSON.parse(await readFile(h.file, 'utf8')) as unknown;
      if (parsed && typeof parsed === 'object' && !Array.isArray(parsed)) {
        for (const [name, v] of Object.entries(parsed as Record<string, unknown>)) {
          const e = v as Partial<LastBackup> | null;
          if (e && typeof e.uuid === 'string' && typeof e.time === 'string' && (e.mode === 'full' || e.mode === 'incremental')) h.entries[name] = { uuid: e.uuid, time: e.time, mode: e.mode };
        }
      }
    } catch (err) {
      // Missing on first start; a damaged file only costs the history shown in GET /disks.
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') log.warn('ignoring unreadable QEMU backup history', { file: h.file, error: describeError(err) });
    }
    return h;
  }

  get(name: string): LastBackup | null {
    return this.entries[name] ?? null;
  }

  async record(names: string[], b: LastBackup): Promise<void> {
    for (const n of names) this.entries[n] = b;
    await writeFileAtomic(this.file, JSON.stringify(this.entries, null, 2) + '\n');
  }
}
