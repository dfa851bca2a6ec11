/**
 * What an archive export answers about allocation, in the shape of
 * NBD base:allocation (the `DeviceExtent` of src/device/types.ts).
 */
export interface DeviceExtent {
  /** Bytes, > 0. */
  length: number;
  /** NBD_STATE_HOLE: not allocated; holes here always read as zeroes. */
  hole: boolean;
  /** NBD_STATE_ZERO: reads as zeroes. */
  zero: boolean;
}

/** Counters of one export set (all devices together). */
export interface ServeStats {
  /** Ranged reads of archive bytes (S3 GETs or file reads), index reads at open excluded. */
  gets: number;
  bytesFetched: number;
  /** Clusters answered from the memory cache / that needed an extent. */
  cacheHits: number;
  cacheMisses: number;
  /** Decoded bytes held in the memory cache now, at most, and its configured bound. */
  cacheBytes: number;
  cacheBytesPeak: number;
  cacheLimitBytes: number;
  /** Extents read back from the disk cache, and its bytes now. */
  diskCacheHits: number;
  diskCacheBytes: number;
  /** Extents found damaged (each counted once). */
  extentErrors: number;
  /** Fetches that failed and may be retried (store errors). */
  fetchErrors: number;
}
