import { DeviceError } from '../errors.js';

/** A write, zero or trim on a device opened read-only (NBD maps it to EPERM). */
export class ReadOnlyDeviceError extends DeviceError {
  override readonly code: string = 'READ_ONLY';
}

/** The device was used after close(). */
export class DeviceClosedError extends DeviceError {
  override readonly code: string = 'DEVICE_CLOSED';
}

/** An overlay or hydration target that is not ours, not safe to use, or damaged. */
export class OverlayError extends DeviceError {
  override readonly code: string = 'OVERLAY';
}
