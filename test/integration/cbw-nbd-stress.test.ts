/**
 * Consistency stress through the real NBD server: CbwDevice over a FileDevice
 * on a temp file, exported by NbdServer; several NBD connections issue seeded
 * random overlapping WRITE / WRITE_ZEROES / TRIM (many in flight each) while
 * a backup runs into a slow sink. The backup must equal the pre-backup copy.
 */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BackupJob } from '../../src/cbw/backup-job.js';
import { CbwDevice, atQuiescentPoint } from '../../src/cbw/cbw-device.js';
import { FileDevice } from '../../src/device/file-device.js';
import { CLUSTER_SIZE } from '../../src/format/constants.js';
import { NbdServer } from '../../src/nbd/server.js';
import { MiniNbdClient } from '../helpers/cbw-nbd-client.js';
import { mulberry32 } from '../helpers/prng.js';
import { CaptureSink } from '../helpers/cbw-sink.js';

const C = CLUSTER_SIZE;
let dir: string;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cbw-nbd-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

interface Rig {
  file: FileDevice;
  cbw: CbwDevice;
  server: NbdServer;
  port: number;
  close(): Promise<void>;
}

async function rig(path: string): Promise<Rig> {
  const file = await FileDevice.open(path);
  const cbw = new CbwDevice(file, { deviceId: 0 });
  const server = new NbdServer({ exports: new Map([['vda', { device: cbw }]]), tcp: { host: '127.0.0.1', port: 0 } });
  const addr = await server.listen();
  return {
    file,
    cbw,
    server,
    port: addr.tcp!.port,
    close: async () => {
      await server.close();
      await file.close();
    },
  };
}

describe('CBW consistency through NbdServer', () => {
  const seeds = Array.from({ length: 8 }, (_, i) => 9000 + i);
  let totalCbw = 0;
  it.each(seeds)('seed %i: backup equals the pre-backup copy', async (seed) => {
    const rng = mulberry32(seed);
    const size = rng.int(16, 40) * C - rng.int(1, C - 1);
    const initial = rng.bytes(size);
    const path = join(dir, `disk-${seed}.raw`);
    await writeFile(path, initial);
    const r = await rig(path);
    const clients = await Promise.all([0, 1, 2].map(() => MiniNbdClient.connect('127.0.0.1', r.port, 'vda')));
    try {
      expect(clients[0]!.size).toBe(size);
      const sink = new CaptureSink({ rng: mulberry32(seed + 1), maxDelayMs: 3, fixedDelayMs: 1 });
      const fleecing = seed % 2 === 0;
      const job = await BackupJob.create({
        devices: [{ id: 0, name: 'vda', device: r.file }],
        sink,
        fleecing: fleecing ? { dir, maxBytes: 64 * C } : undefined,
      });
      await atQuiescentPoint([r.cbw], () => r.cbw.attach(job));
      job.start();
      let ops = 0;
      await Promise.all(
        clients.map(async (client, k) => {
          const crng = mulberry32(seed * 13 + k);
          for (let i = 0; i < 40; i++) {
            // Up to 4 requests in flight per connection.
            const batch = Array.from({ length: crng.int(1, 4) }, () => {
              const len = crng.int(1, 2 * C);
              const off = crng.int(0, size - len);
              const t = crng();
              ops++;
              if (t < 0.6) return client.write(off, crng.bytes(len));
              if (t < 0.8) return client.writeZeroes(off, len);
              return client.trim(off, len);
            });
            await Promise.all(batch);
          }
        }),
      );
      const res = await job.done;
      expect(res.status, `seed ${seed}: ${res.error}`).toBe('done');
      expect(ops).toBeGreaterThan(100);
      totalCbw += res.cbwClusters;
      expect(sink.duplicates).toEqual([]);
      expect(sink.clusters.size).toBe(Math.ceil(size / C));
      expect(sink.reconstruct(0, Buffer.alloc(size)).equals(initial), `seed ${seed} (fleecing=${fleecing})`).toBe(true);
      // The writes really reached the disk (it differs from the snapshot now).
      expect((await readFile(path)).equals(initial)).toBe(false);
    } finally {
      await Promise.all(clients.map((c) => c.close().catch(() => undefined)));
      await r.close();
    }
  });

  it('the NBD stress really raced guest writes against the backup', () => {
    expect(totalCbw).toBeGreaterThan(seeds.length);
  });

  it('break-guest-write over NBD: a write the scratch store cannot protect gets NBD EIO (5), the snapshot stays intact', async () => {
    const size = 16 * C;
    const initial = mulberry32(5).bytes(size);
    const path = join(dir, 'eio.raw');
    await writeFile(path, initial);
    const r = await rig(path);
    const client = await MiniNbdClient.connect('127.0.0.1', r.port, 'vda');
    try {
      const sink = new CaptureSink();
      sink.block();
      const job = await BackupJob.create({
        devices: [{ id: 0, name: 'vda', device: r.file }],
        sink,
        readBatchClusters: 1,
        onCbwError: 'break-guest-write',
        fleecing: { dir, maxBytes: C },
      });
      await atQuiescentPoint([r.cbw], () => r.cbw.attach(job));
      job.start();
      await client.write(10 * C, Buffer.alloc(512, 1)); // takes the only scratch slot
      const err = await client.write(12 * C, Buffer.alloc(512, 2)).catch((e: unknown) => e);
      expect(MiniNbdClient.errnoOf(err)).toBe(5);
      sink.release();
      const res = await job.done;
      expect(res.status).toBe('done');
      expect(sink.reconstruct(0, Buffer.alloc(size)).equals(initial)).toBe(true);
      const now = await readFile(path);
      expect(now[10 * C]).toBe(1);
      expect(now[12 * C]).toBe(initial[12 * C]); // the rejected write did not land
    } finally {
      await client.close().catch(() => undefined);
      await r.close();
    }
  });
});
