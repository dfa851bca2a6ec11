import { describe, expect, it } from 'vitest';
import { ReadOnlyDeviceError } from '../../../src/device/errors.js';
import { CbwError, DeviceError, OutOfRangeError } from '../../../src/errors.js';
import { NbdErrnoError, nbdErrnoFor } from '../../../src/nbd/errors.js';
import { NBD_EINVAL, NBD_EIO, NBD_ENOSPC, NBD_EPERM, NBD_ESHUTDOWN } from '../../../src/nbd/protocol.js';

const sys = (code: string): Error => Object.assign(new Error(code), { code });

describe('nbdErrnoFor', () => {
  it('honours an explicit nbdErrno', () => {
    expect(nbdErrnoFor(new NbdErrnoError(NBD_ENOSPC, 'full'))).toBe(NBD_ENOSPC);
    expect(nbdErrnoFor(Object.assign(new Error('x'), { nbdErrno: NBD_ESHUTDOWN }))).toBe(NBD_ESHUTDOWN);
    // values outside the spec's list are not sent on the wire
    expect(new NbdErrnoError(999, 'x').nbdErrno).toBe(NBD_EIO);
    expect(nbdErrnoFor(Object.assign(new Error('x'), { nbdErrno: 999 }))).toBe(NBD_EIO);
  });

  it('CBW failures are EIO whatever their cause', () => {
    expect(nbdErrnoFor(new CbwError('timeout', { cause: sys('ENOSPC') }), 'write')).toBe(NBD_EIO);
    expect(nbdErrnoFor(new CbwError('x', { cause: new OutOfRangeError('r') }), 'write')).toBe(NBD_EIO);
  });

  it('range and read-only errors', () => {
    expect(nbdErrnoFor(new OutOfRangeError('r'), 'read')).toBe(NBD_EINVAL);
    expect(nbdErrnoFor(new OutOfRangeError('r'), 'trim')).toBe(NBD_EINVAL);
    expect(nbdErrnoFor(new OutOfRangeError('r'), 'write')).toBe(NBD_ENOSPC);
    expect(nbdErrnoFor(new ReadOnlyDeviceError('ro'), 'write')).toBe(NBD_EPERM);
  });

  it('system errors, directly or as the cause of a DeviceError', () => {
    expect(nbdErrnoFor(sys('EDQUOT'))).toBe(NBD_ENOSPC);
    expect(nbdErrnoFor(sys('EFBIG'))).toBe(NBD_ENOSPC);
    expect(nbdErrnoFor(new DeviceError('w', { cause: sys('ENOSPC') }))).toBe(NBD_ENOSPC);
    expect(nbdErrnoFor(new DeviceError('w', { cause: sys('EROFS') }))).toBe(NBD_EPERM);
    expect(nbdErrnoFor(new DeviceError('w', { cause: sys('EIO') }))).toBe(NBD_EIO);
    expect(nbdErrnoFor(sys('ENOMEM'))).toBe(NBD_EIO);
  });

  it('anything else is EIO', () => {
    expect(nbdErrnoFor(new Error('?'))).toBe(NBD_EIO);
    expect(nbdErrnoFor('string')).toBe(NBD_EIO);
    expect(nbdErrnoFor(undefined)).toBe(NBD_EIO);
  });
});
