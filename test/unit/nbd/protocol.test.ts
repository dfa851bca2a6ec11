import { describe, expect, it } from 'vitest';
import { NbdProtocolError } from '../../../src/errors.js';
import * as P from '../../../src/nbd/protocol.js';

describe('nbd protocol encoders/decoders', () => {
  it('server greeting has NBDMAGIC, IHAVEOPT and the handshake flags', () => {
    const g = P.encodeServerGreeting(P.NBD_FLAG_FIXED_NEWSTYLE | P.NBD_FLAG_NO_ZEROES);
    expect(g.toString('latin1', 0, 16)).toBe('NBDMAGICIHAVEOPT');
    expect(g.readUInt16BE(16)).toBe(3);
    expect(P.decodeServerGreeting(g)).toEqual({ handshakeFlags: 3 });
    const bad = Buffer.from(g);
    bad[0] = 0;
    expect(() => P.decodeServerGreeting(bad)).toThrow(NbdProtocolError);
    expect(() => P.decodeServerGreeting(g.subarray(0, 10))).toThrow(NbdProtocolError);
  });

  it('option and option reply round-trip', () => {
    const o = P.encodeOption(P.NBD_OPT_GO, Buffer.from([1, 2, 3]));
    expect(o.length).toBe(19);
    expect(P.decodeOptionHeader(o)).toEqual({ magic: P.NBD_OPTS_MAGIC, option: P.NBD_OPT_GO, length: 3 });
    const r = P.encodeOptionReply(P.NBD_OPT_LIST, P.NBD_REP_ERR_UNSUP, Buffer.from('no'));
    expect(r.readBigUInt64BE(0)).toBe(0x3e889045565a9n);
    expect(P.decodeOptionReplyHeader(r)).toEqual({ magic: P.NBD_REP_MAGIC, option: P.NBD_OPT_LIST, replyType: 0x80000001, length: 2 });
    expect(P.isOptionReplyError(P.NBD_REP_ERR_UNSUP)).toBe(true);
    expect(P.isOptionReplyError(P.NBD_REP_ACK)).toBe(false);
  });

  it('constants match proto.md', () => {
    expect(P.NBD_REP_ERR_UNKNOWN).toBe(2 ** 31 + 6);
    expect(P.NBD_REP_ERR_TOO_BIG).toBe(2 ** 31 + 9);
    expect(P.NBD_REPLY_TYPE_ERROR).toBe(32769);
    expect(P.NBD_REPLY_TYPE_ERROR_OFFSET).toBe(32770);
    expect(P.NBD_FLAG_CAN_MULTI_CONN).toBe(256);
    expect(P.NBD_FLAG_SEND_CACHE).toBe(1024);
    expect([P.NBD_EPERM, P.NBD_EIO, P.NBD_EINVAL, P.NBD_ENOSPC, P.NBD_EOVERFLOW, P.NBD_ESHUTDOWN]).toEqual([1, 5, 22, 28, 75, 108]);
  });

  it('INFO/GO request: round-trip and validation of untrusted lengths', () => {
    const b = P.encodeInfoRequest('disk0', [P.NBD_INFO_NAME, P.NBD_INFO_BLOCK_SIZE]);
    expect(P.decodeInfoRequest(b)).toEqual({ name: 'disk0', infos: [1, 3] });
    expect(P.decodeInfoRequest(P.encodeInfoRequest(''))).toEqual({ name: '', infos: [] });
    const long = Buffer.from(b);
    long.writeUInt32BE(0xffffffff, 0);
    expect(() => P.decodeInfoRequest(long)).toThrow(/exceeds/);
    const count = Buffer.from(b);
    count.writeUInt16BE(500, 4 + 5);
    expect(() => P.decodeInfoRequest(count)).toThrow(/count/);
    expect(() => P.decodeInfoRequest(Buffer.alloc(5))).toThrow(NbdProtocolError);
  });

  it('info payloads decode', () => {
    expect(P.decodeInfo(P.encodeInfoExport(1 << 30, 0x14d))).toEqual({ type: 0, size: 1n << 30n, transmissionFlags: 0x14d });
    expect(P.decodeInfo(P.encodeInfoBlockSize(1, 4096, 32 << 20))).toEqual({ type: 3, min: 1, preferred: 4096, max: 32 << 20 });
    expect(P.decodeInfo(P.encodeInfoString(P.NBD_INFO_DESCRIPTION, 'héllo'))).toEqual({ type: 2, value: 'héllo' });
    expect(() => P.decodeInfo(Buffer.from([0, 0, 1]))).toThrow(/length/);
  });

  it('export name reply honours NO_ZEROES', () => {
    expect(P.encodeExportNameReply(4096, 1, true).length).toBe(10);
    const z = P.encodeExportNameReply(4096, 1, false);
    expect(z.length).toBe(134);
    expect(z.readBigUInt64BE(0)).toBe(4096n);
    expect(z.subarray(10).every((x) => x === 0)).toBe(true);
  });

  it('NBD_REP_SERVER round-trip, with and without description', () => {
    expect(P.decodeRepServer(P.encodeRepServer('a', 'desc'))).toEqual({ name: 'a', description: 'desc' });
    expect(P.decodeRepServer(P.encodeRepServer('abc'))).toEqual({ name: 'abc', description: '' });
    const bad = P.encodeRepServer('abc');
    bad.writeUInt32BE(99, 0);
    expect(() => P.decodeRepServer(bad)).toThrow(NbdProtocolError);
  });

  it('meta context requests: round-trip and bounds', () => {
    const b = P.encodeMetaContextRequest('d', ['base:allocation', 'qemu:x']);
    expect(P.decodeMetaContextRequest(b)).toEqual({ name: 'd', queries: ['base:allocation', 'qemu:x'] });
    const huge = Buffer.from(b);
    huge.writeUInt32BE(0x7fffffff, 5); // query count
    expect(() => P.decodeMetaContextRequest(huge)).toThrow(/count/);
    expect(() => P.decodeMetaContextRequest(Buffer.concat([b, Buffer.from([0])]))).toThrow(/trailing/);
    expect(() => P.decodeMetaContextRequest(b.subarray(0, b.length - 1))).toThrow(/exceeds/);
    expect(P.decodeMetaContextReply(P.encodeMetaContextReply(7, 'base:allocation'))).toEqual({ id: 7, name: 'base:allocation' });
  });

  it('requests round-trip with 64-bit offsets and cookies', () => {
    const r = { flags: P.NBD_CMD_FLAG_FUA, type: P.NBD_CMD_WRITE, cookie: 0xdeadbeefcafebaben, offset: (1n << 63n) + 5n, length: 0xffffffff };
    const b = P.encodeRequest(r);
    expect(b.length).toBe(28);
    expect(b.readUInt32BE(0)).toBe(0x25609513);
    expect(P.decodeRequest(b)).toEqual({ ...r, magic: P.NBD_REQUEST_MAGIC });
  });

  it('simple and structured replies', () => {
    expect(P.decodeSimpleReply(P.encodeSimpleReply(22, 9n))).toEqual({ error: 22, cookie: 9n });
    const h = P.encodeOffsetDataHeader(3n, 4096n, 100, true);
    expect(h.length).toBe(28);
    expect(P.decodeStructuredHeader(h)).toEqual({ flags: 1, type: P.NBD_REPLY_TYPE_OFFSET_DATA, cookie: 3n, length: 108 });
    expect(h.readBigUInt64BE(20)).toBe(4096n);
    expect(P.decodeStructuredHeader(P.encodeStructuredDone(4n))).toEqual({ flags: 1, type: 0, cookie: 4n, length: 0 });
  });

  it('structured error chunks, with offset and a truncated message', () => {
    const e = P.encodeStructuredError(5n, P.NBD_EIO, 'boom');
    const h = P.decodeStructuredHeader(e);
    expect(h).toEqual({ flags: 1, type: P.NBD_REPLY_TYPE_ERROR, cookie: 5n, length: 10 });
    expect(P.decodeStructuredError(h.type, e.subarray(20))).toEqual({ error: 5, message: 'boom' });
    const eo = P.encodeStructuredError(5n, P.NBD_EINVAL, 'x', { offset: 77n, done: false });
    const ho = P.decodeStructuredHeader(eo);
    expect(ho.flags).toBe(0);
    expect(P.decodeStructuredError(ho.type, eo.subarray(20))).toEqual({ error: 22, message: 'x', offset: 77n });
    const long = P.encodeStructuredError(1n, 5, 'é'.repeat(5000));
    const msgLen = long.readUInt16BE(24);
    expect(msgLen).toBeLessThanOrEqual(4096);
    expect(long.toString('utf8', 26, 26 + msgLen)).toBe('é'.repeat(2048));
  });

  it('block status chunk', () => {
    const c = P.encodeBlockStatusChunk(1n, 9, [{ length: 4096, flags: 0 }, { length: 512, flags: 3 }], true);
    const h = P.decodeStructuredHeader(c);
    expect(h.length).toBe(20);
    expect(P.decodeBlockStatusPayload(c.subarray(20))).toEqual({ contextId: 9, extents: [{ length: 4096, flags: 0 }, { length: 512, flags: 3 }] });
    expect(() => P.decodeBlockStatusPayload(Buffer.alloc(7))).toThrow(NbdProtocolError);
  });

  it('names for logs', () => {
    expect(P.commandName(P.NBD_CMD_WRITE_ZEROES)).toBe('WRITE_ZEROES');
    expect(P.commandName(99)).toBe('CMD_99');
    expect(P.optionName(P.NBD_OPT_GO)).toBe('GO');
  });
});
