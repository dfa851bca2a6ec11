/** Compression service used by the archive writer and restore. */
export interface Compressor {
  /** zstd-compress `data` at the configured level. */
  compress(data: Uint8Array): Promise<Buffer>;
  /** Decompress; `expectedSize` bounds the output (never trust a frame header). */
  decompress(data: Uint8Array, expectedSize: number): Promise<Buffer>;
  close(): Promise<void>;
}
