import { describe, expect, it } from 'vitest';
import { NbdProtocolError } from '../../../src/errors.js';
import {
  NBD_REPLY_FLAG_DONE,
  NBD_REPLY_TYPE_OFFSET_HOLE,
  encodeBlockStatusChunk,
  encodeOffsetDataHeader,
  encodeSimpleReply,
  encodeStructuredDone,
  encodeStructuredError,
  encodeStructuredHeader,
} from '../../../src/nbd/protocol.js';
import { ReplyParser, type ChunkHeader, type ReplyHandler } from '../../../src/nbd/reply-parser.js';
import { mulberry32 } from '../../helpers/prng.js';

/** What a handler saw, in order; data chunks land in per-cookie buffers. */
interface Seen {
  events: string[];
  bufs: Map<bigint, Buffer>;
}

function recorder(sizes: Map<bigint, number>): { handler: ReplyHandler; seen: Seen } {
  const seen: Seen = { events: [], bufs: new Map() };
  const handler: ReplyHandler = {
    simpleReply: (error, cookie) => seen.events.push(`simple ${cookie} ${error}`),
    chunkStart: (h) => (h.type === 1 ? 'data' : 'collect'),
    chunkPayload: (h, p) => seen.events.push(`payload ${h.cookie} type ${h.type} ${p.toString('hex')}`),
    dataTarget: (h: ChunkHeader, off: number) => {
      let b = seen.bufs.get(h.cookie);
      if (!b) seen.bufs.set(h.cookie, (b = Buffer.alloc(sizes.get(h.cookie) ?? 0)));
      seen.events.push(`data ${h.cookie} @${off} +${h.length - 8}`);
      return { buf: b, at: off };
    },
    chunkEnd: (h) => seen.events.push(`end ${h.cookie} done=${(h.flags & NBD_REPLY_FLAG_DONE) !== 0}`),
  };
  return { handler, seen };
}

/** A reply stream exercising every chunk kind, with two reads interleaved. */
function stream(): { bytes: Buffer; sizes: Map<bigint, number>; data: Map<bigint, Buffer> } {
  const rng = mulberry32(7);
  const a = rng.bytes(70_000);
  const b = rng.bytes(5000);
  const hole = Buffer.alloc(12);
  hole.writeBigUInt64BE(0n, 0);
  hole.writeUInt32BE(1000, 8);
  const parts = [
    encodeOffsetDataHeader(1n, 0n, 40_000, false),
    a.subarray(0, 40_000),
    encodeOffsetDataHeader(2n, 1000n, 4000, false),
    b.subarray(1000),
    encodeStructuredHeader(0, NBD_REPLY_TYPE_OFFSET_HOLE, 2n, 12),
    hole,
    encodeStructuredDone(2n),
    encodeOffsetDataHeader(1n, 40_000n, 30_000, true),
    a.subarray(40_000),
    encodeBlockStatusChunk(3n, 9, [{ length: 4096, flags: 3 }, { length: 8192, flags: 0 }], true),
    encodeSimpleReply(5, 4n),
    encodeStructuredError(6n, 22, 'bad request', { done: true }),
  ];
  return { bytes: Buffer.concat(parts), sizes: new Map([[1n, 70_000], [2n, 5000]]), data: new Map([[1n, a], [2n, Buffer.concat([Buffer.alloc(1000), b.subarray(1000)])]]) };
}

/** Feeds `bytes` in the given pieces through ONE reused buffer, as net's `onread` does. */
function feedThroughReusedBuffer(p: ReplyParser, bytes: Buffer, cuts: number[]): void {
  const scratch = Buffer.alloc(bytes.length);
  let pos = 0;
  for (const end of [...cuts, bytes.length]) {
    bytes.copy(scratch, 0, pos, end);
    p.feed(scratch.subarray(0, end - pos));
    scratch.fill(0xee); // whatever the parser kept a reference to is now garbage
    pos = end;
  }
}

describe('ReplyParser', () => {
  it('parses every reply kind identically whatever the split, without keeping fed bytes', () => {
    const { bytes, sizes, data } = stream();
    const whole = recorder(sizes);
    const errors: Error[] = [];
    feedThroughReusedBuffer(new ReplyParser(whole.handler, (e) => errors.push(e)), bytes, []);
    expect(errors).toEqual([]);
    expect(whole.seen.events).toContain('simple 4 5');
    expect(whole.seen.events.filter((e) => e.startsWith('end')).length).toBe(7); // every structured chunk (the simple reply has none)
    for (const [cookie, want] of data) expect(whole.seen.bufs.get(cookie)?.equals(want)).toBe(true);

    const splits: number[][] = [Array.from({ length: bytes.length - 1 }, (_, i) => i + 1)]; // byte by byte
    for (let seed = 1; seed <= 30; seed++) {
      const rng = mulberry32(seed);
      const cuts = new Set<number>();
      const n = rng.int(1, 60);
      for (let i = 0; i < n; i++) cuts.add(rng.int(1, bytes.length - 1));
      splits.push([...cuts].sort((x, y) => x - y));
    }
    for (const cuts of splits) {
      const r = recorder(sizes);
      feedThroughReusedBuffer(new ReplyParser(r.handler, (e) => errors.push(e)), bytes, cuts);
      expect(errors).toEqual([]);
      expect(r.seen.events).toEqual(whole.seen.events);
      for (const [cookie, want] of data) expect(r.seen.bufs.get(cookie)?.equals(want)).toBe(true);
    }
  });

  it('bad magic or a handler refusal stops the parser with the error; later bytes are ignored', () => {
    const { bytes, sizes } = stream();
    const errors: Error[] = [];
    const r = recorder(sizes);
    const p = new ReplyParser(r.handler, (e) => errors.push(e));
    p.feed(Buffer.from('garbage!'));
    expect(errors).toHaveLength(1);
    expect(errors[0]).toBeInstanceOf(NbdProtocolError);
    expect(errors[0]!.message).toMatch(/bad reply magic/);
    p.feed(bytes);
    expect(r.seen.events).toEqual([]);
    expect(errors).toHaveLength(1);

    const refusing: ReplyHandler = { ...recorder(sizes).handler, chunkStart: () => { throw new NbdProtocolError('chunk for unknown cookie 1'); } };
    const errs2: Error[] = [];
    new ReplyParser(refusing, (e) => errs2.push(e)).feed(bytes);
    expect(errs2.map((e) => e.message)).toEqual(['chunk for unknown cookie 1']);
  });

  it('an OFFSET_DATA chunk too short to hold its offset is a protocol error', () => {
    const errors: Error[] = [];
    const r = recorder(new Map([[1n, 10]]));
    new ReplyParser(r.handler, (e) => errors.push(e)).feed(encodeStructuredHeader(NBD_REPLY_FLAG_DONE, 1, 1n, 4));
    expect(errors[0]).toBeInstanceOf(NbdProtocolError);
    expect(errors[0]!.message).toMatch(/OFFSET_DATA chunk of 4 bytes/);
  });
});
