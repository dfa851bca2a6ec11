// Types of what zstd-worker.mjs exports for ZstdPool's inline jobs.

/** ZSTD_COMPRESSBOUND from zstd.h: the largest frame a valid input of `n` bytes can produce. */
export function compressBound(n: number): number;

/** Room the native decoder needs past the plaintext in its output buffer. */
export const DECOMPRESS_SLACK: number;

/** A codec backend as the worker builds it (opaque to the pool). */
export interface ZstdBackendImpl {
  readonly kind?: never;
}

/** The 'native' backend (node:zlib zstd) with the decoder's window capped at 2^windowLogMax. */
export function nativeBackend(windowLogMax: number): ZstdBackendImpl;

/** One job message of the worker protocol (see zstd-worker.mjs). */
export interface JobMessage {
  id: number;
  op: string;
  buf: ArrayBuffer;
  len: number;
  level: number;
  expected: number;
  hashInner: boolean;
  compressed?: boolean;
  payloadSha?: Uint8Array;
  checkPlain?: boolean;
  out?: ArrayBuffer;
}

/** Runs one job on `z`; failures come back as `{ ok: false }` replies, never as exceptions. */
export function runJob(z: ZstdBackendImpl, msg: JobMessage): { reply: Record<string, unknown>; transfer: ArrayBuffer[] };
