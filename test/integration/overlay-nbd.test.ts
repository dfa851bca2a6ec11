/**
 * Overlay and hydration devices served over NBD to real clients: qemu-io
 * writes through an overlay, the writes survive a restart of the server with
 * the same overlay and never reach the base; nbdinfo --map shows the merged
 * map; a hydration under qemu-io writes ends byte-identical to the export
 * (qemu-img compare).
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startHydration } from '../../src/device/hydrate.js';
import { MemoryDevice } from '../../src/device/memory-device.js';
import { openOverlay, type OverlayDevice } from '../../src/device/overlay-device.js';
import type { BlockDevice } from '../../src/device/types.js';
import { NbdServer } from '../../src/nbd/server.js';
import type { NbdExport } from '../../src/nbd/types.js';
import { CaptureLogger, qemuIo, runTool } from '../helpers/nbd-tools.js';
import { zeroDevice } from '../helpers/zero-device.js';

const MiB = 1024 * 1024;
const SIZE = 8 * MiB;
const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

describe('overlay and hydration over NBD', () => {
  let dir: string;
  let sock: string;
  let base: MemoryDevice;
  let baseSum: string;
  const logger = new CaptureLogger();
  const uri = (name = 'disk'): string => `nbd+unix:///${name}?socket=${sock}`;

  const serve = async (device: BlockDevice): Promise<NbdServer> => {
    const server = new NbdServer({ exports: new Map<string, NbdExport>([['disk', { device }]]), unixSocket: sock, logger });
    await server.listen();
    return server;
  };

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'cowstream-ovl-nbd-'));
    sock = join(dir, 'nbd.sock');
    const img = Buffer.alloc(SIZE);
    randomBytes(MiB).copy(img, 0); // data in the first MiB, holes after it
    randomBytes(64 * 1024).copy(img, 6 * MiB);
    base = new MemoryDevice(img, { readOnly: true });
    baseSum = sha(base.contents());
  });

  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('qemu-io writes through an overlay survive a server restart and never reach the base', async () => {
    const path = join(dir, 'disk.overlay');
    let ov: OverlayDevice = await openOverlay(base, path);
    let server = await serve(ov);
    const w = await qemuIo(uri(), [
      'write -P 0xa1 4k 8k', // partial cluster over data: copy-on-write
      'write -P 0xb2 3M 128k', // whole clusters in a hole
      'write -z -u 512k 128k', // may unmap: whole clusters become holes
      'discard 6M 64k',
      'flush',
    ]);
    expect(w.ok, w.stdout + w.stderr).toBe(true);
    await server.close();
    await ov.close();
    expect((await stat(path)).mode & 0o777).toBe(0o600);

    ov = await openOverlay(base, path);
    server = await serve(ov);
    const r = await qemuIo(uri(), [
      'read -P 0xa1 4k 8k',
      'read -P 0xb2 3M 128k',
      'read -P 0 512k 128k',
      'read -P 0 6M 64k',
      'read -P 0 7M 64k',
    ]);
    expect(r.ok, r.stdout + r.stderr).toBe(true);
    // The whole export, copied by nbdcopy, is the base with exactly these writes.
    const model = base.contents();
    model.fill(0xa1, 4096, 12 * 1024);
    model.fill(0xb2, 3 * MiB, 3 * MiB + 128 * 1024);
    model.fill(0, 512 * 1024, 640 * 1024);
    model.fill(0, 6 * MiB, 6 * MiB + 64 * 1024);
    const copy = join(dir, 'copy.raw');
    const cp = await runTool('nbdcopy', [uri(), copy]);
    expect(cp.code, cp.stderr).toBe(0);
    expect((await readFile(copy)).equals(model)).toBe(true);

    const map = await runTool('nbdinfo', ['--map', '--json', uri()]);
    expect(map.code, map.stderr).toBe(0);
    const runs = (JSON.parse(map.stdout) as Array<{ offset: number; length: number; type: number }>).map((e) => [e.offset, e.length, e.type]);
    expect(runs).toEqual([
      [0, 512 * 1024, 0],
      [512 * 1024, 128 * 1024, 3], // zeroed whole clusters
      [640 * 1024, 384 * 1024, 0],
      [MiB, 2 * MiB, 3],
      [3 * MiB, 128 * 1024, 0], // written into a hole
      [3 * MiB + 128 * 1024, 5 * MiB - 128 * 1024, 3], // 6M..6M+64k: base data, discarded
    ]);
    await server.close();
    await ov.close();
    expect(sha(base.contents())).toBe(baseSum);
  });

  it('nbdinfo --map of an overlay fragmented past one reply (40,960 runs) asks again and gets the whole, exact map', async () => {
    const CS = 4096;
    const holes = zeroDevice(1024 * MiB, true);
    const ov = await openOverlay(holes, join(dir, 'fragmented.overlay'), { clusterSize: CS });
    const written = 20_480; // every other 4 KiB cluster of the first 160 MiB
    const data = Buffer.alloc(CS, 0x5a);
    for (let i = 0; i < written; i += 512) await Promise.all(Array.from({ length: 512 }, (_, k) => ov.write(2 * (i + k) * CS, data)));
    const server = await serve(ov);
    try {
      const map = await runTool('nbdinfo', ['--map', '--json', uri()]);
      expect(map.code, map.stderr).toBe(0);
      const runs = JSON.parse(map.stdout) as Array<{ offset: number; length: number; type: number }>;
      expect(runs.length).toBe(2 * written);
      let pos = 0;
      for (const [i, r] of runs.entries()) {
        expect(r.offset).toBe(pos);
        if (i < runs.length - 1) expect([r.length, r.type]).toEqual([CS, i % 2 === 0 ? 0 : 3]);
        pos += r.length;
      }
      expect(pos).toBe(holes.size);
      expect(runs.at(-1)!.type).toBe(3);
    } finally {
      await server.close();
      await ov.close();
    }
  }, 120_000);

  it('hydrating an overlay while qemu-io writes ends byte-identical to the export', async () => {
    const ov = await openOverlay(base, join(dir, 'hydrate.overlay'));
    const target = join(dir, 'hydrated.raw');
    // The copies of clusters 0 and 1 wait (holding their locks) until the guest has written
    // elsewhere, so the writes race a running hydration.
    let open!: () => void;
    const gate = new Promise<void>((r) => (open = r));
    const source: BlockDevice = {
      size: ov.size,
      readOnly: false,
      read: async (o, l) => {
        if (l === 256 * 1024) await gate; // a copy (QEMU's own probing reads are small)
        return ov.read(o, l);
      },
      write: (o, d, f) => ov.write(o, d, f),
      writeZeroes: (o, l, f) => ov.writeZeroes(o, l, f),
      trim: (o, l) => ov.trim(o, l),
      flush: () => ov.flush(),
      close: async () => undefined,
      mapExtents: (o, l) => ov.mapExtents(o, l),
    };
    const h = startHydration(source, target, { clusterSize: 256 * 1024, concurrency: 2 });
    const server = await serve(h.device);
    const w = await qemuIo(uri(), ['write -P 0xc3 1100k 50k', 'write -P 0xd4 5M 1M', 'write -z 6M 4k', 'flush']);
    expect(w.ok, w.stdout + w.stderr).toBe(true);
    expect(h.progress().state).toBe('running');
    open();
    const result = await h.done;
    expect(result.bytesTotal).toBe(SIZE);
    const late = await qemuIo(uri(), ['write -P 0xe5 7M 4k', 'flush']);
    expect(late.ok, late.stdout + late.stderr).toBe(true);
    const cmp = await runTool('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', target, uri()]);
    expect(cmp.code, cmp.stdout + cmp.stderr).toBe(0);
    expect(cmp.stdout).toContain('Images are identical');
    const file = await readFile(target);
    expect(file.subarray(5 * MiB, 6 * MiB).every((b) => b === 0xd4)).toBe(true);
    expect(file.subarray(7 * MiB, 7 * MiB + 4096).every((b) => b === 0xe5)).toBe(true);
    await server.close();
    await h.device.close();
    await ov.close();
    expect(sha(base.contents())).toBe(baseSum);
  });
});
