/**
 * Minimal NBD client for the CBW bench and NBD-level stress (not a product
 * client): fixed newstyle, NBD_OPT_EXPORT_NAME, simple replies, WRITE / TRIM /
 * WRITE_ZEROES with many requests in flight.
 */
import { Socket, connect } from 'node:net';

export class NbdReplyError extends Error {
  constructor(readonly errno: number) {
    super(`NBD error ${errno}`);
  }
}

/**
 * A minimal NBD client (fixed newstyle, NBD_OPT_EXPORT_NAME, simple replies)
 * good enough to time WRITE round trips with several requests in flight.
 */
export class MiniNbdClient {
  private buf: Buffer = Buffer.alloc(0);
  private waiters: { n: number; resolve: (b: Buffer) => void }[] = [];
  private pending = new Map<bigint, { resolve: () => void; reject: (e: Error) => void }>();
  private handle = 1n;
  private transmission = false;
  size = 0;

  private constructor(private readonly sock: Socket) {
    sock.setNoDelay(true);
    sock.on('data', (d: Buffer) => {
      this.buf = this.buf.length ? Buffer.concat([this.buf, d]) : d;
      this.pump();
    });
    sock.on('error', (e) => this.failAll(e));
    sock.on('close', () => this.failAll(new Error('NBD connection closed')));
  }

  static async connect(host: string, port: number, exportName: string): Promise<MiniNbdClient> {
    const sock = await new Promise<Socket>((res, rej) => {
      const s = connect({ host, port }, () => res(s));
      s.once('error', rej);
    });
    const c = new MiniNbdClient(sock);
    const hello = await c.readN(18); // NBDMAGIC, IHAVEOPT, handshake flags
    if (hello.readBigUInt64BE(0) !== 0x4e42444d41474943n) throw new Error('not an NBD server');
    const flags = Buffer.alloc(4);
    flags.writeUInt32BE(0b11); // FIXED_NEWSTYLE | NO_ZEROES
    sock.write(flags);
    const name = Buffer.from(exportName);
    const opt = Buffer.alloc(16);
    opt.writeBigUInt64BE(0x49484156454f5054n, 0);
    opt.writeUInt32BE(1, 8); // NBD_OPT_EXPORT_NAME
    opt.writeUInt32BE(name.length, 12);
    sock.write(Buffer.concat([opt, name]));
    const info = await c.readN(10); // size u64 + transmission flags u16 (NO_ZEROES: no padding)
    c.size = Number(info.readBigUInt64BE(0));
    c.transmission = true;
    c.pump();
    return c;
  }

  private readN(n: number): Promise<Buffer> {
    return new Promise((resolve) => {
      this.waiters.push({ n, resolve });
      this.pump();
    });
  }

  private pump(): void {
    while (this.waiters.length && this.buf.length >= this.waiters[0]!.n) {
      const w = this.waiters.shift()!;
      const out = this.buf.subarray(0, w.n);
      this.buf = this.buf.subarray(w.n);
      w.resolve(out);
    }
    if (!this.transmission || this.waiters.length) return;
    while (this.buf.length >= 16) {
      const magic = this.buf.readUInt32BE(0);
      if (magic !== 0x67446698) return this.failAll(new Error(`unexpected reply magic ${magic.toString(16)}`));
      const error = this.buf.readUInt32BE(4);
      const h = this.buf.readBigUInt64BE(8);
      this.buf = this.buf.subarray(16);
      const p = this.pending.get(h);
      this.pending.delete(h);
      if (!p) continue;
      if (error) p.reject(new NbdReplyError(error));
      else p.resolve();
    }
  }

  private failAll(e: Error): void {
    for (const p of this.pending.values()) p.reject(e);
    this.pending.clear();
  }

  /** Sends one request without a reply payload (WRITE carries `data`). */
  private command(type: number, offset: number, length: number, data?: Buffer): Promise<void> {
    const h = this.handle++;
    const req = Buffer.alloc(28);
    req.writeUInt32BE(0x25609513, 0);
    req.writeUInt16BE(0, 4);
    req.writeUInt16BE(type, 6);
    req.writeBigUInt64BE(h, 8);
    req.writeBigUInt64BE(BigInt(offset), 16);
    req.writeUInt32BE(length, 24);
    return new Promise((resolve, reject) => {
      this.pending.set(h, { resolve, reject });
      this.sock.write(data ? Buffer.concat([req, data]) : req);
    });
  }

  write(offset: number, data: Buffer): Promise<void> {
    return this.command(1, offset, data.length, data); // NBD_CMD_WRITE
  }

  trim(offset: number, length: number): Promise<void> {
    return this.command(4, offset, length); // NBD_CMD_TRIM
  }

  writeZeroes(offset: number, length: number): Promise<void> {
    return this.command(6, offset, length); // NBD_CMD_WRITE_ZEROES
  }

  /** NBD error value of a rejected request (e.g. 5 = EIO), or null. */
  static errnoOf(err: unknown): number | null {
    return err instanceof NbdReplyError ? err.errno : null;
  }

  async close(): Promise<void> {
    const req = Buffer.alloc(28);
    req.writeUInt32BE(0x25609513, 0);
    req.writeUInt16BE(2, 6); // NBD_CMD_DISC
    this.sock.end(req);
    await new Promise((res) => this.sock.once('close', res));
  }
}

