import { DeviceError } from '../errors.js';

/**
 * An extent of a served archive is truncated, corrupt or forged (a digest,
 * the decompression, the authentication or the cluster table failed). Reads
 * of the clusters it supplies fail with this error (EIO over NBD) for as long
 * as the export is served; other clusters keep working.
 */
export class ExtentDamagedError extends DeviceError {
  override readonly code: string = 'EXTENT_DAMAGED';
}

/** An extent could not be fetched (store unreachable, object replaced); a later read tries again. */
export class ExtentFetchError extends DeviceError {
  override readonly code: string = 'EXTENT_FETCH';
}
