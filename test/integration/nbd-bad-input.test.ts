/**
 * Malformed and edge-case NBD traffic, driven by a raw socket client. After
 * each case the server must still serve other clients (checked with qemu-io)
 * and must not leak connections.
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { MemoryDevice } from '../../src/device/memory-device.js';
import type { BlockDevice } from '../../src/device/types.js';
import { CbwError, ConfigError } from '../../src/errors.js';
import { NbdErrnoError, NbdListenError } from '../../src/nbd/errors.js';
import {
  NBD_CMD_BLOCK_STATUS, NBD_CMD_CACHE, NBD_CMD_FLAG_DF, NBD_CMD_FLAG_FUA, NBD_CMD_FLAG_NO_HOLE, NBD_CMD_FLAG_REQ_ONE,
  NBD_CMD_DISC, NBD_CMD_FLUSH, NBD_CMD_READ, NBD_CMD_TRIM, NBD_CMD_WRITE, NBD_CMD_WRITE_ZEROES, NBD_EINVAL, NBD_EIO,
  NBD_ENOSPC, NBD_EPERM, NBD_FLAG_READ_ONLY, NBD_FLAG_SEND_DF, NBD_INFO_BLOCK_SIZE, NBD_INFO_DESCRIPTION,
  NBD_INFO_NAME, NBD_OPT_EXPORT_NAME, NBD_OPT_GO, NBD_OPT_INFO, NBD_OPT_LIST, NBD_OPT_LIST_META_CONTEXT,
  NBD_OPT_SET_META_CONTEXT, NBD_OPT_STARTTLS, NBD_REP_ACK, NBD_REP_ERR_INVALID, NBD_REP_ERR_TOO_BIG,
  NBD_REP_ERR_UNKNOWN, NBD_REP_ERR_UNSUP, NBD_REP_INFO, NBD_REP_META_CONTEXT, NBD_REP_SERVER,
  NBD_REPLY_TYPE_BLOCK_STATUS, NBD_REPLY_TYPE_ERROR, NBD_REPLY_TYPE_OFFSET_DATA, decodeBlockStatusPayload, decodeInfo,
  decodeMetaContextReply, decodeRepServer, decodeStructuredError, encodeInfoRequest, encodeMetaContextRequest,
  encodeOption,
} from '../../src/nbd/protocol.js';
import { NbdServer } from '../../src/nbd/server.js';
import type { NbdExport } from '../../src/nbd/types.js';
import { RawNbdClient } from '../helpers/nbd-raw.js';
import { CaptureLogger, qemuIo, waitFor } from '../helpers/nbd-tools.js';

const SIZE = 1024 * 1024;
const MAX = 1024 * 1024; // maxRequestBytes for this server

/** A device whose operations fail with a chosen error (for errno mapping). */
class FailingDevice implements BlockDevice {
  readonly size = SIZE;
  readonly readOnly = false;
  constructor(private readonly err: () => Error) {}
  async read(): Promise<Buffer> { throw this.err(); }
  async write(): Promise<void> { throw this.err(); }
  async writeZeroes(): Promise<void> { throw this.err(); }
  async trim(): Promise<void> { throw this.err(); }
  async flush(): Promise<void> { throw this.err(); }
  async close(): Promise<void> {}
}

/** A device whose reads wait until released (for in-flight / shutdown tests). */
class GatedDevice extends MemoryDevice {
  private gate: Promise<void>;
  release!: () => void;
  constructor(size: number) {
    super(size);
    this.gate = new Promise((r) => (this.release = r));
  }
  override async read(offset: number, length: number): Promise<Buffer> {
    await this.gate;
    return super.read(offset, length);
  }
}

describe('NbdServer bad input and edge cases', () => {
  let dir: string;
  let server: NbdServer;
  let port: number;
  let mem: MemoryDevice;
  const logger = new CaptureLogger();
  const clients: RawNbdClient[] = [];
  const target = (): { port: number } => ({ port });
  const open = async (): Promise<RawNbdClient> => {
    const c = await RawNbdClient.connect(target());
    clients.push(c);
    return c;
  };
  /** The server still works for a well-behaved client. */
  const stillServes = async (): Promise<void> => {
    const r = await qemuIo(`nbd://127.0.0.1:${port}/mem`, ['write -P 0x3c 512k 4k', 'read -P 0x3c 512k 4k']);
    expect(r.ok, r.stdout + r.stderr).toBe(true);
  };

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'cowstream-nbd-bad-'));
    mem = new MemoryDevice(randomBytes(SIZE));
    const exports = new Map<string, NbdExport>([
      ['mem', { device: mem, description: 'memory' }],
      ['ro', { device: new MemoryDevice(SIZE), readOnly: true }],
      ['eio', { device: new FailingDevice(() => new CbwError('copy-before-write timed out', { cause: Object.assign(new Error('disk full'), { code: 'ENOSPC' }) })) }],
      ['enospc', { device: new FailingDevice(() => new NbdErrnoError(NBD_ENOSPC, 'scratch full')) }],
      ['sys', { device: new FailingDevice(() => Object.assign(new Error('quota'), { code: 'EDQUOT' })) }],
      ['aligned', { device: new MemoryDevice(SIZE), minBlockSize: 512 }],
    ]);
    server = new NbdServer({ exports, tcp: { port: 0 }, maxRequestBytes: MAX, maxInFlightPerConnection: 4, logger });
    port = (await server.listen()).tcp!.port;
  });

  afterEach(() => {
    for (const c of clients.splice(0)) c.destroy();
  });

  afterAll(async () => {
    await server?.close();
    await rm(dir, { recursive: true, force: true });
  });

  // ---------------------------------------------------------------- handshake

  it('garbage instead of a handshake: closed, logged, server keeps serving', async () => {
    const c = await open();
    await c.read(18); // greeting
    c.write(Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'));
    expect(await c.closedWithin(3000)).toBe(true);
    expect(logger.warnings.some((w) => /unknown client flags/.test(w))).toBe(true);
    await stillServes();
  });

  it('bad option magic closes the connection', async () => {
    const c = await open();
    await c.greeting();
    c.write(Buffer.alloc(16, 0xee));
    expect(await c.closedWithin(3000)).toBe(true);
    expect(logger.warnings.some((w) => /bad option magic/.test(w))).toBe(true);
  });

  it('unknown options get ERR_UNSUP and haggling continues', async () => {
    const c = await open();
    await c.greeting();
    expect((await c.option(99))[0].replyType).toBe(NBD_REP_ERR_UNSUP);
    expect((await c.option(NBD_OPT_STARTTLS))[0].replyType).toBe(NBD_REP_ERR_UNSUP);
    const list = await c.option(NBD_OPT_LIST);
    const names = list.filter((r) => r.replyType === NBD_REP_SERVER).map((r) => decodeRepServer(r.data));
    expect(names.map((n) => n.name)).toContain('mem');
    expect(names.find((n) => n.name === 'mem')?.description).toBe('memory');
    expect(list.at(-1)?.replyType).toBe(NBD_REP_ACK);
    expect((await c.option(NBD_OPT_LIST, Buffer.from('x'))).at(-1)?.replyType).toBe(NBD_REP_ERR_INVALID);
  });

  it('INFO/GO: unknown export, malformed data, requested infos', async () => {
    const c = await open();
    await c.greeting();
    expect((await c.option(NBD_OPT_GO, encodeInfoRequest('nope')))[0].replyType).toBe(NBD_REP_ERR_UNKNOWN);
    const bad = Buffer.alloc(10);
    bad.writeUInt32BE(1000, 0); // name length beyond the option data
    expect((await c.option(NBD_OPT_INFO, bad))[0].replyType).toBe(NBD_REP_ERR_INVALID);
    expect((await c.option(NBD_OPT_INFO, Buffer.alloc(3)))[0].replyType).toBe(NBD_REP_ERR_INVALID);
    const info = await c.option(NBD_OPT_INFO, encodeInfoRequest('mem', [NBD_INFO_NAME, NBD_INFO_DESCRIPTION, NBD_INFO_BLOCK_SIZE]));
    expect(info.at(-1)?.replyType).toBe(NBD_REP_ACK);
    const infos = info.filter((r) => r.replyType === NBD_REP_INFO).map((r) => decodeInfo(r.data));
    expect(infos).toContainEqual({ type: 0, size: BigInt(SIZE), transmissionFlags: expect.any(Number) });
    expect(infos).toContainEqual({ type: NBD_INFO_NAME, value: 'mem' });
    expect(infos).toContainEqual({ type: NBD_INFO_DESCRIPTION, value: 'memory' });
    expect(infos).toContainEqual({ type: NBD_INFO_BLOCK_SIZE, min: 1, preferred: 4096, max: MAX });
    // still in haggling: GO now works
    expect((await c.option(NBD_OPT_GO, encodeInfoRequest('mem'))).at(-1)?.replyType).toBe(NBD_REP_ACK);
    c.send(NBD_CMD_READ, 0, 16);
    const r = await c.simpleReply(16);
    expect(r.error).toBe(0);
    expect(r.data.equals(await mem.read(0, 16))).toBe(true);
  });

  it('oversized option data gets ERR_TOO_BIG without buffering it', async () => {
    const c = await open();
    await c.greeting();
    expect((await c.option(77, Buffer.alloc(70 * 1024)))[0].replyType).toBe(NBD_REP_ERR_TOO_BIG);
    expect((await c.option(NBD_OPT_GO, encodeInfoRequest('mem'))).at(-1)?.replyType).toBe(NBD_REP_ACK);
  });

  it('EXPORT_NAME of an unknown export terminates the session; a known one works (no zeroes)', async () => {
    const c = await open();
    await c.greeting();
    c.write(encodeOption(NBD_OPT_EXPORT_NAME, Buffer.from('nope')));
    expect(await c.closedWithin(3000)).toBe(true);

    const d = await open();
    await d.greeting();
    d.write(encodeOption(NBD_OPT_EXPORT_NAME, Buffer.from('mem')));
    const reply = await d.read(10);
    expect(reply.readBigUInt64BE(0)).toBe(BigInt(SIZE));
    d.send(NBD_CMD_READ, 100, 8);
    const r = await d.simpleReply(8);
    expect(r.error).toBe(0);
    expect(r.data.equals(await mem.read(100, 8))).toBe(true);
  });

  it('EXPORT_NAME without NO_ZEROES sends the 124 zero bytes', async () => {
    const c = await open();
    await c.greeting({ noZeroes: false });
    c.write(encodeOption(NBD_OPT_EXPORT_NAME, Buffer.from('mem')));
    const reply = await c.read(134);
    expect(reply.subarray(10).every((b) => b === 0)).toBe(true);
    c.send(NBD_CMD_FLUSH, 0, 0);
    expect((await c.simpleReply()).error).toBe(0);
  });

  it('handshake timeout closes an idle client', async () => {
    const s = new NbdServer({ exports: new Map([['m', { device: new MemoryDevice(4096) }]]), tcp: { port: 0 }, handshakeTimeoutMs: 200, logger });
    const p = (await s.listen()).tcp!.port;
    const c = await RawNbdClient.connect({ port: p });
    clients.push(c);
    await c.read(18);
    expect(await c.closedWithin(3000)).toBe(true);
    expect(logger.warnings.some((w) => /handshake timeout/.test(w))).toBe(true);
    await s.close();
  });

  it('maxConnections refuses extra clients', async () => {
    const s = new NbdServer({ exports: new Map([['m', { device: new MemoryDevice(4096) }]]), tcp: { port: 0 }, maxConnections: 2, logger });
    const p = (await s.listen()).tcp!.port;
    const a = await RawNbdClient.connect({ port: p });
    const b = await RawNbdClient.connect({ port: p });
    clients.push(a, b);
    await a.read(18);
    await b.read(18);
    const c = await RawNbdClient.connect({ port: p });
    clients.push(c);
    expect(await c.closedWithin(3000)).toBe(true);
    a.destroy();
    expect(await waitFor(() => s.connectionCount === 1)).toBe(true);
    const d = await RawNbdClient.connect({ port: p });
    clients.push(d);
    expect((await d.handshake('m')).size).toBe(4096n);
    await s.close();
  });

  // ------------------------------------------------------------- transmission

  it('out-of-range requests get EINVAL / ENOSPC and the connection continues', async () => {
    const c = await open();
    await c.handshake('mem');
    c.send(NBD_CMD_READ, SIZE - 10, 20);
    expect((await c.simpleReply(20)).error).toBe(NBD_EINVAL);
    c.send(NBD_CMD_READ, 1n << 63n, 1);
    expect((await c.simpleReply(1)).error).toBe(NBD_EINVAL);
    c.send(NBD_CMD_WRITE, SIZE, 4, { data: Buffer.from('abcd') });
    expect((await c.simpleReply()).error).toBe(NBD_ENOSPC);
    c.send(NBD_CMD_WRITE_ZEROES, SIZE - 1, 2);
    expect((await c.simpleReply()).error).toBe(NBD_ENOSPC);
    c.send(NBD_CMD_TRIM, SIZE, 1);
    expect((await c.simpleReply()).error).toBe(NBD_EINVAL);
    c.send(NBD_CMD_CACHE, SIZE + 4096, 4096);
    expect((await c.simpleReply()).error).toBe(NBD_EINVAL);
    // Still in sync: a valid write/read round-trips.
    c.send(NBD_CMD_WRITE, 8, 4, { data: Buffer.from('wxyz'), flags: NBD_CMD_FLAG_FUA });
    expect((await c.simpleReply()).error).toBe(0);
    c.send(NBD_CMD_READ, 8, 4);
    expect((await c.simpleReply(4)).data.toString()).toBe('wxyz');
  });

  it('unknown command and invalid flags get EINVAL', async () => {
    const c = await open();
    await c.handshake('mem');
    c.send(99, 0, 0);
    expect((await c.simpleReply()).error).toBe(NBD_EINVAL);
    c.send(NBD_CMD_READ, 0, 4, { flags: NBD_CMD_FLAG_NO_HOLE });
    expect((await c.simpleReply(4)).error).toBe(NBD_EINVAL);
    c.send(NBD_CMD_READ, 0, 4, { flags: NBD_CMD_FLAG_DF }); // DF needs structured replies
    expect((await c.simpleReply(4)).error).toBe(NBD_EINVAL);
    c.send(NBD_CMD_WRITE, 0, 4, { flags: 0x8000, data: Buffer.from('zzzz') }); // payload consumed, stream in sync
    expect((await c.simpleReply()).error).toBe(NBD_EINVAL);
    c.send(NBD_CMD_BLOCK_STATUS, 0, 4096); // no meta context negotiated
    expect((await c.simpleReply()).error).toBe(NBD_EINVAL);
    c.send(NBD_CMD_READ, 0, 4);
    const r = await c.simpleReply(4);
    expect(r.error).toBe(0);
    expect(r.data.toString()).not.toBe('zzzz');
  });

  it('READ larger than maxRequestBytes: EINVAL, connection continues', async () => {
    const c = await open();
    await c.handshake('mem');
    c.send(NBD_CMD_READ, 0, MAX + 1);
    expect((await c.simpleReply(MAX + 1)).error).toBe(NBD_EINVAL);
    c.send(NBD_CMD_READ, 0, 4);
    expect((await c.simpleReply(4)).error).toBe(0);
  });

  it('huge WRITE length: EINVAL reply, then a clean disconnect; others unaffected', async () => {
    const c = await open();
    await c.handshake('mem');
    const cookie = c.send(NBD_CMD_WRITE, 0, 0xffffffff);
    const r = await c.simpleReply();
    expect(r).toMatchObject({ error: NBD_EINVAL, cookie });
    expect(await c.closedWithin(3000)).toBe(true);
    expect(logger.warnings.some((w) => /exceeds maxRequestBytes/.test(w))).toBe(true);
    await stillServes();
  });

  it('bad request magic: disconnect', async () => {
    const c = await open();
    await c.handshake('mem');
    c.send(NBD_CMD_READ, 0, 4, { magic: 0x12345678 });
    expect(await c.closedWithin(3000)).toBe(true);
    expect(logger.warnings.some((w) => /bad request magic/.test(w))).toBe(true);
  });

  it('truncated request and client vanishing mid-payload: no leak, no crash', async () => {
    const before = server.connectionCount;
    const a = await open();
    await a.handshake('mem');
    a.write(Buffer.alloc(10, 0x25)); // 10 of 28 header bytes
    a.socket.end();
    const b = await open();
    await b.handshake('mem');
    b.send(NBD_CMD_WRITE, 0, 65536, { data: Buffer.alloc(1000, 0x99) });
    await new Promise((r) => setTimeout(r, 50));
    b.destroy();
    const d = await open();
    await d.greeting();
    d.destroy(); // vanishes during haggling
    expect(await waitFor(() => server.connectionCount <= before)).toBe(true);
    // The half-sent write never reached the device.
    expect((await mem.read(0, 1000)).every((x) => x === 0x99)).toBe(false);
    await stillServes();
  });

  it('read-only export: WRITE/TRIM/WRITE_ZEROES get EPERM, READ works', async () => {
    const c = await open();
    const { flags } = await c.handshake('ro');
    expect(flags & NBD_FLAG_READ_ONLY).toBe(NBD_FLAG_READ_ONLY);
    c.send(NBD_CMD_WRITE, 0, 4, { data: Buffer.from('abcd') });
    expect((await c.simpleReply()).error).toBe(NBD_EPERM);
    c.send(NBD_CMD_TRIM, 0, 4096);
    expect((await c.simpleReply()).error).toBe(NBD_EPERM);
    c.send(NBD_CMD_WRITE_ZEROES, 0, 4096);
    expect((await c.simpleReply()).error).toBe(NBD_EPERM);
    c.send(NBD_CMD_READ, 0, 4);
    expect(await c.simpleReply(4)).toMatchObject({ error: 0, data: Buffer.alloc(4) });
  });

  it('device errors map to NBD errno: CbwError→EIO, NbdErrnoError→its errno, EDQUOT→ENOSPC', async () => {
    const c = await open();
    await c.handshake('eio');
    c.send(NBD_CMD_WRITE, 0, 4, { data: Buffer.from('abcd') });
    expect((await c.simpleReply()).error).toBe(NBD_EIO);
    c.send(NBD_CMD_READ, 0, 4);
    expect((await c.simpleReply(4)).error).toBe(NBD_EIO);
    c.send(NBD_CMD_FLUSH, 0, 0);
    expect((await c.simpleReply()).error).toBe(NBD_EIO);

    const d = await open();
    await d.handshake('enospc');
    d.send(NBD_CMD_WRITE_ZEROES, 0, 4096);
    expect((await d.simpleReply()).error).toBe(NBD_ENOSPC);

    const e = await open();
    await e.handshake('sys');
    e.send(NBD_CMD_WRITE, 0, 1, { data: Buffer.from('x') });
    expect((await e.simpleReply()).error).toBe(NBD_ENOSPC);

    // A qemu client sees the EIO as an I/O error, and the server keeps going.
    const q = await qemuIo(`nbd://127.0.0.1:${port}/eio`, ['read 0 4k']);
    expect(q.ok).toBe(false);
    expect(q.stdout + q.stderr).toMatch(/Input\/output error/);
    await stillServes();
  });

  it('minimum block size is advertised and enforced', async () => {
    const c = await open();
    await c.greeting();
    const info = await c.option(NBD_OPT_GO, encodeInfoRequest('aligned', [NBD_INFO_BLOCK_SIZE]));
    const bs = info.filter((r) => r.replyType === NBD_REP_INFO).map((r) => decodeInfo(r.data)).find((i) => i.type === NBD_INFO_BLOCK_SIZE);
    expect(bs).toEqual({ type: NBD_INFO_BLOCK_SIZE, min: 512, preferred: 4096, max: MAX });
    c.send(NBD_CMD_READ, 100, 512);
    expect((await c.simpleReply(512)).error).toBe(NBD_EINVAL);
    c.send(NBD_CMD_READ, 512, 512);
    expect((await c.simpleReply(512)).error).toBe(0);
  });

  // --------------------------------------------------------- structured replies

  it('structured replies: READ as OFFSET_DATA, errors as ERROR chunks with a message', async () => {
    const c = await open();
    const { flags } = await c.handshake('mem', { structured: true });
    expect(flags & NBD_FLAG_SEND_DF).toBe(NBD_FLAG_SEND_DF);
    const cookie = c.send(NBD_CMD_READ, 4096, 1000, { flags: NBD_CMD_FLAG_DF });
    const ok = await c.structuredReply();
    expect(ok.chunks).toHaveLength(1);
    const chunk = ok.chunks[0];
    expect(chunk).toMatchObject({ type: NBD_REPLY_TYPE_OFFSET_DATA, cookie, flags: 1 });
    expect(chunk.payload.readBigUInt64BE(0)).toBe(4096n);
    expect(chunk.payload.subarray(8).equals(await mem.read(4096, 1000))).toBe(true);

    c.send(NBD_CMD_READ, SIZE, 1);
    const err = await c.structuredReply();
    expect(err.chunks[0].type).toBe(NBD_REPLY_TYPE_ERROR);
    const e = decodeStructuredError(err.chunks[0].type, err.chunks[0].payload);
    expect(e.error).toBe(NBD_EINVAL);
    expect(e.message).toMatch(/beyond the export size/);

    c.send(NBD_CMD_READ, 0, 0); // zero-length read: success, no data chunk
    expect((await c.structuredReply()).chunks[0]).toMatchObject({ type: 0, flags: 1 });
    c.send(NBD_CMD_WRITE_ZEROES, 0, 16, { flags: NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FUA });
    expect((await c.structuredReply()).simple?.error).toBe(0);
    expect((await mem.read(0, 16)).every((x) => x === 0)).toBe(true);
  });

  it('meta contexts: LIST/SET base:allocation and BLOCK_STATUS', async () => {
    const c = await open();
    await c.greeting();
    // Before structured replies: invalid.
    expect((await c.option(NBD_OPT_SET_META_CONTEXT, encodeMetaContextRequest('mem', ['base:allocation'])))[0].replyType).toBe(NBD_REP_ERR_INVALID);
    c.write(encodeOption(8));
    expect((await c.optionReply()).replyType).toBe(NBD_REP_ACK);
    const list = await c.option(NBD_OPT_LIST_META_CONTEXT, encodeMetaContextRequest('mem', []));
    expect(list.filter((r) => r.replyType === NBD_REP_META_CONTEXT).map((r) => decodeMetaContextReply(r.data).name)).toEqual(['base:allocation']);
    const none = await c.option(NBD_OPT_LIST_META_CONTEXT, encodeMetaContextRequest('mem', ['qemu:dirty-bitmap:x']));
    expect(none.map((r) => r.replyType)).toEqual([NBD_REP_ACK]);
    const badQuery = Buffer.concat([encodeMetaContextRequest('mem', []).subarray(0, 7), Buffer.from([0, 0, 0, 5, 0, 0, 0, 200])]);
    expect((await c.option(NBD_OPT_SET_META_CONTEXT, badQuery))[0].replyType).toBe(NBD_REP_ERR_INVALID);
    const set = await c.option(NBD_OPT_SET_META_CONTEXT, encodeMetaContextRequest('mem', ['base:allocation']));
    const ctx = decodeMetaContextReply(set[0].data);
    expect(ctx.name).toBe('base:allocation');
    expect((await c.option(NBD_OPT_GO, encodeInfoRequest('mem'))).at(-1)?.replyType).toBe(NBD_REP_ACK);
    c.send(NBD_CMD_BLOCK_STATUS, 4096, 65536, { flags: NBD_CMD_FLAG_REQ_ONE });
    const bs = await c.structuredReply();
    expect(bs.chunks[0].type).toBe(NBD_REPLY_TYPE_BLOCK_STATUS);
    expect(decodeBlockStatusPayload(bs.chunks[0].payload)).toEqual({ contextId: ctx.id, extents: [{ length: 65536, flags: 0 }] });
  });

  // ---------------------------------------------------- concurrency / shutdown

  it('pipelined requests beyond the in-flight limit all get matching replies', async () => {
    const c = await open();
    await c.handshake('mem');
    const n = 64;
    const expected = new Map<bigint, Buffer>();
    for (let i = 0; i < n; i++) {
      const data = randomBytes(4096);
      c.send(NBD_CMD_WRITE, 600 * 1024 + i * 4096, 4096, { data, cookie: BigInt(1000 + i) });
      expected.set(BigInt(1000 + i), data);
    }
    const seen = new Set<bigint>();
    for (let i = 0; i < n; i++) {
      const r = await c.simpleReply();
      expect(r.error).toBe(0);
      seen.add(r.cookie);
    }
    expect(seen).toEqual(new Set(expected.keys()));
    for (let i = 0; i < n; i++) {
      c.send(NBD_CMD_READ, 600 * 1024 + i * 4096, 4096, { cookie: BigInt(5000 + i) });
    }
    // Replies may come in any order; each carries exactly its own data.
    for (let i = 0; i < n; i++) {
      const r = await c.simpleReply(4096);
      const idx = Number(r.cookie) - 5000;
      expect(r.data.equals(expected.get(BigInt(1000 + idx)) as Buffer)).toBe(true);
    }
    c.send(NBD_CMD_DISC, 0, 0);
    expect(await c.closedWithin(3000)).toBe(true);
  });

  it('a client that does not read replies is throttled, and then gets every reply intact', async () => {
    const c = await open();
    await c.handshake('mem');
    const n = 40; // 40 MiB of replies: far beyond socket buffers
    const before = server.stats().requests;
    c.socket.pause(); // really stop reading: the kernel buffers fill up
    for (let i = 0; i < n; i++) c.send(NBD_CMD_READ, 0, MAX, { cookie: BigInt(i) });
    await new Promise((r) => setTimeout(r, 200));
    // The server stopped taking requests while its replies were not drained.
    expect(server.stats().requests - before).toBeLessThan(n / 2);
    c.socket.resume();
    const whole = await mem.read(0, MAX);
    const seen = new Set<bigint>();
    for (let i = 0; i < n; i++) {
      const r = await c.simpleReply(MAX);
      expect(r.error).toBe(0);
      expect(r.data.equals(whole)).toBe(true);
      seen.add(r.cookie);
    }
    expect(seen.size).toBe(n);
  });

  it('swapping an export\'s device takes effect for connected clients', async () => {
    const first = new MemoryDevice(Buffer.alloc(4096, 1));
    const exp: NbdExport = { device: first };
    const s = new NbdServer({ exports: new Map([['swap', exp]]), tcp: { port: 0 }, logger });
    const p = (await s.listen()).tcp!.port;
    const c = await RawNbdClient.connect({ port: p });
    clients.push(c);
    await c.handshake('swap');
    c.send(NBD_CMD_READ, 0, 4);
    expect((await c.simpleReply(4)).data).toEqual(Buffer.alloc(4, 1));
    exp.device = new MemoryDevice(Buffer.alloc(4096, 2));
    c.send(NBD_CMD_READ, 0, 4);
    expect((await c.simpleReply(4)).data).toEqual(Buffer.alloc(4, 2));
    await s.close();
  });

  it('listen errors are typed; a stale Unix socket file is replaced, a live one is not', async () => {
    const s1 = new NbdServer({ exports: new Map(), tcp: { port: 0 }, logger });
    const p = (await s1.listen()).tcp!.port;
    const s2 = new NbdServer({ exports: new Map(), tcp: { port: p }, logger });
    await expect(s2.listen()).rejects.toBeInstanceOf(NbdListenError);
    await s1.close();

    const path = join(dir, 'stale.sock');
    const live = new NbdServer({ exports: new Map(), unixSocket: path, logger });
    await live.listen();
    const other = new NbdServer({ exports: new Map(), unixSocket: path, logger });
    await expect(other.listen()).rejects.toThrow(/in use/);
    // Simulate a crash: a socket file nobody listens on.
    const { createServer } = await import('node:net');
    await live.close();
    const dead = createServer();
    await new Promise<void>((r) => dead.listen(path, r));
    // Keep the file but stop answering: close the handle without unlinking.
    (dead as unknown as { _handle: { close(): void } | null })._handle?.close();
    const again = new NbdServer({ exports: new Map([['m', { device: new MemoryDevice(4096) }]]), unixSocket: path, logger });
    await again.listen();
    const c = await RawNbdClient.connect({ path });
    clients.push(c);
    expect((await c.handshake('m')).size).toBe(4096n);
    await again.close();
    expect(() => new NbdServer({ exports: new Map(), logger })).toThrow(ConfigError);
    expect(() => new NbdServer({ exports: new Map(), tcp: {}, maxRequestBytes: 1000 })).toThrow(ConfigError);
  });

  it('close() answers in-flight requests before closing', async () => {
    const gated = new GatedDevice(65536);
    const s = new NbdServer({ exports: new Map([['g', { device: gated }]]), unixSocket: join(dir, 'g.sock'), logger });
    await s.listen();
    const c = await RawNbdClient.connect({ path: join(dir, 'g.sock') });
    clients.push(c);
    await c.handshake('g');
    c.send(NBD_CMD_READ, 0, 16);
    await new Promise((r) => setTimeout(r, 50));
    const closing = s.close();
    let closed = false;
    void closing.then(() => (closed = true));
    await new Promise((r) => setTimeout(r, 50));
    expect(closed).toBe(false); // waiting for the in-flight read
    gated.release();
    const r = await c.simpleReply(16);
    expect(r.error).toBe(0);
    await closing;
    expect(await c.closedWithin(3000)).toBe(true);
    expect(s.connectionCount).toBe(0);
  });

  it('no unexpected warnings were logged and no connections leaked', async () => {
    for (const c of clients.splice(0)) c.destroy();
    expect(await waitFor(() => server.connectionCount === 0)).toBe(true);
    const unexpected = logger.warnings.filter(
      (w) => !/unknown client flags|bad option magic|handshake timeout|exceeds maxRequestBytes|bad request magic|refusing connection|unknown export|device error/.test(w),
    );
    expect(unexpected).toEqual([]);
  });
});
