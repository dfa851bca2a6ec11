/**
 * cowstream's NBD client (src/nbd/client.ts) against a real server: the
 * agent's NbdServer over TCP, and a raw socket server that misbehaves.
 * (Against QEMU it is exercised by the qemu-pull tests.)
 */
import { randomBytes } from 'node:crypto';
import { Socket, createServer, type Server } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MemoryDevice } from '../../src/device/memory-device.js';
import { NbdProtocolError } from '../../src/errors.js';
import { NbdClient } from '../../src/nbd/client.js';
import { NbdServer } from '../../src/nbd/server.js';
import { CaptureLogger } from '../helpers/nbd-tools.js';
import { mulberry32 } from '../helpers/prng.js';

const SIZE = 8 * 1024 * 1024;

describe('NbdClient', () => {
  let server: NbdServer;
  let port: number;
  const data = randomBytes(SIZE);

  beforeAll(async () => {
    server = new NbdServer({ exports: new Map([['mem', { device: new MemoryDevice(Buffer.from(data)) }]]), tcp: { host: '127.0.0.1', port: 0 }, logger: new CaptureLogger() });
    port = (await server.listen()).tcp!.port;
  });
  afterAll(async () => {
    await server?.close();
  });

  it('pipelined reads of random ranges, into caller buffers or its own, match the device', async () => {
    const c = await NbdClient.connect({ host: '127.0.0.1', port }, { exportName: 'mem', maxInFlight: 16 });
    const rng = mulberry32(42);
    const pool = Buffer.alloc(1024 * 1024);
    const jobs: Promise<void>[] = [];
    for (let i = 0; i < 300; i++) {
      const len = rng.int(1, 256 * 1024);
      const off = rng.int(0, SIZE - len);
      const slot = i % 4;
      const into = rng.chance(0.5) ? pool.subarray(slot * 256 * 1024, (slot + 1) * 256 * 1024) : undefined;
      jobs.push(
        c.read(off, len, into ? { into } : {}).then((b) => {
          expect(b.length).toBe(len);
          // Compare at once: a later read may reuse the same `into` slot.
          expect(b.equals(data.subarray(off, off + len))).toBe(true);
          if (into) expect(b.buffer).toBe(into.buffer);
        }),
      );
      if (jobs.length >= 4) await jobs.shift(); // ≤ 4 in flight: each `into` slot has one reader
    }
    await Promise.all(jobs);
    await expect(c.read(0, 10, { into: Buffer.alloc(5) })).rejects.toBeInstanceOf(NbdProtocolError);
    await c.close();
  });

  it('a server that stops mid-reply fails every pending read with a clear error, and nothing hangs', async () => {
    // A proxy in front of the real server: the handshake passes through,
    // then the connection is cut in the middle of the READ replies.
    let cut: Socket | undefined;
    const proxy: Server = createServer((down) => {
      const up = new Socket();
      up.connect(port, '127.0.0.1');
      let transmission = false;
      let seen = 0;
      down.on('data', (b: Buffer) => {
        // The first request header (NBD_REQUEST_MAGIC) marks the end of the handshake.
        if (!transmission && b.length >= 28 && b.readUInt32BE(0) === 0x25609513) transmission = true;
        up.write(b);
      });
      up.on('data', (b: Buffer) => {
        if (transmission) {
          seen += b.length;
          if (seen > 1000) {
            down.write(b.subarray(0, 100));
            cut = down;
            down.destroy();
            up.destroy();
            return;
          }
        }
        down.write(b);
      });
      up.on('error', () => down.destroy());
      down.on('error', () => up.destroy());
    });
    await new Promise<void>((r) => proxy.listen(0, '127.0.0.1', r));
    try {
      const c = await NbdClient.connect({ host: '127.0.0.1', port: (proxy.address() as { port: number }).port }, { exportName: 'mem', maxInFlight: 8 });
      const reads = Array.from({ length: 8 }, (_, i) => c.read(i * 65536, 65536));
      const results = await Promise.allSettled(reads);
      expect(cut).toBeDefined();
      expect(results.every((r) => r.status === 'rejected')).toBe(true);
      expect(String((results[0] as PromiseRejectedResult).reason)).toMatch(/closed the connection|connection failed/);
      await expect(c.read(0, 10)).rejects.toThrow(/closed the connection|connection failed/);
      await c.close(); // returns at once on a dead connection
    } finally {
      proxy.close();
    }
  });
});
