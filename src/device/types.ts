/**
 * A block device: an image file, a block special file, or a view over one.
 * Offsets and lengths are bytes; callers must stay inside [0, size).
 * Implementations reject out-of-range requests with OutOfRangeError.
 */
export interface BlockDevice {
  /** Exact size in bytes; need not be a multiple of the cluster size. */
  readonly size: number;
  readonly readOnly: boolean;
  read(offset: number, length: number): Promise<Buffer>;
  write(offset: number, data: Uint8Array, opts?: { fua?: boolean }): Promise<void>;
  /** Writes zeroes; may punch a hole. */
  writeZeroes(offset: number, length: number, opts?: { fua?: boolean; mayTrim?: boolean }): Promise<void>;
  /** Discards a range; afterwards the range reads as zeroes. */
  trim(offset: number, length: number): Promise<void>;
  flush(): Promise<void>;
  close(): Promise<void>;
}
