/**
 * The client's side of the NBD protocol: what only a client encodes or
 * decodes, next to the shared constants and codecs in src/nbd/protocol.ts.
 */
import { NbdProtocolError } from '../errors.js';

/** Prefix of QEMU's dirty-bitmap meta contexts (qemu/docs/interop/nbd.txt in QEMU's sources). */
export const NBD_META_QEMU_DIRTY_BITMAP_PREFIX = 'qemu:dirty-bitmap:';
/** In a qemu:dirty-bitmap context, bit 0 set = dirty (qemu/docs/interop/nbd.txt). */
export const NBD_STATE_DIRTY = 1 << 0;

/** Largest option reply payload we accept; NBD_REP_INFO/META_CONTEXT are tiny, errors carry ≤ 4096-byte strings. */
export const NBD_CLIENT_MAX_OPTION_REPLY = 64 * 1024;
/** Largest BLOCK_STATUS chunk payload we accept (each extent is 8 bytes → 128 Ki extents). */
export const NBD_CLIENT_MAX_BLOCK_STATUS_PAYLOAD = 1024 * 1024;
/** Structured error chunk: u32 errno + u16 len + ≤ 4096 bytes message + optional u64 offset. */
export const NBD_CLIENT_MAX_ERROR_PAYLOAD = 6 + 4096 + 8;

/** An error value sent by the server for one request (NBD_REPLY_TYPE_ERROR / simple reply error). */
export class NbdRemoteError extends NbdProtocolError {
  override readonly code: string = 'NBD_REMOTE';
  constructor(
    readonly errno: number,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** The server refused an option during the handshake (NBD_REP_ERR_*). */
export class NbdOptionError extends NbdProtocolError {
  override readonly code: string = 'NBD_OPTION';
  constructor(
    readonly option: string,
    readonly replyType: number,
    message: string,
  ) {
    super(message);
  }
}

const ERRNO_NAMES: Record<number, string> = { 1: 'EPERM', 5: 'EIO', 12: 'ENOMEM', 22: 'EINVAL', 28: 'ENOSPC', 75: 'EOVERFLOW', 95: 'ENOTSUP', 108: 'ESHUTDOWN' };

export function nbdErrnoName(errno: number): string {
  return ERRNO_NAMES[errno] ?? `errno ${errno}`;
}
