/** Archive format fixed sizes (docs/FORMAT.md); the cluster is copy-before-write's. */
import { CLUSTER_SIZE } from '../cbw/cluster.js';

export { CLUSTER_SIZE };
/** Granularity of the per-cluster zero mask: 16 blocks of 4 KiB per cluster. */
export const ZERO_BLOCK_SIZE = 4 * 1024;
export const BLOCKS_PER_CLUSTER = CLUSTER_SIZE / ZERO_BLOCK_SIZE;
/** An extent carries at most this much cluster data (64 clusters). */
export const MAX_EXTENT_DATA = 4 * 1024 * 1024;
/** The device table is indexed by a u8 id. */
export const MAX_DEVICES = 255;
/** At most 64 clusters (= MAX_EXTENT_DATA / CLUSTER_SIZE) per extent. */
export const MAX_CLUSTERS_PER_EXTENT = MAX_EXTENT_DATA / CLUSTER_SIZE;
