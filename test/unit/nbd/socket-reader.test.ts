import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { NbdConnectionClosedError, SocketReader } from '../../../src/nbd/socket-reader.js';

/** A connected loopback socket pair. */
async function pair(): Promise<{ server: Server; a: Socket; b: Socket }> {
  const server = createServer({ allowHalfOpen: true });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as { port: number }).port;
  const accepted = new Promise<Socket>((r) => server.once('connection', r));
  const a = createConnection({ port, host: '127.0.0.1' });
  await new Promise((r) => a.once('connect', r));
  return { server, a, b: await accepted };
}

describe('SocketReader', () => {
  const cleanup: Array<() => void> = [];
  afterEach(() => {
    for (const f of cleanup.splice(0)) f();
  });
  const setup = async (highWater?: number): Promise<{ a: Socket; b: Socket; r: SocketReader }> => {
    const { server, a, b } = await pair();
    cleanup.push(() => {
      a.destroy();
      b.destroy();
      server.close();
    });
    return { a, b, r: new SocketReader(b, highWater) };
  };

  it('reads exact lengths across chunk boundaries', async () => {
    const { a, r } = await setup();
    a.write(Buffer.from('hel'));
    const p = r.read(5);
    a.write(Buffer.from('lo wor'));
    expect((await p).toString()).toBe('hello');
    a.write(Buffer.from('ld!'));
    expect((await r.read(4)).toString()).toBe(' wor');
    expect((await r.read(3)).toString()).toBe('ld!');
  });

  it('readOrEof: null at a clean boundary, error on a truncated message', async () => {
    const { a, r } = await setup();
    a.end(Buffer.from('abcd'));
    expect((await r.readOrEof(4))?.toString()).toBe('abcd');
    expect(await r.readOrEof(4)).toBeNull();

    const s2 = await setup();
    s2.a.end(Buffer.from('ab'));
    await expect(s2.r.readOrEof(4)).rejects.toBeInstanceOf(NbdConnectionClosedError);
  });

  it('pauses the socket when the read-ahead reaches highWater, resumes when consumed', async () => {
    const { a, b, r } = await setup(64 * 1024);
    a.write(Buffer.alloc(1024 * 1024, 7));
    await new Promise((res) => setTimeout(res, 100));
    expect(b.isPaused()).toBe(true);
    let total = 0;
    while (total < 1024 * 1024) {
      const chunk = await r.read(128 * 1024);
      expect(chunk.every((x) => x === 7)).toBe(true);
      total += chunk.length;
    }
    expect(total).toBe(1024 * 1024);
  });

  it('a pending read larger than highWater still completes', async () => {
    const { a, r } = await setup(1024);
    const p = r.read(300 * 1024);
    a.write(Buffer.alloc(300 * 1024, 1));
    expect((await p).length).toBe(300 * 1024);
  });

  it('abort rejects the pending and later reads; skip discards', async () => {
    const { a, r } = await setup();
    a.write(Buffer.alloc(100_000, 1));
    a.write(Buffer.from('XY'));
    await r.skip(100_000);
    expect((await r.read(2)).toString()).toBe('XY');
    const p = r.read(10);
    r.abort(new NbdConnectionClosedError('stop'));
    await expect(p).rejects.toThrow('stop');
    await expect(r.read(1)).rejects.toThrow('stop');
  });
});
