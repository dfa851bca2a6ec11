/**
 * NBD wire constants, encoders and decoders, shared by the server and any
 * client. Everything is big-endian (network byte order) as the spec requires.
 * Reference: NetworkBlockDevice/nbd doc/proto.md ("The NBD protocol").
 *
 * Pure functions only: no sockets, no I/O. Decoders validate lengths against
 * the bytes actually present and throw NbdProtocolError; they never allocate
 * a buffer sized by a field read from the wire.
 */
import { NbdProtocolError } from '../errors.js';

// ---- Magic numbers -------------------------------------------------------
/** 'NBDMAGIC', the INIT_PASSWD sent first by the server. */
export const NBD_INIT_MAGIC = 0x4e42444d41474943n;
/** 'IHAVEOPT': newstyle server magic and the prefix of every client option. */
export const NBD_OPTS_MAGIC = 0x49484156454f5054n;
/** Magic of fixed-newstyle option replies. */
export const NBD_REP_MAGIC = 0x3e889045565a9n;
export const NBD_REQUEST_MAGIC = 0x25609513;
export const NBD_SIMPLE_REPLY_MAGIC = 0x67446698;
export const NBD_STRUCTURED_REPLY_MAGIC = 0x668e33ef;

// ---- Handshake flags (server, 16 bits) and client flags (32 bits) ---------
export const NBD_FLAG_FIXED_NEWSTYLE = 1 << 0;
export const NBD_FLAG_NO_ZEROES = 1 << 1;
export const NBD_FLAG_C_FIXED_NEWSTYLE = 1 << 0;
export const NBD_FLAG_C_NO_ZEROES = 1 << 1;

// ---- Transmission flags (16 bits) ------------------------------------------
export const NBD_FLAG_HAS_FLAGS = 1 << 0;
export const NBD_FLAG_READ_ONLY = 1 << 1;
export const NBD_FLAG_SEND_FLUSH = 1 << 2;
export const NBD_FLAG_SEND_FUA = 1 << 3;
export const NBD_FLAG_ROTATIONAL = 1 << 4;
export const NBD_FLAG_SEND_TRIM = 1 << 5;
export const NBD_FLAG_SEND_WRITE_ZEROES = 1 << 6;
export const NBD_FLAG_SEND_DF = 1 << 7;
export const NBD_FLAG_CAN_MULTI_CONN = 1 << 8;
export const NBD_FLAG_SEND_RESIZE = 1 << 9;
export const NBD_FLAG_SEND_CACHE = 1 << 10;
export const NBD_FLAG_SEND_FAST_ZERO = 1 << 11;

// ---- Options ---------------------------------------------------------------
export const NBD_OPT_EXPORT_NAME = 1;
export const NBD_OPT_ABORT = 2;
export const NBD_OPT_LIST = 3;
export const NBD_OPT_PEEK_EXPORT = 4;
export const NBD_OPT_STARTTLS = 5;
export const NBD_OPT_INFO = 6;
export const NBD_OPT_GO = 7;
export const NBD_OPT_STRUCTURED_REPLY = 8;
export const NBD_OPT_LIST_META_CONTEXT = 9;
export const NBD_OPT_SET_META_CONTEXT = 10;
export const NBD_OPT_EXTENDED_HEADERS = 11;

// ---- Option reply types ----------------------------------------------------
export const NBD_REP_ACK = 1;
export const NBD_REP_SERVER = 2;
export const NBD_REP_INFO = 3;
export const NBD_REP_META_CONTEXT = 4;
const REP_ERR = 0x80000000;
export const NBD_REP_ERR_UNSUP = REP_ERR + 1;
export const NBD_REP_ERR_POLICY = REP_ERR + 2;
export const NBD_REP_ERR_INVALID = REP_ERR + 3;
export const NBD_REP_ERR_PLATFORM = REP_ERR + 4;
export const NBD_REP_ERR_TLS_REQD = REP_ERR + 5;
export const NBD_REP_ERR_UNKNOWN = REP_ERR + 6;
export const NBD_REP_ERR_SHUTDOWN = REP_ERR + 7;
export const NBD_REP_ERR_BLOCK_SIZE_REQD = REP_ERR + 8;
export const NBD_REP_ERR_TOO_BIG = REP_ERR + 9;

export function isOptionReplyError(replyType: number): boolean {
  return replyType >= REP_ERR;
}

// ---- NBD_INFO types (inside NBD_REP_INFO) ----------------------------------
export const NBD_INFO_EXPORT = 0;
export const NBD_INFO_NAME = 1;
export const NBD_INFO_DESCRIPTION = 2;
export const NBD_INFO_BLOCK_SIZE = 3;

// ---- Commands and command flags --------------------------------------------
export const NBD_CMD_READ = 0;
export const NBD_CMD_WRITE = 1;
export const NBD_CMD_DISC = 2;
export const NBD_CMD_FLUSH = 3;
export const NBD_CMD_TRIM = 4;
export const NBD_CMD_CACHE = 5;
export const NBD_CMD_WRITE_ZEROES = 6;
export const NBD_CMD_BLOCK_STATUS = 7;
export const NBD_CMD_RESIZE = 8;

export const NBD_CMD_FLAG_FUA = 1 << 0;
export const NBD_CMD_FLAG_NO_HOLE = 1 << 1;
export const NBD_CMD_FLAG_DF = 1 << 2;
export const NBD_CMD_FLAG_REQ_ONE = 1 << 3;
export const NBD_CMD_FLAG_FAST_ZERO = 1 << 4;
export const NBD_CMD_FLAG_PAYLOAD_LEN = 1 << 5;

// ---- Structured replies ----------------------------------------------------
export const NBD_REPLY_FLAG_DONE = 1 << 0;
export const NBD_REPLY_TYPE_NONE = 0;
export const NBD_REPLY_TYPE_OFFSET_DATA = 1;
export const NBD_REPLY_TYPE_OFFSET_HOLE = 2;
export const NBD_REPLY_TYPE_BLOCK_STATUS = 5;
export const NBD_REPLY_TYPE_ERROR = (1 << 15) + 1;
export const NBD_REPLY_TYPE_ERROR_OFFSET = (1 << 15) + 2;

export function isReplyTypeError(type: number): boolean {
  return (type & (1 << 15)) !== 0;
}

// ---- base:allocation metadata context --------------------------------------
export const NBD_META_BASE_ALLOCATION = 'base:allocation';
export const NBD_STATE_HOLE = 1 << 0;
export const NBD_STATE_ZERO = 1 << 1;

// ---- Error values (the only ones the spec allows on the wire) --------------
export const NBD_EPERM = 1;
export const NBD_EIO = 5;
export const NBD_ENOMEM = 12;
export const NBD_EINVAL = 22;
export const NBD_ENOSPC = 28;
export const NBD_EOVERFLOW = 75;
export const NBD_ENOTSUP = 95;
export const NBD_ESHUTDOWN = 108;
export const NBD_ERRNOS: ReadonlySet<number> = new Set([
  NBD_EPERM, NBD_EIO, NBD_ENOMEM, NBD_EINVAL, NBD_ENOSPC, NBD_EOVERFLOW, NBD_ENOTSUP, NBD_ESHUTDOWN,
]);

// ---- Sizes and limits ------------------------------------------------------
export const NBD_GREETING_SIZE = 18; // magic + IHAVEOPT + handshake flags
export const NBD_OPTION_HEADER_SIZE = 16; // IHAVEOPT + option + length
export const NBD_OPTION_REPLY_HEADER_SIZE = 20; // magic + option + type + length
export const NBD_REQUEST_SIZE = 28;
export const NBD_SIMPLE_REPLY_SIZE = 16;
export const NBD_STRUCTURED_HEADER_SIZE = 20;
/** Strings (names, messages) MUST be no longer than 4096 bytes (proto.md "Conventions"). */
export const NBD_MAX_STRING = 4096;
/** Clients SHOULD NOT exceed 2^25 bytes per READ/WRITE ("Block size constraints"). */
export const NBD_MAX_REQUEST_DEFAULT = 32 * 1024 * 1024;

// ---- Handshake -------------------------------------------------------------

export function encodeServerGreeting(handshakeFlags: number): Buffer {
  const b = Buffer.alloc(NBD_GREETING_SIZE);
  b.writeBigUInt64BE(NBD_INIT_MAGIC, 0);
  b.writeBigUInt64BE(NBD_OPTS_MAGIC, 8);
  b.writeUInt16BE(handshakeFlags, 16);
  return b;
}

export interface ServerGreeting {
  handshakeFlags: number;
}

export function decodeServerGreeting(b: Buffer): ServerGreeting {
  need(b, NBD_GREETING_SIZE, 'server greeting');
  if (b.readBigUInt64BE(0) !== NBD_INIT_MAGIC) throw new NbdProtocolError('bad NBDMAGIC in server greeting');
  if (b.readBigUInt64BE(8) !== NBD_OPTS_MAGIC) throw new NbdProtocolError('server is not newstyle (no IHAVEOPT)');
  return { handshakeFlags: b.readUInt16BE(16) };
}

export function encodeClientFlags(flags: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(flags >>> 0, 0);
  return b;
}

export function encodeOption(option: number, data: Uint8Array = Buffer.alloc(0)): Buffer {
  const b = Buffer.alloc(NBD_OPTION_HEADER_SIZE + data.length);
  b.writeBigUInt64BE(NBD_OPTS_MAGIC, 0);
  b.writeUInt32BE(option >>> 0, 8);
  b.writeUInt32BE(data.length, 12);
  b.set(data, NBD_OPTION_HEADER_SIZE);
  return b;
}

export interface OptionHeader {
  magic: bigint;
  option: number;
  length: number;
}

export function decodeOptionHeader(b: Buffer): OptionHeader {
  need(b, NBD_OPTION_HEADER_SIZE, 'option header');
  return { magic: b.readBigUInt64BE(0), option: b.readUInt32BE(8), length: b.readUInt32BE(12) };
}

export function encodeOptionReply(option: number, replyType: number, data: Uint8Array = Buffer.alloc(0)): Buffer {
  const b = Buffer.alloc(NBD_OPTION_REPLY_HEADER_SIZE + data.length);
  b.writeBigUInt64BE(NBD_REP_MAGIC, 0);
  b.writeUInt32BE(option >>> 0, 8);
  b.writeUInt32BE(replyType >>> 0, 12);
  b.writeUInt32BE(data.length, 16);
  b.set(data, NBD_OPTION_REPLY_HEADER_SIZE);
  return b;
}

export interface OptionReplyHeader {
  magic: bigint;
  option: number;
  replyType: number;
  length: number;
}

export function decodeOptionReplyHeader(b: Buffer): OptionReplyHeader {
  need(b, NBD_OPTION_REPLY_HEADER_SIZE, 'option reply header');
  const magic = b.readBigUInt64BE(0);
  if (magic !== NBD_REP_MAGIC) throw new NbdProtocolError('bad option reply magic');
  return { magic, option: b.readUInt32BE(8), replyType: b.readUInt32BE(12), length: b.readUInt32BE(16) };
}

/** Reply to NBD_OPT_EXPORT_NAME: size, transmission flags, 124 zero bytes unless NO_ZEROES. */
export function encodeExportNameReply(size: number, transmissionFlags: number, noZeroes: boolean): Buffer {
  const b = Buffer.alloc(10 + (noZeroes ? 0 : 124));
  b.writeBigUInt64BE(BigInt(size), 0);
  b.writeUInt16BE(transmissionFlags, 8);
  return b;
}

/** NBD_REP_SERVER payload: u32 name length, name, then an optional human-readable description. */
export function encodeRepServer(name: string, description?: string): Buffer {
  const n = Buffer.from(name, 'utf8');
  const d = Buffer.from(description ?? '', 'utf8');
  const b = Buffer.alloc(4 + n.length + d.length);
  b.writeUInt32BE(n.length, 0);
  n.copy(b, 4);
  d.copy(b, 4 + n.length);
  return b;
}

export function decodeRepServer(b: Buffer): { name: string; description: string } {
  need(b, 4, 'NBD_REP_SERVER');
  const len = b.readUInt32BE(0);
  if (len > b.length - 4) throw new NbdProtocolError('NBD_REP_SERVER name length exceeds reply');
  return { name: b.toString('utf8', 4, 4 + len), description: b.toString('utf8', 4 + len) };
}

export function encodeInfoExport(size: number, transmissionFlags: number): Buffer {
  const b = Buffer.alloc(12);
  b.writeUInt16BE(NBD_INFO_EXPORT, 0);
  b.writeBigUInt64BE(BigInt(size), 2);
  b.writeUInt16BE(transmissionFlags, 10);
  return b;
}

export function encodeInfoBlockSize(min: number, preferred: number, max: number): Buffer {
  const b = Buffer.alloc(14);
  b.writeUInt16BE(NBD_INFO_BLOCK_SIZE, 0);
  b.writeUInt32BE(min, 2);
  b.writeUInt32BE(preferred, 6);
  b.writeUInt32BE(max, 10);
  return b;
}

/** NBD_INFO_NAME / NBD_INFO_DESCRIPTION payload. */
export function encodeInfoString(infoType: number, s: string): Buffer {
  const str = Buffer.from(s, 'utf8');
  const b = Buffer.alloc(2 + str.length);
  b.writeUInt16BE(infoType, 0);
  str.copy(b, 2);
  return b;
}

export type NbdInfo =
  | { type: typeof NBD_INFO_EXPORT; size: bigint; transmissionFlags: number }
  | { type: typeof NBD_INFO_BLOCK_SIZE; min: number; preferred: number; max: number }
  | { type: typeof NBD_INFO_NAME | typeof NBD_INFO_DESCRIPTION; value: string }
  | { type: number; raw: Buffer };

/** Decodes an NBD_REP_INFO payload (client side). */
export function decodeInfo(b: Buffer): NbdInfo {
  need(b, 2, 'NBD_REP_INFO');
  const type = b.readUInt16BE(0);
  switch (type) {
    case NBD_INFO_EXPORT:
      if (b.length !== 12) throw new NbdProtocolError(`NBD_INFO_EXPORT length ${b.length} != 12`);
      return { type, size: b.readBigUInt64BE(2), transmissionFlags: b.readUInt16BE(10) };
    case NBD_INFO_BLOCK_SIZE:
      if (b.length !== 14) throw new NbdProtocolError(`NBD_INFO_BLOCK_SIZE length ${b.length} != 14`);
      return { type, min: b.readUInt32BE(2), preferred: b.readUInt32BE(6), max: b.readUInt32BE(10) };
    case NBD_INFO_NAME:
    case NBD_INFO_DESCRIPTION:
      return { type, value: b.toString('utf8', 2) };
    default:
      return { type, raw: b.subarray(2) };
  }
}

export interface InfoRequest {
  name: string;
  infos: number[];
}

/** NBD_OPT_INFO / NBD_OPT_GO data: u32 name length, name, u16 count, u16 x count. */
export function encodeInfoRequest(name: string, infos: readonly number[] = []): Buffer {
  const n = Buffer.from(name, 'utf8');
  const b = Buffer.alloc(4 + n.length + 2 + 2 * infos.length);
  b.writeUInt32BE(n.length, 0);
  n.copy(b, 4);
  b.writeUInt16BE(infos.length, 4 + n.length);
  infos.forEach((t, i) => b.writeUInt16BE(t, 6 + n.length + 2 * i));
  return b;
}

export function decodeInfoRequest(b: Buffer): InfoRequest {
  need(b, 6, 'NBD_OPT_INFO/GO data');
  const nameLen = b.readUInt32BE(0);
  // "length of name ... MUST be no larger than the option data length - 6"
  if (nameLen > b.length - 6) throw new NbdProtocolError('export name length exceeds option data');
  if (nameLen > NBD_MAX_STRING) throw new NbdProtocolError('export name longer than 4096 bytes');
  const name = b.toString('utf8', 4, 4 + nameLen);
  const count = b.readUInt16BE(4 + nameLen);
  if (b.length !== 6 + nameLen + 2 * count) {
    throw new NbdProtocolError('information request count does not match option length');
  }
  const infos: number[] = [];
  for (let i = 0; i < count; i++) infos.push(b.readUInt16BE(6 + nameLen + 2 * i));
  return { name, infos };
}

export interface MetaContextRequest {
  name: string;
  queries: string[];
}

/** NBD_OPT_{LIST,SET}_META_CONTEXT data: u32 name length, name, u32 count, (u32 length, query) x count. */
export function encodeMetaContextRequest(name: string, queries: readonly string[]): Buffer {
  const parts: Buffer[] = [];
  const n = Buffer.from(name, 'utf8');
  const head = Buffer.alloc(4);
  head.writeUInt32BE(n.length, 0);
  parts.push(head, n);
  const cnt = Buffer.alloc(4);
  cnt.writeUInt32BE(queries.length, 0);
  parts.push(cnt);
  for (const q of queries) {
    const qb = Buffer.from(q, 'utf8');
    const l = Buffer.alloc(4);
    l.writeUInt32BE(qb.length, 0);
    parts.push(l, qb);
  }
  return Buffer.concat(parts);
}

export function decodeMetaContextRequest(b: Buffer): MetaContextRequest {
  let pos = 0;
  const readString = (what: string): string => {
    if (b.length - pos < 4) throw new NbdProtocolError(`${what}: truncated length`);
    const len = b.readUInt32BE(pos);
    pos += 4;
    if (len > b.length - pos) throw new NbdProtocolError(`${what}: length exceeds option data`);
    if (len > NBD_MAX_STRING) throw new NbdProtocolError(`${what}: longer than 4096 bytes`);
    const s = b.toString('utf8', pos, pos + len);
    pos += len;
    return s;
  };
  const name = readString('export name');
  if (b.length - pos < 4) throw new NbdProtocolError('meta context request: missing query count');
  const count = b.readUInt32BE(pos);
  pos += 4;
  // Each query needs at least its 4-byte length, so an honest count is bounded
  // by the remaining bytes; check before looping on an untrusted number.
  if (count > (b.length - pos) / 4) throw new NbdProtocolError('meta context query count exceeds option data');
  const queries: string[] = [];
  for (let i = 0; i < count; i++) queries.push(readString('meta context query'));
  if (pos !== b.length) throw new NbdProtocolError('trailing bytes after meta context queries');
  return { name, queries };
}

export function encodeMetaContextReply(id: number, name: string): Buffer {
  const n = Buffer.from(name, 'utf8');
  const b = Buffer.alloc(4 + n.length);
  b.writeUInt32BE(id >>> 0, 0);
  n.copy(b, 4);
  return b;
}

export function decodeMetaContextReply(b: Buffer): { id: number; name: string } {
  need(b, 4, 'NBD_REP_META_CONTEXT');
  return { id: b.readUInt32BE(0), name: b.toString('utf8', 4) };
}

// ---- Transmission ----------------------------------------------------------

export interface NbdRequest {
  magic: number;
  flags: number;
  type: number;
  /** Opaque 64-bit cookie ("handle"), echoed in replies. */
  cookie: bigint;
  /** Unsigned 64-bit offset, kept as bigint: it may exceed 2^53. */
  offset: bigint;
  length: number;
}

export function encodeRequest(r: Omit<NbdRequest, 'magic'> & { magic?: number }): Buffer {
  const b = Buffer.alloc(NBD_REQUEST_SIZE);
  b.writeUInt32BE((r.magic ?? NBD_REQUEST_MAGIC) >>> 0, 0);
  b.writeUInt16BE(r.flags, 4);
  b.writeUInt16BE(r.type, 6);
  b.writeBigUInt64BE(r.cookie, 8);
  b.writeBigUInt64BE(r.offset, 16);
  b.writeUInt32BE(r.length >>> 0, 24);
  return b;
}

export function decodeRequest(b: Buffer): NbdRequest {
  need(b, NBD_REQUEST_SIZE, 'request');
  return {
    magic: b.readUInt32BE(0),
    flags: b.readUInt16BE(4),
    type: b.readUInt16BE(6),
    cookie: b.readBigUInt64BE(8),
    offset: b.readBigUInt64BE(16),
    length: b.readUInt32BE(24),
  };
}

export function encodeSimpleReply(error: number, cookie: bigint): Buffer {
  const b = Buffer.alloc(NBD_SIMPLE_REPLY_SIZE);
  b.writeUInt32BE(NBD_SIMPLE_REPLY_MAGIC, 0);
  b.writeUInt32BE(error >>> 0, 4);
  b.writeBigUInt64BE(cookie, 8);
  return b;
}

export interface SimpleReply {
  error: number;
  cookie: bigint;
}

export function decodeSimpleReply(b: Buffer): SimpleReply {
  need(b, NBD_SIMPLE_REPLY_SIZE, 'simple reply');
  if (b.readUInt32BE(0) !== NBD_SIMPLE_REPLY_MAGIC) throw new NbdProtocolError('bad simple reply magic');
  return { error: b.readUInt32BE(4), cookie: b.readBigUInt64BE(8) };
}

export function encodeStructuredHeader(flags: number, type: number, cookie: bigint, length: number): Buffer {
  const b = Buffer.alloc(NBD_STRUCTURED_HEADER_SIZE);
  b.writeUInt32BE(NBD_STRUCTURED_REPLY_MAGIC, 0);
  b.writeUInt16BE(flags, 4);
  b.writeUInt16BE(type, 6);
  b.writeBigUInt64BE(cookie, 8);
  b.writeUInt32BE(length >>> 0, 16);
  return b;
}

export interface StructuredHeader {
  flags: number;
  type: number;
  cookie: bigint;
  length: number;
}

export function decodeStructuredHeader(b: Buffer): StructuredHeader {
  need(b, NBD_STRUCTURED_HEADER_SIZE, 'structured reply header');
  if (b.readUInt32BE(0) !== NBD_STRUCTURED_REPLY_MAGIC) throw new NbdProtocolError('bad structured reply magic');
  return { flags: b.readUInt16BE(4), type: b.readUInt16BE(6), cookie: b.readBigUInt64BE(8), length: b.readUInt32BE(16) };
}

/** Header + 8-byte offset of an NBD_REPLY_TYPE_OFFSET_DATA chunk; the data follows separately. */
export function encodeOffsetDataHeader(cookie: bigint, offset: bigint, dataLength: number, done: boolean): Buffer {
  const b = Buffer.alloc(NBD_STRUCTURED_HEADER_SIZE + 8);
  encodeStructuredHeader(done ? NBD_REPLY_FLAG_DONE : 0, NBD_REPLY_TYPE_OFFSET_DATA, cookie, 8 + dataLength).copy(b, 0);
  b.writeBigUInt64BE(offset, NBD_STRUCTURED_HEADER_SIZE);
  return b;
}

/** A final NBD_REPLY_TYPE_NONE chunk (success with no payload). */
export function encodeStructuredDone(cookie: bigint): Buffer {
  return encodeStructuredHeader(NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_NONE, cookie, 0);
}

/**
 * An NBD_REPLY_TYPE_ERROR (or ERROR_OFFSET when `offset` is given) chunk.
 * The message is truncated to the 4096-byte string limit (on a UTF-8 boundary).
 */
export function encodeStructuredError(
  cookie: bigint,
  error: number,
  message: string,
  opts: { offset?: bigint; done?: boolean } = {},
): Buffer {
  const msg = truncateUtf8(message, NBD_MAX_STRING);
  const withOffset = opts.offset !== undefined;
  const payloadLen = 6 + msg.length + (withOffset ? 8 : 0);
  const type = withOffset ? NBD_REPLY_TYPE_ERROR_OFFSET : NBD_REPLY_TYPE_ERROR;
  const b = Buffer.alloc(NBD_STRUCTURED_HEADER_SIZE + payloadLen);
  encodeStructuredHeader(opts.done === false ? 0 : NBD_REPLY_FLAG_DONE, type, cookie, payloadLen).copy(b, 0);
  let p = NBD_STRUCTURED_HEADER_SIZE;
  b.writeUInt32BE(error >>> 0, p);
  b.writeUInt16BE(msg.length, p + 4);
  msg.copy(b, p + 6);
  p += 6 + msg.length;
  if (withOffset) b.writeBigUInt64BE(opts.offset as bigint, p);
  return b;
}

export interface StructuredErrorPayload {
  error: number;
  message: string;
  offset?: bigint;
}

export function decodeStructuredError(type: number, payload: Buffer): StructuredErrorPayload {
  need(payload, 6, 'structured error payload');
  const error = payload.readUInt32BE(0);
  const msgLen = payload.readUInt16BE(4);
  const tail = type === NBD_REPLY_TYPE_ERROR_OFFSET ? 8 : 0;
  if (6 + msgLen + tail > payload.length) throw new NbdProtocolError('structured error message length exceeds chunk');
  const message = payload.toString('utf8', 6, 6 + msgLen);
  if (tail) return { error, message, offset: payload.readBigUInt64BE(6 + msgLen) };
  return { error, message };
}

export interface BlockStatusExtent {
  length: number;
  flags: number;
}

export function encodeBlockStatusChunk(
  cookie: bigint,
  contextId: number,
  extents: readonly BlockStatusExtent[],
  done: boolean,
): Buffer {
  const payloadLen = 4 + 8 * extents.length;
  const b = Buffer.alloc(NBD_STRUCTURED_HEADER_SIZE + payloadLen);
  encodeStructuredHeader(done ? NBD_REPLY_FLAG_DONE : 0, NBD_REPLY_TYPE_BLOCK_STATUS, cookie, payloadLen).copy(b, 0);
  b.writeUInt32BE(contextId >>> 0, NBD_STRUCTURED_HEADER_SIZE);
  extents.forEach((e, i) => {
    b.writeUInt32BE(e.length >>> 0, NBD_STRUCTURED_HEADER_SIZE + 4 + 8 * i);
    b.writeUInt32BE(e.flags >>> 0, NBD_STRUCTURED_HEADER_SIZE + 8 + 8 * i);
  });
  return b;
}

export function decodeBlockStatusPayload(b: Buffer): { contextId: number; extents: BlockStatusExtent[] } {
  if (b.length < 12 || (b.length - 4) % 8 !== 0) throw new NbdProtocolError(`bad block status payload length ${b.length}`);
  const extents: BlockStatusExtent[] = [];
  for (let p = 4; p < b.length; p += 8) extents.push({ length: b.readUInt32BE(p), flags: b.readUInt32BE(p + 4) });
  return { contextId: b.readUInt32BE(0), extents };
}

// ---- Names for logs ---------------------------------------------------------

const CMD_NAMES: Record<number, string> = {
  [NBD_CMD_READ]: 'READ',
  [NBD_CMD_WRITE]: 'WRITE',
  [NBD_CMD_DISC]: 'DISC',
  [NBD_CMD_FLUSH]: 'FLUSH',
  [NBD_CMD_TRIM]: 'TRIM',
  [NBD_CMD_CACHE]: 'CACHE',
  [NBD_CMD_WRITE_ZEROES]: 'WRITE_ZEROES',
  [NBD_CMD_BLOCK_STATUS]: 'BLOCK_STATUS',
  [NBD_CMD_RESIZE]: 'RESIZE',
};

export function commandName(type: number): string {
  return CMD_NAMES[type] ?? `CMD_${type}`;
}

const OPT_NAMES: Record<number, string> = {
  [NBD_OPT_EXPORT_NAME]: 'EXPORT_NAME',
  [NBD_OPT_ABORT]: 'ABORT',
  [NBD_OPT_LIST]: 'LIST',
  [NBD_OPT_PEEK_EXPORT]: 'PEEK_EXPORT',
  [NBD_OPT_STARTTLS]: 'STARTTLS',
  [NBD_OPT_INFO]: 'INFO',
  [NBD_OPT_GO]: 'GO',
  [NBD_OPT_STRUCTURED_REPLY]: 'STRUCTURED_REPLY',
  [NBD_OPT_LIST_META_CONTEXT]: 'LIST_META_CONTEXT',
  [NBD_OPT_SET_META_CONTEXT]: 'SET_META_CONTEXT',
  [NBD_OPT_EXTENDED_HEADERS]: 'EXTENDED_HEADERS',
};

export function optionName(option: number): string {
  return OPT_NAMES[option] ?? `OPT_${option}`;
}

// ---- helpers ---------------------------------------------------------------

function need(b: Buffer, n: number, what: string): void {
  if (b.length < n) throw new NbdProtocolError(`${what}: need ${n} bytes, got ${b.length}`);
}

/** UTF-8 bytes of `s`, cut to at most `max` bytes without splitting a code point. */
export function truncateUtf8(s: string, max: number): Buffer {
  const b = Buffer.from(s, 'utf8');
  if (b.length <= max) return b;
  let end = max;
  // Back up over continuation bytes (10xxxxxx) so we cut at a code point start.
  while (end > 0 && (b[end] & 0xc0) === 0x80) end--;
  return b.subarray(0, end);
}
