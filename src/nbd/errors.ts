/**
 * How errors thrown by a BlockDevice become NBD error values.
 *
 * Convention (for device wrappers such as the CBW engine):
 *  1. An error with an own numeric `nbdErrno` property (e.g. NbdErrnoError)
 *     gets exactly that value, if it is one of the values the spec allows.
 *  2. CbwError → EIO: a copy-before-write failure under the
 *     `break-guest-write` policy must look like a plain I/O error to the guest,
 *     whatever its cause was (a full fleecing store must not become ENOSPC).
 *  3. OutOfRangeError → EINVAL, or ENOSPC for writes/write-zeroes (proto.md
 *     "Error values": ENOSPC for writes past the end, EINVAL for reads/trims).
 *  4. ReadOnlyDeviceError → EPERM.
 *  5. A Node system error (directly, or as the `cause` of a DeviceError):
 *     ENOSPC/EDQUOT/EFBIG → ENOSPC (the spec asks for this mapping),
 *     EROFS/EPERM/EACCES → EPERM.
 *  6. Anything else → EIO.
 */
import { CbwError, CowstreamError, DeviceError, OutOfRangeError } from '../errors.js';
import { ReadOnlyDeviceError } from '../device/errors.js';
import { NBD_EINVAL, NBD_EIO, NBD_ENOSPC, NBD_EPERM, NBD_ERRNOS } from './protocol.js';

/** A device error that carries the NBD error value the client should see. */
export class NbdErrnoError extends DeviceError {
  override readonly code: string = 'NBD_ERRNO';
  readonly nbdErrno: number;

  constructor(nbdErrno: number, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.nbdErrno = NBD_ERRNOS.has(nbdErrno) ? nbdErrno : NBD_EIO;
  }
}

export type NbdOpKind = 'read' | 'write' | 'trim' | 'other';

const SYS_ERRNO: Record<string, number> = {
  ENOSPC: NBD_ENOSPC,
  EDQUOT: NBD_ENOSPC,
  EFBIG: NBD_ENOSPC,
  EROFS: NBD_EPERM,
  EPERM: NBD_EPERM,
  EACCES: NBD_EPERM,
};

/** Maps any thrown value to an NBD error value (see the module comment). */
export function nbdErrnoFor(err: unknown, op: NbdOpKind = 'other'): number {
  if (typeof err === 'object' && err !== null) {
    const explicit = (err as { nbdErrno?: unknown }).nbdErrno;
    if (typeof explicit === 'number' && NBD_ERRNOS.has(explicit)) return explicit;
  }
  if (err instanceof CbwError) return NBD_EIO;
  if (err instanceof OutOfRangeError) return op === 'write' ? NBD_ENOSPC : NBD_EINVAL;
  if (err instanceof ReadOnlyDeviceError) return NBD_EPERM;
  const sys = systemCode(err) ?? (err instanceof DeviceError ? systemCode(err.cause) : undefined);
  if (sys !== undefined && SYS_ERRNO[sys] !== undefined) return SYS_ERRNO[sys];
  return NBD_EIO;
}

function systemCode(err: unknown): string | undefined {
  if (err instanceof CowstreamError) return undefined; // our codes are not errno names
  if (typeof err !== 'object' || err === null) return undefined;
  const code = (err as { code?: unknown }).code;
  return typeof code === 'string' ? code : undefined;
}

/** The NBD server could not listen (address in use, socket path taken, ...). */
export class NbdListenError extends CowstreamError {
  override readonly code: string = 'NBD_LISTEN';
}
