import type { BlockDevice } from '../device/types.js';

/** One named NBD export. */
export interface NbdExport {
  /**
   * The device served. The server reads this property for every request, so
   * an agent may swap it (e.g. install a copy-before-write wrapper) while
   * clients stay connected; requests already running finish on the old one.
   * The size must not change: clients learned it at handshake.
   */
  device: BlockDevice;
  /** Shown by `nbdinfo --list` (NBD_REP_SERVER / NBD_INFO_DESCRIPTION). */
  description?: string;
  /** Serve read-only even if the device is writable (READ_ONLY flag, EPERM on writes). */
  readOnly?: boolean;
  /**
   * Advertise NBD_FLAG_CAN_MULTI_CONN (default true). Safe because every
   * connection shares the same device object and flush is fdatasync on the
   * shared file, so a flush on one connection covers writes made on another.
   */
  multiConn?: boolean;
  /** Advertised minimum block size (power of 2, 1..65536; default 1). Unaligned requests get EINVAL. */
  minBlockSize?: number;
}

/**
 * Where exports come from. A `Map<string, NbdExport>` satisfies this; an agent
 * may pass its own object to resolve names dynamically.
 */
export interface NbdExportSource {
  get(name: string): NbdExport | undefined;
  keys(): Iterable<string>;
}

export interface NbdLogger {
  warn(msg: string, fields?: Record<string, unknown>): void;
  info?(msg: string, fields?: Record<string, unknown>): void;
  debug?(msg: string, fields?: Record<string, unknown>): void;
}
