/**
 * NBD_CMD_BLOCK_STATUS (base:allocation) answered from BlockDevice.mapExtents,
 * checked with real clients (nbdinfo --map, qemu-img map) and a raw-protocol
 * client for REQ_ONE, alignment and failing or lying maps.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FileDevice } from '../../src/device/file-device.js';
import { MemoryDevice } from '../../src/device/memory-device.js';
import type { DeviceExtent } from '../../src/device/types.js';
import {
  NBD_CMD_BLOCK_STATUS, NBD_CMD_FLAG_REQ_ONE, NBD_CMD_READ, NBD_EINVAL, NBD_EIO, NBD_REPLY_TYPE_BLOCK_STATUS,
  NBD_REPLY_TYPE_ERROR, NBD_REPLY_TYPE_OFFSET_DATA, NBD_STATE_HOLE, NBD_STATE_ZERO, decodeBlockStatusPayload,
  decodeStructuredError,
} from '../../src/nbd/protocol.js';
import { NbdServer } from '../../src/nbd/server.js';
import type { NbdExport } from '../../src/nbd/types.js';
import { RawNbdClient } from '../helpers/nbd-raw.js';
import { CaptureLogger, runTool } from '../helpers/nbd-tools.js';

const MiB = 1024 * 1024;
const SIZE = 4 * MiB;
const HZ = NBD_STATE_HOLE | NBD_STATE_ZERO;
/** Data runs of the 'holes' export; everything else is zero (a hole). */
const DATA: Array<[number, number]> = [[0, 64 * 1024], [MiB, 4096], [3 * MiB + 8192, 12 * 1024]];

/** Fails its map with an I/O error while `fail` is set; otherwise a MemoryDevice. */
class FlakyMapDevice extends MemoryDevice {
  fail = true;
  override async mapExtents(offset: number, length: number): Promise<DeviceExtent[]> {
    if (this.fail) throw Object.assign(new Error('map backend unavailable'), { code: 'EIO' });
    return super.mapExtents(offset, length);
  }
}

/** Returns whatever map a test sets, valid or not. */
class ScriptedMapDevice extends MemoryDevice {
  map: unknown = [];
  override async mapExtents(): Promise<DeviceExtent[]> {
    return this.map as DeviceExtent[];
  }
}

describe('NBD block status from mapExtents', () => {
  let dir: string;
  let sock: string;
  let server: NbdServer;
  let plain: FileDevice;
  const flaky = new FlakyMapDevice(SIZE);
  const scripted = new ScriptedMapDevice(SIZE);
  const logger = new CaptureLogger();
  const uri = (name: string): string => `nbd+unix:///${name}?socket=${sock}`;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'cowstream-bs-'));
    sock = join(dir, 'nbd.sock');
    const holes = new MemoryDevice(SIZE);
    for (const [off, len] of DATA) await holes.write(off, Buffer.alloc(len, 0x5a));
    await writeFile(join(dir, 'plain.raw'), Buffer.alloc(MiB));
    plain = await FileDevice.open(join(dir, 'plain.raw'), { readOnly: true });
    const exports = new Map<string, NbdExport>([
      ['holes', { device: holes, readOnly: true }],
      ['flaky', { device: flaky }],
      ['scripted', { device: scripted }],
      ['scripted4k', { device: scripted, minBlockSize: 4096 }],
      ['plain', { device: plain }],
    ]);
    server = new NbdServer({ exports, unixSocket: sock, logger });
    await server.listen();
  });

  afterAll(async () => {
    await server?.close();
    await plain?.close();
    await rm(dir, { recursive: true, force: true });
  });

  const connect = async (name: string): Promise<RawNbdClient> => {
    const c = await RawNbdClient.connect({ path: sock });
    await c.handshake(name, { structured: true, metaContext: true });
    return c;
  };
  const status = async (c: RawNbdClient, off: number, len: number, flags = 0): Promise<Array<{ length: number; flags: number }>> => {
    c.send(NBD_CMD_BLOCK_STATUS, off, len, { flags });
    const r = await c.structuredReply();
    expect(r.chunks).toHaveLength(1);
    expect(r.chunks[0]!.type).toBe(NBD_REPLY_TYPE_BLOCK_STATUS);
    return decodeBlockStatusPayload(r.chunks[0]!.payload).extents;
  };
  const errorOf = async (c: RawNbdClient): Promise<{ error: number; message: string }> => {
    const r = await c.structuredReply();
    expect(r.chunks[0]?.type).toBe(NBD_REPLY_TYPE_ERROR);
    return decodeStructuredError(r.chunks[0]!.type, r.chunks[0]!.payload);
  };

  it('nbdinfo --map shows the known holes and data runs', async () => {
    const r = await runTool('nbdinfo', ['--map', '--json', uri('holes')]);
    expect(r.code, r.stderr).toBe(0);
    const map = (JSON.parse(r.stdout) as Array<{ offset: number; length: number; type: number }>).map((e) => [e.offset, e.length, e.type]);
    expect(map).toEqual([
      [0, 64 * 1024, 0],
      [64 * 1024, MiB - 64 * 1024, 3],
      [MiB, 4096, 0],
      [MiB + 4096, 2 * MiB + 4096, 3],
      [3 * MiB + 8192, 12 * 1024, 0],
      [3 * MiB + 20 * 1024, SIZE - 3 * MiB - 20 * 1024, 3],
    ]);
  });

  it('qemu-img map sees the same data and zero runs', async () => {
    const r = await runTool('qemu-img', ['map', '--output=json', '--image-opts', `driver=nbd,server.type=unix,server.path=${sock},export=holes`]);
    expect(r.code, r.stderr).toBe(0);
    const map = (JSON.parse(r.stdout) as Array<{ start: number; length: number; data: boolean; zero: boolean }>)
      .map((e) => [e.start, e.length, e.data, e.zero]);
    expect(map).toEqual([
      [0, 64 * 1024, true, false],
      [64 * 1024, MiB - 64 * 1024, false, true],
      [MiB, 4096, true, false],
      [MiB + 4096, 2 * MiB + 4096, false, true],
      [3 * MiB + 8192, 12 * 1024, true, false],
      [3 * MiB + 20 * 1024, SIZE - 3 * MiB - 20 * 1024, false, true],
    ]);
  });

  it('extents start at the request offset, are contiguous and never exceed the request', async () => {
    const c = await connect('holes');
    // Starts inside a data run and ends inside a hole.
    expect(await status(c, 60 * 1024, MiB)).toEqual([
      { length: 4096, flags: 0 },
      { length: MiB - 64 * 1024, flags: HZ },
      { length: 4096, flags: 0 },
      { length: 60 * 1024 - 4096, flags: HZ },
    ]);
    // One byte at the very end.
    expect(await status(c, SIZE - 1, 1)).toEqual([{ length: 1, flags: HZ }]);
    c.destroy();
  });

  it('REQ_ONE gets exactly one descriptor, as long as the first run allows', async () => {
    const c = await connect('holes');
    expect(await status(c, 0, 2 * MiB, NBD_CMD_FLAG_REQ_ONE)).toEqual([{ length: 64 * 1024, flags: 0 }]);
    expect(await status(c, 64 * 1024, 2 * MiB, NBD_CMD_FLAG_REQ_ONE)).toEqual([{ length: MiB - 64 * 1024, flags: HZ }]);
    expect(await status(c, MiB + 100, 8192, NBD_CMD_FLAG_REQ_ONE)).toEqual([{ length: 3996, flags: 0 }]);
    c.destroy();
  });

  it('a device whose map throws gets an error reply and the connection stays usable', async () => {
    const c = await connect('flaky');
    flaky.fail = true;
    c.send(NBD_CMD_BLOCK_STATUS, 0, 65536);
    const e = await errorOf(c);
    expect(e.error).toBe(NBD_EIO);
    expect(e.message).toMatch(/map backend unavailable/);
    c.send(NBD_CMD_READ, 0, 4096);
    const rd = await c.structuredReply();
    expect(rd.chunks[0]?.type).toBe(NBD_REPLY_TYPE_OFFSET_DATA);
    flaky.fail = false;
    expect(await status(c, 0, 8192)).toEqual([{ length: 8192, flags: HZ }]);
    c.destroy();
  });

  it('a malformed map (empty, zero-length, not a number) is an EIO reply, not a bad wire reply', async () => {
    const c = await connect('scripted');
    for (const bad of [[], [{ length: 0, hole: false, zero: false }], [{ length: -4096, hole: true, zero: true }],
      [{ length: 1.5, hole: false, zero: false }], [{ length: 4096 }], null, [null]]) {
      scripted.map = bad;
      c.send(NBD_CMD_BLOCK_STATUS, 0, 65536);
      expect((await errorOf(c)).error).toBe(NBD_EIO);
    }
    // Longer than asked: clipped to the request.
    scripted.map = [{ length: 4096, hole: true, zero: true }, { length: 10 * MiB, hole: false, zero: false }];
    expect(await status(c, 0, 65536)).toEqual([{ length: 4096, flags: HZ }, { length: 61440, flags: 0 }]);
    // Adjacent runs with the same state are merged.
    scripted.map = [{ length: 100, hole: false, zero: true }, { length: 200, hole: false, zero: true }];
    expect(await status(c, 0, 300)).toEqual([{ length: 300, flags: NBD_STATE_ZERO }]);
    // Zero-length request is invalid, whatever the device says.
    c.send(NBD_CMD_BLOCK_STATUS, 0, 0);
    expect((await errorOf(c)).error).toBe(NBD_EINVAL);
    c.destroy();
  });

  it('with a 4 KiB minimum block size, descriptors stay aligned and mixed blocks claim nothing', async () => {
    const c = await connect('scripted4k');
    scripted.map = [
      { length: 6000, hole: true, zero: true }, // block 1 is mixed: hole + data
      { length: 3000, hole: false, zero: false },
      { length: 3288, hole: true, zero: true }, // ends at 12288: aligned
      { length: 4096, hole: false, zero: true },
    ];
    expect(await status(c, 0, 16384)).toEqual([
      { length: 4096, flags: HZ },
      { length: 8192, flags: 0 },
      { length: 4096, flags: NBD_STATE_ZERO },
    ]);
    // A map that stops inside a block: that block claims nothing.
    scripted.map = [{ length: 5000, hole: true, zero: true }];
    expect(await status(c, 0, 16384)).toEqual([{ length: 4096, flags: HZ }]);
    scripted.map = [{ length: 100, hole: true, zero: true }];
    expect(await status(c, 0, 16384)).toEqual([{ length: 4096, flags: 0 }]);
    c.destroy();
  });

  it('a file device reports allocated data (the honest answer without SEEK_DATA)', async () => {
    const c = await connect('plain');
    expect(await status(c, 0, MiB)).toEqual([{ length: MiB, flags: 0 }]);
    c.destroy();
  });
});
