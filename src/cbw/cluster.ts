/**
 * The unit copy-before-write works in, and the contract of what it emits.
 * The archive format stores clusters of the same size (docs/FORMAT.md), so
 * format/ takes both from here: data flows device → cbw → format.
 */

/** Copy-before-write, dirty bitmaps and archive extents all count in 64 KiB clusters. */
export const CLUSTER_SIZE = 64 * 1024;

/** Where CBW and the background pass hand clusters, in any order. */
export interface ClusterSink {
  /**
   * Accepts one cluster of one device. `data.length` is CLUSTER_SIZE except
   * for the last cluster of a device whose size is not a cluster multiple,
   * where it is the remainder. The caller may reuse `data` once this resolves.
   */
  writeCluster(deviceId: number, cluster: number, data: Buffer): Promise<void>;
}
