/**
 * Removing a served archive cuts its connected NBD clients off: each further
 * request gets EIO (never a hang, never data of a closed set), even when the
 * devices underneath would still answer; a read running at the removal
 * finishes before the set closes. Played with a real NbdServer and qemu-io /
 * the agent's NbdClient as clients, and devices that stay readable after
 * close() (so only the revocation can stop them).
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { NbdServer, type NbdExport } from '../../src/nbd/index.js';
import { NbdClient } from '../../src/nbd/client.js';
import { MemoryDevice } from '../../src/device/memory-device.js';
import type { BlockDevice } from '../../src/device/types.js';
import { ArchiveExports, type OpenArchiveExports } from '../../src/agent/archive-exports.js';
import { silentLogger } from '../../src/agent/log.js';
import { makeTempDir } from '../helpers/agent-process.js';
import { qemuIo } from '../helpers/nbd-tools.js';

const SIZE = 1024 * 1024;

let tmp: { dir: string; cleanup(): Promise<void> };
let server: NbdServer;
let socket: string;
let exports: ArchiveExports;
let closed: number;
let gate: { wait: Promise<void> | null };

/** A device whose reads can be held at a gate, and that keeps answering after close(). */
function gatedDevice(data: Buffer): BlockDevice {
  const mem = new MemoryDevice(data, { readOnly: true });
  return {
    size: mem.size,
    readOnly: true,
    read: async (o, l) => {
      await gate.wait;
      return mem.read(o, l);
    },
    write: (o, d) => mem.write(o, d),
    writeZeroes: (o, l) => mem.writeZeroes(o, l),
    trim: (o, l) => mem.trim(o, l),
    flush: () => mem.flush(),
    close: async () => undefined,
  };
}

beforeEach(async () => {
  tmp = await makeTempDir('cowstream-revoke-');
  socket = join(tmp.dir, 'nbd.sock');
  closed = 0;
  gate = { wait: null };
  const map = new Map<string, NbdExport>();
  server = new NbdServer({ exports: map, unixSocket: socket });
  await server.listen();
  const open: OpenArchiveExports = async () => ({
    archive: { uuid: '00000000-0000-4000-8000-000000000001', host: 'h', created: '', chainDepth: 1 },
    exports: [{ name: 'vda', size: SIZE, device: gatedDevice(Buffer.alloc(SIZE, 0x5a)) }],
    stats: () => ({}),
    close: async () => {
      closed++;
    },
  });
  exports = new ArchiveExports({
    exports: map,
    config: { max: 2, maxCacheMemoryBytes: 1024, maxCacheDiskBytes: 0, cacheDir: tmp.dir },
    allowedDirs: [],
    context: { store: { bucket: 'b', prefix: '' }, client: null },
    open,
    uris: (name) => [`nbd+unix:///${name}?socket=${socket}`],
    log: silentLogger,
  });
});

afterEach(async () => {
  await exports.close();
  await server.close();
  await tmp.cleanup();
});

describe('removing an archive export', () => {
  it('fails every further request of a connected client with EIO, and new clients find no export', async () => {
    const e = await exports.add({ ref: 's3://b/x.cwa' });
    const name = e.exports[0]!.name;
    const client = await NbdClient.connect({ path: socket }, { exportName: name });
    try {
      expect((await client.read(0, 4096)).every((b) => b === 0x5a)).toBe(true);
      await exports.remove(e.id);
      expect(closed).toBe(1);
      for (const off of [0, 4096, SIZE - 512]) await expect(client.read(off, 512)).rejects.toThrow(/EIO|error/i);
    } finally {
      await client.close().catch(() => undefined);
    }
    const late = await qemuIo(e.exports[0]!.uris[0]!, ['read 0 4k'], { readOnly: true });
    expect(late.ok).toBe(false);
  });

  it('lets a read running at the removal finish before the set closes', async () => {
    const e = await exports.add({ ref: 's3://b/x.cwa' });
    const client = await NbdClient.connect({ path: socket }, { exportName: e.exports[0]!.name });
    let release = (): void => undefined;
    try {
      gate.wait = new Promise<void>((r) => (release = r));
      const running = client.read(0, 4096);
      await new Promise((r) => setTimeout(r, 50));
      const removal = exports.remove(e.id);
      await new Promise((r) => setTimeout(r, 50));
      expect(closed).toBe(0); // waits for the read
      release();
      expect((await running).every((b) => b === 0x5a)).toBe(true);
      await removal;
      expect(closed).toBe(1);
    } finally {
      release();
      await client.close().catch(() => undefined);
    }
  });
});
