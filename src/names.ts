/**
 * Name rules: the one place that says what a host id and a device name may
 * be. A host id is a segment of S3 keys (`archives/<host>/`), of DynamoDB
 * keys (joined with `#`) and of IAM role names; a device name (a disk, a
 * QEMU drive, a config blob) is an NBD export name and a file name written by
 * `archive extract`. So both are short, from a safe alphabet, and never
 * start with `.`, `_` or `-` (no `..`, no hidden files, no option-like names).
 */

/** Longest host id, in characters (= bytes: the alphabet is ASCII). */
export const HOST_ID_MAX = 128;
/** Longest device or config name, in characters. */
export const DEVICE_NAME_MAX = 128;

const SAFE = '[A-Za-z0-9][A-Za-z0-9._-]';
export const HOST_ID_PATTERN = new RegExp(`^${SAFE}{0,${HOST_ID_MAX - 1}}$`);
export const DEVICE_NAME_PATTERN = new RegExp(`^${SAFE}{0,${DEVICE_NAME_MAX - 1}}$`);
/** `<host>/<disk>`, the key of per-disk settings (retention). */
export const HOST_DISK_PATTERN = new RegExp(`^${SAFE}{0,${HOST_ID_MAX - 1}}/${SAFE}{0,${DEVICE_NAME_MAX - 1}}$`);

export const HOST_ID_RULE = `1-${HOST_ID_MAX} characters of [A-Za-z0-9._-], starting with a letter or digit`;
export const DEVICE_NAME_RULE = `1-${DEVICE_NAME_MAX} characters of [A-Za-z0-9._-], starting with a letter or digit`;

export function isHostId(s: string): boolean {
  return HOST_ID_PATTERN.test(s);
}

export function isDeviceName(s: string): boolean {
  return DEVICE_NAME_PATTERN.test(s);
}
