/**
 * Byte-layout constants of archive formats v1 and v2. docs/FORMAT.md is the
 * spec; every number here is cited there.
 */
import { DEVICE_NAME_MAX, DEVICE_NAME_PATTERN } from '../names.js';
import { MAX_CLUSTERS_PER_EXTENT, MAX_EXTENT_DATA } from './constants.js';

/** The version the writer produces. */
export const FORMAT_VERSION = 2;
/** v1: no header/index tags, config blobs in clear (still readable). */
export const FORMAT_V1 = 1;
export const FORMAT_V2 = 2;
export type FormatVersion = typeof FORMAT_V1 | typeof FORMAT_V2;
/** HMAC-SHA256 tag (v2 header tag, index tag). */
export const TAG_SIZE = 32;
/** v2 sealed config blob: nonce || ciphertext || GCM tag. */
export const SEALED_CONFIG_OVERHEAD = 12 + 16;

export const HEADER_MAGIC = Buffer.from('CWSARCH1', 'ascii');
export const EXTENT_MAGIC = Buffer.from('CWX1', 'ascii');
export const TRAILER_MAGIC = Buffer.from('CWT1', 'ascii');
export const TRAILER_MAGIC_V2 = Buffer.from('CWT2', 'ascii');
export const FOOTER_MAGIC = Buffer.from('CWSFOOT1', 'ascii');

export const SHA256_SIZE = 32;
export const UUID_SIZE = 16;
export const FINGERPRINT_SIZE = 16;
export const NONCE_SIZE = 12;
export const GCM_TAG_SIZE = 16;

/** Codec ids (header byte 64). */
export const CODEC_ZSTD = 1;
/** Encryption modes (header byte 65). */
export const ENCRYPTION_NONE = 0;
export const ENCRYPTION_AES_256_GCM = 1;

/** Fixed part of the header before the host id. */
export const HEADER_FIXED_SIZE = 88;
export const MAX_HEADER_SIZE = 16 * 1024 * 1024;
export const MAX_NAME_LENGTH = DEVICE_NAME_MAX;
export const MAX_CONFIGS = 64;
export const MAX_CONFIG_SIZE = 8 * 1024 * 1024;
/** Names are used as file names by `archive extract`: no separators, no leading dot. */
export const NAME_PATTERN = DEVICE_NAME_PATTERN;

/** Extent header: fixed 56 bytes, 16 per cluster, then payload SHA + header SHA. */
export const EXTENT_FIXED_SIZE = 56;
export const CLUSTER_ENTRY_SIZE = 16;
export const EXTENT_FLAG_COMPRESSED = 0x01;
export const EXTENT_FLAG_ENCRYPTED = 0x02;
export function extentHeaderSize(clusterCount: number): number {
  return EXTENT_FIXED_SIZE + CLUSTER_ENTRY_SIZE * clusterCount + 2 * SHA256_SIZE;
}
/** Largest possible extent: 64-cluster header, inner digest, GCM tag, raw 4 MiB body. */
export const MAX_EXTENT_SIZE =
  extentHeaderSize(MAX_CLUSTERS_PER_EXTENT) + SHA256_SIZE + GCM_TAG_SIZE + MAX_EXTENT_DATA;
/** Smallest possible extent: 1 cluster, digest, 1 body byte. */
export const MIN_EXTENT_SIZE = extentHeaderSize(1) + SHA256_SIZE + 1;

/** Trailer: 16-byte fixed part, 16/20/16-byte records, SHA-256. */
export const TRAILER_FIXED_SIZE = 16;
export const EXTENT_REF_SIZE = 16;
export const DATA_RUN_SIZE = 20;
export const ZERO_RUN_SIZE = 16;
export const MAX_TRAILER_SIZE = 256 * 1024 * 1024;
/**
 * Default cap on index entries (extents + data runs + zero runs) a reader
 * accepts: each costs heap (~100 bytes), so this, not the file, bounds the
 * memory of opening an archive (docs/FORMAT.md "Reader limits").
 */
export const DEFAULT_MAX_INDEX_ENTRIES = 1024 * 1024;
/** Runs carry a u32 count; longer runs are split. */
export const MAX_RUN_COUNT = 0xffffffff;

export const FOOTER_SIZE = 144;
export const FOOTER_BODY_SIZE = 112;
