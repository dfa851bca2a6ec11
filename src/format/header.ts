/**
 * Archive header encode/decode (docs/FORMAT.md "Header", "Version 2"). Pure
 * functions; decodeHeader reads v1 and v2, encodeHeader writes v2.
 */
import { NIL as NIL_UUID, parse as parseUuid } from 'uuid';
import { uuidString as stringifyUuid } from './bytes.js';
import { FormatError } from '../errors.js';
import { ByteReader, ByteWriter } from './bytes.js';
import { checkSha256, sha256 } from './checksum.js';
import { CLUSTER_SIZE, MAX_DEVICES, ZERO_BLOCK_SIZE } from './constants.js';
import {
  CODEC_ZSTD,
  ENCRYPTION_AES_256_GCM,
  ENCRYPTION_NONE,
  FINGERPRINT_SIZE,
  FORMAT_V1,
  FORMAT_V2,
  type FormatVersion,
  HEADER_FIXED_SIZE,
  HEADER_MAGIC,
  MAX_CONFIGS,
  MAX_CONFIG_SIZE,
  MAX_HEADER_SIZE,
  MAX_NAME_LENGTH,
  NAME_PATTERN,
  SEALED_CONFIG_OVERHEAD,
  SHA256_SIZE,
  TAG_SIZE,
  UUID_SIZE,
} from './layout.js';
import { headerTag, macKey, sealConfig } from './auth.js';
import { HOST_ID_RULE, isHostId } from '../names.js';

export interface DeviceInfo {
  /** u8 id, unique within the archive. */
  id: number;
  /** File-name safe name (docs/FORMAT.md "Conventions"). */
  name: string;
  /** Exact size in bytes; need not be a cluster multiple. */
  size: number;
}

export interface ConfigBlob {
  name: string;
  data: Buffer;
}

export type EncryptionMode = 'none' | 'aes-256-gcm';

export interface HeaderFields {
  uuid: string;
  /** null for a full archive. */
  parentUuid: string | null;
  /** Milliseconds since the Unix epoch. */
  createdAt: number;
  hostId: string;
  codec: 'zstd';
  encryption: EncryptionMode;
  /** 32 hex digits, or null when not encrypted. */
  keyFingerprint: string | null;
  devices: DeviceInfo[];
  configs: ConfigBlob[];
}

export interface ArchiveHeader extends HeaderFields {
  version: FormatVersion;
  clusterSize: number;
  zeroBlockSize: number;
  headerLength: number;
  /** v2: the stored header tag (zeros when not encrypted); v1: null. */
  tag: Buffer | null;
  /**
   * True while `configs[].data` holds sealed blobs (v2 encrypted, not yet
   * opened with the key); the reader opens them when given the key.
   */
  configsSealed: boolean;
}

/** Clusters of a device: ceil(size / CLUSTER_SIZE). */
export function clusterCountOf(size: number): number {
  return Math.ceil(size / CLUSTER_SIZE);
}

/** Logical length of one cluster (the last one may be partial). */
export function clusterLengthOf(deviceSize: number, cluster: number): number {
  return Math.min(CLUSTER_SIZE, deviceSize - cluster * CLUSTER_SIZE);
}

type ErrorCtor = new (message: string) => Error;

/** Validates a device/config name; `Err` lets the writer throw its own class. */
export function checkName(name: string, what: string, Err: ErrorCtor = FormatError): void {
  const len = Buffer.byteLength(name, 'utf8');
  if (len < 1 || len > MAX_NAME_LENGTH || !NAME_PATTERN.test(name)) {
    throw new Err(`${what} ${JSON.stringify(name)} must be 1..${MAX_NAME_LENGTH} bytes of [A-Za-z0-9._-], not starting with . _ or -`);
  }
}

/** Validates everything the encoder and decoder agree on. */
export function checkHeaderFields(h: HeaderFields, Err: ErrorCtor = FormatError, configOverhead = 0): void {
  if (!isHostId(h.hostId)) throw new Err(`host id ${JSON.stringify(h.hostId.slice(0, 64))} must be ${HOST_ID_RULE}`);
  if (h.devices.length < 1 || h.devices.length > MAX_DEVICES) {
    throw new Err(`an archive holds 1..${MAX_DEVICES} devices, got ${h.devices.length}`);
  }
  const ids = new Set<number>();
  const names = new Set<string>();
  for (const d of h.devices) {
    if (!Number.isInteger(d.id) || d.id < 0 || d.id > 255) throw new Err(`device id ${d.id} is not a u8`);
    if (ids.has(d.id)) throw new Err(`duplicate device id ${d.id}`);
    ids.add(d.id);
    checkName(d.name, 'device name', Err);
    if (names.has(d.name)) throw new Err(`duplicate device name ${d.name}`);
    names.add(d.name);
    if (!Number.isSafeInteger(d.size) || d.size < 1) throw new Err(`device ${d.name}: size ${d.size} must be a positive safe integer`);
  }
  if (h.configs.length > MAX_CONFIGS) throw new Err(`at most ${MAX_CONFIGS} config blobs, got ${h.configs.length}`);
  const cnames = new Set<string>();
  for (const c of h.configs) {
    checkName(c.name, 'config name', Err);
    if (cnames.has(c.name)) throw new Err(`duplicate config name ${c.name}`);
    cnames.add(c.name);
    if (c.data.length > MAX_CONFIG_SIZE + configOverhead) throw new Err(`config ${c.name} is larger than ${MAX_CONFIG_SIZE} bytes`);
  }
  if ((h.encryption === 'none') !== (h.keyFingerprint === null)) {
    throw new Err('a key fingerprint is present exactly when the archive is encrypted');
  }
  if (h.keyFingerprint !== null && !/^[0-9a-f]{32}$/.test(h.keyFingerprint)) throw new Err('bad key fingerprint');
  if (!Number.isSafeInteger(h.createdAt) || h.createdAt < 0) throw new Err('bad creation time');
}

function uuidBytes(u: string | null): Uint8Array {
  return parseUuid(u ?? NIL_UUID);
}

/**
 * Encodes a v2 header. With `key` (an encrypted archive) the config blobs are
 * sealed and the header tag is computed under the key (docs/FORMAT.md
 * "Version 2"); without, the tag is zeros.
 */
export function encodeHeader(h: HeaderFields, key?: Buffer): Buffer {
  checkHeaderFields(h, FormatError);
  if ((key !== undefined) !== (h.encryption !== 'none')) throw new FormatError('internal: an encrypted header needs the key, a plain one none');
  const configs = key === undefined ? h.configs : h.configs.map((c) => ({ name: c.name, data: sealConfig(key, h.uuid, c.name, c.data) }));
  const host = Buffer.from(h.hostId, 'utf8');
  let size = HEADER_FIXED_SIZE + host.length;
  for (const d of h.devices) size += 1 + 1 + 8 + Buffer.byteLength(d.name, 'utf8');
  for (const c of configs) size += 1 + 4 + Buffer.byteLength(c.name, 'utf8') + c.data.length;
  size += TAG_SIZE + SHA256_SIZE;
  if (size > MAX_HEADER_SIZE) throw new FormatError(`header would be ${size} bytes, limit ${MAX_HEADER_SIZE}`);
  const w = new ByteWriter(size);
  w.bytes(HEADER_MAGIC).u16(FORMAT_V2).u16(0).u32(size);
  w.bytes(uuidBytes(h.uuid)).bytes(uuidBytes(h.parentUuid));
  w.u64(h.createdAt).u32(CLUSTER_SIZE).u32(ZERO_BLOCK_SIZE);
  w.u8(CODEC_ZSTD).u8(h.encryption === 'none' ? ENCRYPTION_NONE : ENCRYPTION_AES_256_GCM);
  w.u8(h.devices.length).u8(host.length).u16(configs.length).u16(0);
  w.bytes(h.keyFingerprint === null ? Buffer.alloc(FINGERPRINT_SIZE) : Buffer.from(h.keyFingerprint, 'hex'));
  w.bytes(host);
  for (const d of h.devices) {
    const name = Buffer.from(d.name, 'utf8');
    w.u8(d.id).u8(name.length).u64(d.size).bytes(name);
  }
  for (const c of configs) {
    const name = Buffer.from(c.name, 'utf8');
    w.u8(name.length).u32(c.data.length).bytes(name).bytes(c.data);
  }
  const tagAt = size - TAG_SIZE - SHA256_SIZE;
  w.bytes(key === undefined ? Buffer.alloc(TAG_SIZE) : headerTag(macKey(key, h.uuid), w.buf.subarray(0, tagAt)));
  w.bytes(sha256(w.buf.subarray(0, size - SHA256_SIZE)));
  return w.done();
}

/** The stored header tag of an encoded v2 header. */
export function headerTagOf(encoded: Buffer): Buffer {
  return encoded.subarray(encoded.length - SHA256_SIZE - TAG_SIZE, encoded.length - SHA256_SIZE);
}

/**
 * Decodes and validates a complete header. The checksum is checked first, so
 * any later complaint is about a header written that way, not about damage.
 */
export function decodeHeader(buf: Buffer): ArchiveHeader {
  if (buf.length < HEADER_FIXED_SIZE + SHA256_SIZE) throw new FormatError(`archive header: ${buf.length} bytes is too short`);
  if (!buf.subarray(0, HEADER_MAGIC.length).equals(HEADER_MAGIC)) {
    throw new FormatError('not a cowstream archive (bad header magic)');
  }
  const version = buf.readUInt16LE(8);
  if (version !== FORMAT_V1 && version !== FORMAT_V2) {
    throw new FormatError(`unsupported archive format version ${version} (this reader knows ${FORMAT_V1} and ${FORMAT_V2})`);
  }
  const len = buf.readUInt32LE(12);
  if (len !== buf.length) throw new FormatError(`archive header: length field ${len} != ${buf.length} bytes read`);
  checkSha256(buf.subarray(0, len - SHA256_SIZE), buf.subarray(len - SHA256_SIZE), 'archive header');
  const tagSize = version === FORMAT_V2 ? TAG_SIZE : 0;
  if (len < HEADER_FIXED_SIZE + tagSize + SHA256_SIZE) throw new FormatError(`archive header: ${len} bytes is too short`);

  const r = new ByteReader(buf.subarray(0, len - SHA256_SIZE - tagSize), 'archive header');
  r.bytes(HEADER_MAGIC.length);
  r.u16();
  r.zeros(2, 'flags');
  r.u32();
  const uuidRaw = r.bytes(UUID_SIZE);
  const parentRaw = r.bytes(UUID_SIZE);
  const createdAt = r.u64('creation time');
  const clusterSize = r.u32();
  const zeroBlockSize = r.u32();
  if (clusterSize !== CLUSTER_SIZE) throw new FormatError(`archive header: cluster size ${clusterSize} (v1 requires ${CLUSTER_SIZE})`);
  if (zeroBlockSize !== ZERO_BLOCK_SIZE) throw new FormatError(`archive header: zero-block size ${zeroBlockSize} (v1 requires ${ZERO_BLOCK_SIZE})`);
  const codec = r.u8();
  if (codec !== CODEC_ZSTD) throw new FormatError(`archive header: unknown codec id ${codec}`);
  const enc = r.u8();
  if (enc !== ENCRYPTION_NONE && enc !== ENCRYPTION_AES_256_GCM) throw new FormatError(`archive header: unknown encryption mode ${enc}`);
  const deviceCount = r.u8();
  const hostLen = r.u8();
  const configCount = r.u16();
  r.zeros(2, 'reserved');
  if (deviceCount < 1) throw new FormatError('archive header: no devices');
  if (configCount > MAX_CONFIGS) throw new FormatError(`archive header: ${configCount} configs (limit ${MAX_CONFIGS})`);
  if (hostLen < 1) throw new FormatError('archive header: empty host id');
  const fp = r.bytes(FINGERPRINT_SIZE);
  const hostId = r.utf8(hostLen, 'host id');
  const devices: DeviceInfo[] = [];
  for (let i = 0; i < deviceCount; i++) {
    const id = r.u8();
    const nameLen = r.u8();
    const size = r.u64('device size');
    const name = r.utf8(nameLen, 'device name');
    devices.push({ id, name, size });
  }
  const configs: ConfigBlob[] = [];
  for (let i = 0; i < configCount; i++) {
    const nameLen = r.u8();
    const dataLen = r.u32();
    const name = r.utf8(nameLen, 'config name');
    // r.bytes() checks dataLen against the bytes actually present before copying.
    const data = Buffer.from(r.bytes(dataLen));
    configs.push({ name, data });
  }
  r.expectEnd();
  const tag = version === FORMAT_V2 ? Buffer.from(buf.subarray(len - SHA256_SIZE - TAG_SIZE, len - SHA256_SIZE)) : null;
  const sealed = version === FORMAT_V2 && enc !== ENCRYPTION_NONE;
  if (version === FORMAT_V2 && enc === ENCRYPTION_NONE && !(tag as Buffer).every((b) => b === 0)) {
    throw new FormatError('archive header: header tag set but not encrypted');
  }
  const parentUuid = parentRaw.every((b) => b === 0) ? null : stringifyUuid(parentRaw);
  if (uuidRaw.every((b) => b === 0)) throw new FormatError('archive header: nil archive UUID');
  const fields: HeaderFields = {
    uuid: stringifyUuid(uuidRaw),
    parentUuid,
    createdAt,
    hostId,
    codec: 'zstd',
    encryption: enc === ENCRYPTION_NONE ? 'none' : 'aes-256-gcm',
    keyFingerprint: enc === ENCRYPTION_NONE ? null : Buffer.from(fp).toString('hex'),
    devices,
    configs,
  };
  if (enc === ENCRYPTION_NONE && !fp.every((b) => b === 0)) throw new FormatError('archive header: key fingerprint set but not encrypted');
  checkHeaderFields(fields, FormatError, sealed ? SEALED_CONFIG_OVERHEAD : 0);
  return { ...fields, version, clusterSize, zeroBlockSize, headerLength: len, tag, configsSealed: sealed && configs.length > 0 };
}
