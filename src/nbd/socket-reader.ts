import type { Socket } from 'node:net';
import { NbdProtocolError } from '../errors.js';

/** The peer closed the connection (cleanly or not) before a read completed. */
export class NbdConnectionClosedError extends NbdProtocolError {
  override readonly code: string = 'NBD_CLOSED';
}

interface Waiter {
  n: number;
  eofOk: boolean;
  resolve: (b: Buffer | null) => void;
  reject: (e: Error) => void;
}

/**
 * Exact-length reads from a socket with bounded buffering.
 *
 * Read-ahead stops at `highWater` bytes (the socket is paused, so TCP flow
 * control pushes back on the client) unless a pending read needs more than
 * that; callers bound each read size themselves (maxRequestBytes), so memory
 * per connection is bounded by configuration, never by a wire field.
 */
export class SocketReader {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private waiter: Waiter | null = null;
  private ended = false;
  private failure: Error | null = null;

  private readonly listeners = {
    data: (chunk: Buffer): void => this.onData(chunk),
    end: (): void => this.onEnd(),
    error: (err: Error): void => this.fail(err),
  };

  /**
   * `push`: the socket delivers its bytes through a net `onread` callback
   * (a reused buffer, no 'data' events); the owner hands them to push().
   */
  constructor(
    private readonly socket: Socket,
    private readonly highWater = 256 * 1024,
    opts: { push?: boolean } = {},
  ) {
    if (opts.push !== true) socket.on('data', this.listeners.data);
    socket.on('end', this.listeners.end);
    socket.on('close', this.listeners.end);
    socket.on('error', this.listeners.error);
  }

  /** Bytes from an `onread` callback; copied, since the socket reuses that buffer. */
  push(bytes: Buffer): void {
    this.onData(Buffer.from(bytes));
  }

  /**
   * Hands the socket over to another consumer (the NBD client's reply
   * parser after the handshake): stops listening and returns the bytes read
   * ahead but not consumed, in order. Later reads fail.
   */
  detach(): Buffer[] {
    if (this.waiter) throw new NbdProtocolError('cannot detach a socket reader with a read pending');
    this.socket.off('data', this.listeners.data);
    this.socket.off('end', this.listeners.end);
    this.socket.off('close', this.listeners.end);
    this.socket.off('error', this.listeners.error);
    const rest = this.chunks;
    this.chunks = [];
    this.buffered = 0;
    this.failure ??= new NbdProtocolError('socket reader detached');
    return rest;
  }

  /** Reads exactly n bytes; rejects with NbdConnectionClosedError on EOF. */
  async read(n: number): Promise<Buffer> {
    const b = await this.readInternal(n, false);
    return b as Buffer;
  }

  /** Like read, but resolves null if the stream ends cleanly before any byte of this read. */
  readOrEof(n: number): Promise<Buffer | null> {
    return this.readInternal(n, true);
  }

  /** Discards n bytes, holding at most 64 KiB at a time. */
  async skip(n: number): Promise<void> {
    let left = n;
    while (left > 0) {
      const k = Math.min(left, 64 * 1024);
      await this.read(k);
      left -= k;
    }
  }

  /** Fails the pending and all future reads (used on shutdown / hard close). */
  abort(err: Error): void {
    this.fail(err);
  }

  private readInternal(n: number, eofOk: boolean): Promise<Buffer | null> {
    if (this.waiter) return Promise.reject(new NbdProtocolError('concurrent reads on one connection'));
    if (this.failure) return Promise.reject(this.failure);
    if (this.buffered >= n) return Promise.resolve(this.take(n));
    if (this.ended) {
      try {
        return Promise.resolve(this.eofResult(n, eofOk));
      } catch (err) {
        return Promise.reject(err as Error);
      }
    }
    return new Promise<Buffer | null>((resolve, reject) => {
      this.waiter = { n, eofOk, resolve, reject };
      if (this.socket.isPaused()) this.socket.resume();
    });
  }

  private eofResult(n: number, eofOk: boolean): Buffer | null {
    if (eofOk && this.buffered === 0) return null;
    throw new NbdConnectionClosedError(`connection closed with ${this.buffered} of ${n} bytes of a message received`);
  }

  private onData(chunk: Buffer): void {
    if (this.failure) return;
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    const w = this.waiter;
    if (w && this.buffered >= w.n) {
      this.waiter = null;
      w.resolve(this.take(w.n));
    }
    if (this.buffered >= Math.max(this.highWater, this.waiter?.n ?? 0)) this.socket.pause();
  }

  private onEnd(): void {
    if (this.ended) return;
    this.ended = true;
    const w = this.waiter;
    if (!w) return;
    this.waiter = null;
    try {
      w.resolve(this.eofResult(w.n, w.eofOk));
    } catch (err) {
      w.reject(err as Error);
    }
  }

  private fail(err: Error): void {
    if (!this.failure) this.failure = err;
    this.chunks = [];
    this.buffered = 0;
    const w = this.waiter;
    this.waiter = null;
    w?.reject(this.failure);
  }

  private take(n: number): Buffer {
    let out: Buffer;
    const first = this.chunks[0];
    if (first !== undefined && first.length >= n) {
      out = first.subarray(0, n);
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
    } else {
      out = Buffer.allocUnsafe(n);
      let pos = 0;
      while (pos < n) {
        const c = this.chunks[0] as Buffer;
        const k = Math.min(c.length, n - pos);
        c.copy(out, pos, 0, k);
        pos += k;
        if (k === c.length) this.chunks.shift();
        else this.chunks[0] = c.subarray(k);
      }
    }
    this.buffered -= n;
    if (this.buffered < this.highWater && this.socket.isPaused() && !this.ended) this.socket.resume();
    return out;
  }
}
