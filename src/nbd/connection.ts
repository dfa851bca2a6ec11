/**
 * One NBD client connection: fixed-newstyle handshake, then the transmission
 * phase with concurrent request processing. Never throws out of `done`: any
 * protocol violation or socket failure ends in a clean (logged) close.
 */
import type { Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';
import { describeError, NbdProtocolError } from '../errors.js';
import type { BlockDevice } from '../device/types.js';
import { baseAllocation } from './block-status.js';
import { nbdErrnoFor, type NbdOpKind } from './errors.js';
import {
  NBD_CMD_BLOCK_STATUS, NBD_CMD_CACHE, NBD_CMD_DISC, NBD_CMD_FLAG_DF, NBD_CMD_FLAG_FUA, NBD_CMD_FLAG_NO_HOLE,
  NBD_CMD_FLAG_REQ_ONE, NBD_CMD_FLUSH, NBD_CMD_READ, NBD_CMD_TRIM, NBD_CMD_WRITE, NBD_CMD_WRITE_ZEROES, NBD_EINVAL,
  NBD_EIO, NBD_ENOSPC, NBD_EPERM, NBD_FLAG_C_FIXED_NEWSTYLE, NBD_FLAG_C_NO_ZEROES, NBD_FLAG_CAN_MULTI_CONN,
  NBD_FLAG_FIXED_NEWSTYLE, NBD_FLAG_HAS_FLAGS, NBD_FLAG_NO_ZEROES, NBD_FLAG_READ_ONLY, NBD_FLAG_SEND_CACHE,
  NBD_FLAG_SEND_DF, NBD_FLAG_SEND_FLUSH, NBD_FLAG_SEND_FUA, NBD_FLAG_SEND_TRIM, NBD_FLAG_SEND_WRITE_ZEROES,
  NBD_INFO_DESCRIPTION, NBD_INFO_NAME, NBD_META_BASE_ALLOCATION, NBD_OPTS_MAGIC,
  NBD_OPT_ABORT, NBD_OPT_EXPORT_NAME, NBD_OPT_GO, NBD_OPT_INFO, NBD_OPT_LIST, NBD_OPT_LIST_META_CONTEXT,
  NBD_OPT_SET_META_CONTEXT, NBD_OPT_STRUCTURED_REPLY, NBD_OPTION_HEADER_SIZE, NBD_REP_ACK, NBD_REP_ERR_INVALID,
  NBD_OPT_STARTTLS, NBD_REP_ERR_TLS_REQD, NBD_REP_ERR_TOO_BIG, NBD_REP_ERR_UNKNOWN, NBD_REP_ERR_UNSUP, NBD_REP_INFO, NBD_REP_META_CONTEXT, NBD_REP_SERVER,
  NBD_REQUEST_MAGIC, NBD_REQUEST_SIZE, commandName, decodeInfoRequest, decodeMetaContextRequest,
  decodeOptionHeader, decodeRequest, encodeBlockStatusChunk, encodeExportNameReply, encodeInfoBlockSize,
  encodeInfoExport, encodeInfoString, encodeMetaContextReply, encodeOffsetDataHeader, encodeOptionReply,
  encodeRepServer, encodeServerGreeting, encodeSimpleReply, encodeStructuredDone, encodeStructuredError,
  optionName, type NbdRequest,
} from './protocol.js';
import { NbdConnectionClosedError, SocketReader } from './socket-reader.js';
import type { NbdExport, NbdExportSource, NbdLogger } from './types.js';
import type { TlsUpgrade } from './tls.js';

export interface ConnectionLimits {
  maxRequestBytes: number;
  maxInFlight: number;
  maxInFlightBytes: number;
  handshakeTimeoutMs: number;
  /** Close a connection in transmission after this long without traffic and with nothing in flight (0: never). */
  idleTimeoutMs: number;
  /** Largest option payload we read; strings are <= 4096 bytes, so 64 KiB is generous. */
  maxOptionBytes: number;
}

export interface ConnectionContext {
  /** Server-wide counters, updated by every connection. */
  stats: { requests: number; requestsFailed: number };
  exports: NbdExportSource;
  defaultExport?: string;
  limits: ConnectionLimits;
  logger: NbdLogger;
  /** STARTTLS support; absent: NOTLS mode. */
  tls?: {
    mode: 'require' | 'allow';
    upgrade: TlsUpgrade;
    /**
     * Called once TLS is up with the authenticated identity; false closes the
     * connection (e.g. that identity already holds its share of connections).
     */
    onAuthenticated?: (conn: NbdConnection, identity: string | null) => boolean;
  };
}

/** Metadata context id we hand out for base:allocation (any nonzero opaque value). */
const BASE_ALLOCATION_ID = 1;
const PREFERRED_BLOCK = 4096;
const CLOSE_GRACE_MS = 5000;

interface Selected {
  name: string;
  exp: NbdExport;
}

export class NbdConnection {
  readonly done: Promise<void>;
  private reader: SocketReader;
  /** The client's stream: the TCP/Unix socket, or the TLS socket over it after STARTTLS. */
  private socket: Socket | TLSSocket;
  private tlsUp = false;
  private readonly log: NbdLogger;
  private readonly fields: Record<string, unknown>;
  private phaseValue: 'handshake' | 'transmission' = 'handshake';
  private stopping = false;

  // negotiated state
  private noZeroes = false;
  private structured = false;
  private metaExport: string | null = null;
  private exportName = '';
  private exp: NbdExport | null = null;
  private size = 0;
  private minBlock = 1;
  private blockStatus = false;

  // in-flight accounting (backpressure)
  private inflight = 0;
  private inflightBytes = 0;
  private readonly tasks = new Set<Promise<void>>();
  private wakers: Array<() => void> = [];

  constructor(
    private readonly raw: Socket,
    private readonly ctx: ConnectionContext,
    readonly id: number,
  ) {
    this.log = ctx.logger;
    this.socket = raw;
    this.fields = { conn: id, remote: raw.remoteAddress ?? 'unix' };
    this.reader = new SocketReader(raw);
    this.done = this.run();
  }

  /** 'handshake' until the client picked an export, then 'transmission'. */
  get phase(): 'handshake' | 'transmission' {
    return this.phaseValue;
  }

  /** Stops taking requests, lets in-flight ones finish and reply, then closes. */
  shutdown(): Promise<void> {
    this.stopping = true;
    this.reader.abort(new NbdConnectionClosedError('server shutting down'));
    // Nothing is in flight before transmission; this also ends a TLS handshake in progress.
    if (this.phaseValue === 'handshake') this.raw.destroy();
    this.wake();
    return this.done;
  }

  private async run(): Promise<void> {
    const timer = setTimeout(() => {
      this.log.warn('nbd: handshake timeout, closing connection', this.fields);
      this.reader.abort(new NbdConnectionClosedError('handshake timeout'));
      // Also ends a TLS handshake in progress (it reads from the raw socket, not the reader).
      this.raw.destroy();
    }, this.ctx.limits.handshakeTimeoutMs);
    timer.unref();
    try {
      this.send(encodeServerGreeting(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES));
      const go = await this.handshake();
      clearTimeout(timer);
      if (go) await this.transmission();
    } catch (err) {
      if (this.stopping || err instanceof NbdConnectionClosedError) {
        this.log.debug?.(`nbd: connection ended: ${describeError(err)}`, this.fields);
      } else {
        this.log.warn(`nbd: closing connection: ${describeError(err)}`, this.fields);
      }
    } finally {
      clearTimeout(timer);
      // Spec: "the server SHOULD wait for inflight requests to be serviced".
      while (this.tasks.size > 0) await Promise.allSettled([...this.tasks]);
      await this.closeSocket();
    }
  }

  // ---------------------------------------------------------------- handshake

  /** Returns true when transmission should start, false on NBD_OPT_ABORT. */
  private async handshake(): Promise<boolean> {
    const clientFlags = (await this.reader.read(4)).readUInt32BE(0);
    // "the server MUST drop the TCP connection if the client sets an unknown flag"
    if ((clientFlags & ~(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES)) !== 0) {
      throw new NbdProtocolError(`unknown client flags 0x${clientFlags.toString(16)}`);
    }
    this.noZeroes = (clientFlags & NBD_FLAG_C_NO_ZEROES) !== 0;

    for (;;) {
      const hdr = decodeOptionHeader(await this.reader.read(NBD_OPTION_HEADER_SIZE));
      if (hdr.magic !== NBD_OPTS_MAGIC) throw new NbdProtocolError('bad option magic (expected IHAVEOPT)');
      const opt = hdr.option;
      if (hdr.length > this.ctx.limits.maxOptionBytes) {
        // EXPORT_NAME cannot return an error, so the spec leaves only a disconnect.
        if (opt === NBD_OPT_EXPORT_NAME) throw new NbdProtocolError(`export name of ${hdr.length} bytes`);
        await this.reader.skip(hdr.length);
        this.optReply(opt, NBD_REP_ERR_TOO_BIG, `option data of ${hdr.length} bytes is too large`);
        continue;
      }
      const data = await this.reader.read(hdr.length);
      this.log.debug?.(`nbd: option ${optionName(opt)} (${hdr.length} bytes)`, this.fields);
      if (this.ctx.tls?.mode === 'require' && !this.tlsUp && opt !== NBD_OPT_STARTTLS && opt !== NBD_OPT_ABORT) {
        // FORCEDTLS: EXPORT_NAME cannot be answered with an error, so the session ends.
        if (opt === NBD_OPT_EXPORT_NAME) throw new NbdProtocolError('NBD_OPT_EXPORT_NAME before STARTTLS; TLS is required');
        this.optReply(opt, NBD_REP_ERR_TLS_REQD, 'TLS is required: send NBD_OPT_STARTTLS first');
        continue;
      }
      switch (opt) {
        case NBD_OPT_STARTTLS:
          await this.startTls(data);
          break;
        case NBD_OPT_EXPORT_NAME: {
          const sel = this.resolve(data.toString('utf8'));
          // "If the chosen export does not exist ... the server MUST terminate the session."
          if (!sel) throw new NbdProtocolError(`NBD_OPT_EXPORT_NAME: unknown export '${data.toString('utf8')}'`);
          this.enter(sel);
          this.send(encodeExportNameReply(this.size, this.transmissionFlags(sel.exp), this.noZeroes));
          return true;
        }
        case NBD_OPT_ABORT:
          this.optReply(opt, NBD_REP_ACK);
          return false;
        case NBD_OPT_LIST:
          if (data.length !== 0) {
            this.optReply(opt, NBD_REP_ERR_INVALID, 'NBD_OPT_LIST takes no data');
            break;
          }
          for (const name of this.ctx.exports.keys()) {
            this.optReply(opt, NBD_REP_SERVER, encodeRepServer(name, this.ctx.exports.get(name)?.description));
          }
          this.optReply(opt, NBD_REP_ACK);
          break;
        case NBD_OPT_INFO:
        case NBD_OPT_GO:
          if (this.infoOrGo(opt, data)) return true;
          break;
        case NBD_OPT_STRUCTURED_REPLY:
          if (data.length !== 0) {
            this.optReply(opt, NBD_REP_ERR_INVALID, 'NBD_OPT_STRUCTURED_REPLY takes no data');
            break;
          }
          this.structured = true;
          this.optReply(opt, NBD_REP_ACK);
          break;
        case NBD_OPT_LIST_META_CONTEXT:
        case NBD_OPT_SET_META_CONTEXT:
          this.metaContext(opt, data);
          break;
        default:
          this.optReply(opt, NBD_REP_ERR_UNSUP, `option ${optionName(opt)} is not supported`);
      }
    }
  }

  /**
   * NBD_OPT_STARTTLS: ACK, then the TLS handshake on the same socket; option
   * haggling goes on over TLS (proto.md "TLS support"). Without TLS configured
   * this is NOTLS mode, where UNSUP is the allowed answer.
   */
  private async startTls(data: Buffer): Promise<void> {
    const tls = this.ctx.tls;
    if (!tls) {
      this.optReply(NBD_OPT_STARTTLS, NBD_REP_ERR_UNSUP, 'TLS is not configured on this server');
      return;
    }
    if (this.tlsUp || data.length !== 0) {
      this.optReply(NBD_OPT_STARTTLS, NBD_REP_ERR_INVALID, this.tlsUp ? 'TLS is already active' : 'NBD_OPT_STARTTLS takes no data');
      return;
    }
    // The client must wait for our ACK before its TLS ClientHello; bytes read
    // ahead now would be plaintext smuggled into the TLS session.
    const ahead = this.reader.detach();
    if (ahead.some((b) => b.length > 0)) throw new NbdProtocolError('data after NBD_OPT_STARTTLS before the TLS handshake');
    this.optReply(NBD_OPT_STARTTLS, NBD_REP_ACK);
    // Wrapped in the same tick as the ACK is queued, so no ClientHello byte
    // can reach the plaintext reader.
    const { socket, identity } = await tls.upgrade(this.raw);
    this.socket = socket;
    this.tlsUp = true;
    this.reader = new SocketReader(socket);
    this.fields.tls = `${socket.getProtocol() ?? 'TLS'}${identity ? ` ${identity}` : ''}`;
    this.log.debug?.('nbd: TLS established', this.fields);
    if (tls.onAuthenticated && !tls.onAuthenticated(this, identity)) {
      throw new NbdProtocolError(`TLS peer ${identity ?? '(anonymous)'} is over its connection limit`);
    }
  }

  private infoOrGo(opt: number, data: Buffer): boolean {
    let req;
    try {
      req = decodeInfoRequest(data);
    } catch (err) {
      this.optReply(opt, NBD_REP_ERR_INVALID, describeError(err));
      return false;
    }
    const sel = this.resolve(req.name);
    if (!sel) {
      this.optReply(opt, NBD_REP_ERR_UNKNOWN, `export '${req.name}' not found`);
      return false;
    }
    const size = sel.exp.device.size;
    const min = this.minBlockOf(sel.exp);
    this.optReply(opt, NBD_REP_INFO, encodeInfoExport(size, this.transmissionFlags(sel.exp)));
    // Always advertise sizes (the server MAY send unrequested info); our
    // constraints are the defaults for min=1, so clients that ignore it are fine.
    const max = Math.max(min, Math.floor(this.ctx.limits.maxRequestBytes / min) * min);
    this.optReply(opt, NBD_REP_INFO, encodeInfoBlockSize(min, Math.max(PREFERRED_BLOCK, min), max));
    if (req.infos.includes(NBD_INFO_NAME)) this.optReply(opt, NBD_REP_INFO, encodeInfoString(NBD_INFO_NAME, sel.name));
    if (req.infos.includes(NBD_INFO_DESCRIPTION) && sel.exp.description !== undefined) {
      this.optReply(opt, NBD_REP_INFO, encodeInfoString(NBD_INFO_DESCRIPTION, sel.exp.description));
    }
    this.optReply(opt, NBD_REP_ACK);
    if (opt !== NBD_OPT_GO) return false;
    this.blockStatus = this.metaExport !== null && this.metaExport === req.name;
    this.enter(sel);
    return true;
  }

  private metaContext(opt: number, data: Buffer): void {
    const isSet = opt === NBD_OPT_SET_META_CONTEXT;
    // "Issuing this command replaces all previously-set metadata contexts (including when this command fails)"
    if (isSet) this.metaExport = null;
    if (!this.structured) {
      this.optReply(opt, NBD_REP_ERR_INVALID, 'structured replies must be negotiated first');
      return;
    }
    let req;
    try {
      req = decodeMetaContextRequest(data);
    } catch (err) {
      this.optReply(opt, NBD_REP_ERR_INVALID, describeError(err));
      return;
    }
    if (!this.resolve(req.name)) {
      this.optReply(opt, NBD_REP_ERR_UNKNOWN, `export '${req.name}' not found`);
      return;
    }
    let match: boolean;
    if (isSet) match = req.queries.includes(NBD_META_BASE_ALLOCATION);
    else match = req.queries.length === 0 || req.queries.some((q) => q === 'base:' || q === NBD_META_BASE_ALLOCATION);
    if (match) {
      this.optReply(opt, NBD_REP_META_CONTEXT, encodeMetaContextReply(isSet ? BASE_ALLOCATION_ID : 0, NBD_META_BASE_ALLOCATION));
      if (isSet) this.metaExport = req.name;
    }
    this.optReply(opt, NBD_REP_ACK);
  }

  private resolve(name: string): Selected | null {
    const key = name === '' && this.ctx.defaultExport !== undefined ? this.ctx.defaultExport : name;
    const exp = this.ctx.exports.get(key);
    return exp ? { name: key, exp } : null;
  }

  private enter(sel: Selected): void {
    this.exportName = sel.name;
    this.exp = sel.exp;
    this.size = sel.exp.device.size;
    this.minBlock = this.minBlockOf(sel.exp);
    this.fields.export = sel.name;
    this.log.debug?.('nbd: entering transmission', this.fields);
  }

  private isReadOnly(exp: NbdExport): boolean {
    return exp.readOnly === true || exp.device.readOnly;
  }

  private minBlockOf(exp: NbdExport): number {
    const m = exp.minBlockSize ?? 1;
    // proto.md: MUST be a power of 2 and not larger than 2^16.
    const ok = Number.isInteger(m) && m >= 1 && m <= 65536 && (m & (m - 1)) === 0;
    return ok ? m : 1;
  }

  private transmissionFlags(exp: NbdExport): number {
    let f = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA | NBD_FLAG_SEND_CACHE;
    if (this.isReadOnly(exp)) f |= NBD_FLAG_READ_ONLY;
    else f |= NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES;
    // We always answer a READ with a single OFFSET_DATA chunk, so DF is free;
    // the spec forbids the flag without structured replies.
    if (this.structured) f |= NBD_FLAG_SEND_DF;
    if (exp.multiConn ?? true) f |= NBD_FLAG_CAN_MULTI_CONN;
    return f;
  }

  private optReply(opt: number, type: number, data?: Buffer | string): void {
    const payload = typeof data === 'string' ? Buffer.from(data, 'utf8').subarray(0, 4096) : data;
    this.send(encodeOptionReply(opt, type, payload));
  }

  // ------------------------------------------------------------- transmission

  private async transmission(): Promise<void> {
    this.phaseValue = 'transmission';
    this.armIdleTimeout();
    const max = this.ctx.limits.maxRequestBytes;
    for (;;) {
      await this.waitUntil(() => this.inflight < this.ctx.limits.maxInFlight);
      await this.waitDrain();
      if (this.stopping) return;
      const hb = await this.reader.readOrEof(NBD_REQUEST_SIZE);
      if (!hb) {
        this.log.debug?.('nbd: client closed the connection', this.fields);
        return;
      }
      const req = decodeRequest(hb);
      this.ctx.stats.requests++;
      if (req.magic !== NBD_REQUEST_MAGIC) {
        throw new NbdProtocolError(`bad request magic 0x${req.magic.toString(16)}`);
      }
      if (req.type === NBD_CMD_DISC) {
        this.log.debug?.('nbd: NBD_CMD_DISC', this.fields);
        return;
      }
      let payload: Buffer | undefined;
      let budget = 0;
      if (req.type === NBD_CMD_WRITE) {
        if (req.length > max) {
          // We will not buffer it, and cannot resync without reading it: reply
          // EINVAL, then hard-disconnect (allowed for a DoS-sized payload).
          this.replyError(req, NBD_EINVAL, `write of ${req.length} bytes exceeds the maximum ${max}`);
          throw new NbdProtocolError(`NBD_CMD_WRITE length ${req.length} exceeds maxRequestBytes ${max}`);
        }
        budget = req.length;
        await this.acquireBytes(budget);
        try {
          payload = await this.reader.read(req.length);
        } catch (err) {
          this.releaseBytes(budget);
          throw err;
        }
      } else if (req.type === NBD_CMD_READ && req.length <= max) {
        budget = req.length;
        await this.acquireBytes(budget);
      }
      this.startTask(req, payload, budget);
    }
  }

  /**
   * No traffic either way for idleTimeoutMs and no request in flight: the
   * connection is closed, so idle connections cannot hold the server's slots.
   */
  private armIdleTimeout(): void {
    const ms = this.ctx.limits.idleTimeoutMs;
    if (ms <= 0) return;
    this.socket.setTimeout(ms, () => {
      if (this.inflight > 0 || this.stopping) return; // a slow device is not an idle client
      this.log.info?.('nbd: idle timeout, closing connection', this.fields);
      this.stopping = true;
      this.reader.abort(new NbdConnectionClosedError('idle timeout'));
      this.wake();
    });
  }

  private startTask(req: NbdRequest, payload: Buffer | undefined, budget: number): void {
    this.inflight++;
    const task: Promise<void> = this.execute(req, payload)
      .catch((err) => this.log.warn(`nbd: unexpected failure handling ${commandName(req.type)}: ${describeError(err)}`, this.fields))
      .finally(() => {
        this.inflight--;
        this.tasks.delete(task);
        this.releaseBytes(budget);
      });
    this.tasks.add(task);
  }

  private async execute(req: NbdRequest, payload: Buffer | undefined): Promise<void> {
    const exp = this.exp as NbdExport;
    const type = req.type;
    const allowed = this.allowedFlags(type);
    if (allowed === null) {
      this.replyError(req, NBD_EINVAL, `unknown command ${type}`);
      return;
    }
    if ((req.flags & ~allowed) !== 0) {
      this.replyError(req, NBD_EINVAL, `flags 0x${req.flags.toString(16)} not valid for ${commandName(type)}`);
      return;
    }
    const writes = type === NBD_CMD_WRITE || type === NBD_CMD_WRITE_ZEROES || type === NBD_CMD_TRIM;
    if (writes && this.isReadOnly(exp)) {
      this.replyError(req, NBD_EPERM, `export '${this.exportName}' is read-only`);
      return;
    }
    if (type === NBD_CMD_FLUSH) {
      // offset/length are reserved (MUST be zero); tolerate nonzero values.
      await this.run1(req, 'other', (dev) => dev.flush());
      return;
    }
    const end = req.offset + BigInt(req.length);
    if (end > BigInt(this.size)) {
      const errno = type === NBD_CMD_WRITE || type === NBD_CMD_WRITE_ZEROES ? NBD_ENOSPC : NBD_EINVAL;
      this.replyError(req, errno, `range [${req.offset}, ${end}) is beyond the export size ${this.size}`);
      return;
    }
    if (this.minBlock > 1 && (req.offset % BigInt(this.minBlock) !== 0n || req.length % this.minBlock !== 0)) {
      this.replyError(req, NBD_EINVAL, `request not aligned to the minimum block size ${this.minBlock}`);
      return;
    }
    if (type === NBD_CMD_READ && req.length > this.ctx.limits.maxRequestBytes) {
      this.replyError(req, NBD_EINVAL, `read of ${req.length} bytes exceeds the maximum block size ${this.ctx.limits.maxRequestBytes}`);
      return;
    }
    const off = Number(req.offset); // < size, so a safe integer
    const len = req.length;
    const fua = (req.flags & NBD_CMD_FLAG_FUA) !== 0;
    switch (type) {
      case NBD_CMD_READ:
        await this.doRead(req, off, len);
        return;
      case NBD_CMD_WRITE:
        await this.run1(req, 'write', (dev) => (len > 0 ? dev.write(off, payload as Buffer, { fua }) : undefined));
        return;
      case NBD_CMD_WRITE_ZEROES: {
        const mayTrim = (req.flags & NBD_CMD_FLAG_NO_HOLE) === 0;
        // No payload, so memory is not at stake; we accept lengths above the
        // advertised maximum rather than fail clients that split differently.
        await this.run1(req, 'write', (dev) => (len > 0 ? dev.writeZeroes(off, len, { fua, mayTrim }) : undefined));
        return;
      }
      case NBD_CMD_TRIM:
        await this.run1(req, 'trim', async (dev) => {
          if (len > 0) await dev.trim(off, len);
          if (fua) await dev.flush();
        });
        return;
      case NBD_CMD_CACHE:
        // A pure hint; the range was validated. No-op is allowed by the spec.
        this.replyOk(req);
        return;
      case NBD_CMD_BLOCK_STATUS:
        if (!this.blockStatus) {
          this.replyError(req, NBD_EINVAL, 'no metadata context was negotiated');
          return;
        }
        if (len === 0) {
          this.replyError(req, NBD_EINVAL, 'zero-length block status request');
          return;
        }
        await this.doBlockStatus(req, off, len);
        return;
      default:
        this.replyError(req, NBD_EINVAL, `unknown command ${type}`);
    }
  }

  /** Command flags valid per command (NBD_EINVAL otherwise), or null for unknown commands. */
  private allowedFlags(type: number): number | null {
    switch (type) {
      case NBD_CMD_READ:
        return NBD_CMD_FLAG_FUA | (this.structured ? NBD_CMD_FLAG_DF : 0);
      case NBD_CMD_WRITE:
      case NBD_CMD_FLUSH:
      case NBD_CMD_TRIM:
      case NBD_CMD_CACHE:
        return NBD_CMD_FLAG_FUA;
      case NBD_CMD_WRITE_ZEROES:
        return NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_NO_HOLE;
      case NBD_CMD_BLOCK_STATUS:
        return NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_REQ_ONE;
      default:
        return null;
    }
  }

  private async doRead(req: NbdRequest, off: number, len: number): Promise<void> {
    let data: Buffer;
    try {
      const dev = (this.exp as NbdExport).device;
      // The reply is only sent: a device's shared view saves a copy per read.
      data = len > 0 ? await (dev.readShared ? dev.readShared(off, len) : dev.read(off, len)) : Buffer.alloc(0);
      if (data.length !== len) throw new NbdProtocolError(`device returned ${data.length} of ${len} bytes`);
    } catch (err) {
      this.deviceFailed(req, err, 'read');
      return;
    }
    if (this.structured) {
      // One OFFSET_DATA chunk flagged DONE: the data is complete in memory, so
      // no error can arise while it is transmitted (proto.md allows this).
      if (len === 0) this.send(encodeStructuredDone(req.cookie));
      else this.send(encodeOffsetDataHeader(req.cookie, req.offset, len, true), data);
    } else {
      this.send(encodeSimpleReply(0, req.cookie), data);
    }
  }

  /** base:allocation from the device's map (src/nbd/block-status.ts); a failing map is an error reply. */
  private async doBlockStatus(req: NbdRequest, off: number, len: number): Promise<void> {
    let extents;
    try {
      extents = await baseAllocation((this.exp as NbdExport).device, {
        offset: off,
        length: len,
        reqOne: (req.flags & NBD_CMD_FLAG_REQ_ONE) !== 0,
        granularity: this.minBlock,
      });
    } catch (err) {
      this.deviceFailed(req, err, 'read');
      return;
    }
    this.send(encodeBlockStatusChunk(req.cookie, BASE_ALLOCATION_ID, extents, true));
  }

  private async run1(req: NbdRequest, kind: NbdOpKind, fn: (dev: BlockDevice) => Promise<void> | undefined): Promise<void> {
    try {
      // Read the device now, not at handshake: an agent may have swapped it.
      await fn((this.exp as NbdExport).device);
    } catch (err) {
      this.deviceFailed(req, err, kind);
      return;
    }
    this.replyOk(req);
  }

  private deviceFailed(req: NbdRequest, err: unknown, kind: NbdOpKind): void {
    const errno = nbdErrnoFor(err, kind);
    const msg = `${commandName(req.type)} at ${req.offset}+${req.length}: ${describeError(err)}`;
    if (errno === NBD_EIO) this.log.warn(`nbd: device error: ${msg}`, this.fields);
    else this.log.debug?.(`nbd: request failed (errno ${errno}): ${msg}`, this.fields);
    this.replyError(req, errno, msg);
  }

  private replyOk(req: NbdRequest): void {
    // A simple reply is allowed for any non-READ request even with structured replies.
    this.send(encodeSimpleReply(0, req.cookie));
  }

  private replyError(req: NbdRequest, errno: number, message: string): void {
    this.ctx.stats.requestsFailed++;
    this.log.debug?.(`nbd: ${commandName(req.type)} -> errno ${errno}: ${message}`, this.fields);
    if (this.structured) this.send(encodeStructuredError(req.cookie, errno, message));
    else this.send(encodeSimpleReply(errno, req.cookie));
  }

  /**
   * Writes one whole message. All parts are queued in one synchronous block,
   * so bytes of different replies never interleave; cork lets them go out in
   * one writev.
   */
  private send(...parts: Buffer[]): void {
    const s = this.socket;
    if (s.destroyed || s.writableEnded) return;
    s.cork();
    for (const p of parts) s.write(p);
    s.uncork();
  }

  // ------------------------------------------------------------- backpressure

  private async acquireBytes(n: number): Promise<void> {
    // A single request is always admitted when nothing else is in flight.
    await this.waitUntil(
      () => this.inflightBytes === 0 || this.inflightBytes + n <= this.ctx.limits.maxInFlightBytes,
    );
    this.inflightBytes += n;
  }

  private releaseBytes(n: number): void {
    this.inflightBytes -= n;
    this.wake();
  }

  private async waitUntil(cond: () => boolean): Promise<void> {
    while (!cond() && !this.stopping) {
      await new Promise<void>((resolve) => this.wakers.push(resolve));
    }
  }

  private wake(): void {
    const w = this.wakers;
    this.wakers = [];
    for (const f of w) f();
  }

  /** Stop reading requests while the client is not reading our replies. */
  private async waitDrain(): Promise<void> {
    const s = this.socket;
    if (!s.writableNeedDrain || s.destroyed) return;
    await new Promise<void>((resolve) => {
      const done = (): void => {
        s.off('drain', done);
        s.off('close', done);
        resolve();
      };
      s.on('drain', done);
      s.on('close', done);
    });
  }

  private async closeSocket(): Promise<void> {
    const s = this.socket;
    this.reader.abort(new NbdConnectionClosedError('connection closing'));
    if (s.destroyed) return;
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => s.destroy(), CLOSE_GRACE_MS);
      timer.unref();
      s.once('close', () => {
        clearTimeout(timer);
        resolve();
      });
      // Flush what we queued (e.g. a final error reply), then close fully;
      // hard closes included, so a client still gets its last reply.
      s.end(() => s.destroy());
      s.resume();
    });
  }
}
