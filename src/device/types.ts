/**
 * One run of a device's allocation map, as NBD base:allocation reports it.
 * Holes always read as zeroes, so `hole` implies `zero`.
 */
export interface DeviceExtent {
  /** Bytes, > 0. */
  length: number;
  /** Not allocated in the backing storage (NBD_STATE_HOLE). */
  hole: boolean;
  /** Reads as zeroes (NBD_STATE_ZERO); false means "unknown", not "non-zero". */
  zero: boolean;
}

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
  /**
   * Optional read() whose result may be a view of memory the device keeps
   * (a cache): the caller must not change it, nor hand it to anything that
   * may (a transfer to a worker, a buffer pool). For callers that only send
   * the bytes on.
   */
  readShared?(offset: number, length: number): Promise<Buffer>;
  write(offset: number, data: Uint8Array, opts?: { fua?: boolean }): Promise<void>;
  /** Writes zeroes; may punch a hole. */
  writeZeroes(offset: number, length: number, opts?: { fua?: boolean; mayTrim?: boolean }): Promise<void>;
  /** Discards a range; afterwards the range reads as zeroes. */
  trim(offset: number, length: number): Promise<void>;
  flush(): Promise<void>;
  close(): Promise<void>;
  /**
   * Optional: the allocation map of [offset, offset+length): contiguous
   * extents starting at offset, covering at least 1 byte and at most `length`
   * bytes. Absent: callers treat every byte as allocated data of unknown content.
   */
  mapExtents?(offset: number, length: number): Promise<DeviceExtent[]>;
}
