/**
 * Interop of NbdServer with real NBD clients: qemu-io, qemu-img, nbdinfo,
 * nbdcopy, over TCP and a Unix socket, backed by a real FileDevice.
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FileDevice } from '../../src/device/file-device.js';
import { MemoryDevice } from '../../src/device/memory-device.js';
import { NbdServer } from '../../src/nbd/server.js';
import type { NbdExport } from '../../src/nbd/types.js';
import { CaptureLogger, qemuIo, runTool } from '../helpers/nbd-tools.js';

const SIZE = 8 * 1024 * 1024;

describe('NbdServer with real clients', () => {
  let dir: string;
  let diskPath: string;
  let disk: FileDevice;
  let roDev: MemoryDevice;
  let server: NbdServer;
  let port: number;
  let sock: string;
  const logger = new CaptureLogger();
  const url = (name: string): string => `nbd://127.0.0.1:${port}/${name}`;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'cowstream-nbd-interop-'));
    diskPath = join(dir, 'disk.raw');
    await writeFile(diskPath, Buffer.alloc(SIZE));
    disk = await FileDevice.open(diskPath);
    const roContent = randomBytes(1024 * 1024);
    roDev = new MemoryDevice(roContent);
    sock = join(dir, 'nbd.sock');
    const exports = new Map<string, NbdExport>([
      ['disk', { device: disk, description: 'the test disk' }],
      ['ro', { device: roDev, readOnly: true, description: 'read-only export' }],
    ]);
    server = new NbdServer({ exports, tcp: { host: '127.0.0.1', port: 0 }, unixSocket: sock, logger });
    const addr = await server.listen();
    port = addr.tcp!.port;
  });

  afterAll(async () => {
    await server?.close();
    await disk?.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('qemu-io writes, reads back patterns, zeroes, discards and flushes', async () => {
    const r = await qemuIo(url('disk'), [
      'write -P 0xab 0 64k',
      'write -P 0xcd 1M 128k',
      'read -P 0xab 0 64k',
      'read -P 0xcd 1M 128k',
      'write -z 4k 8k',
      'read -P 0 4k 8k',
      'read -P 0xab 12k 52k',
      'discard 1M 64k',
      'read -P 0 1M 64k',
      'read -P 0xcd 1088k 64k',
      'write -f -P 0x11 2M 4k', // FUA
      'flush',
    ]);
    expect(r.ok, r.stdout + r.stderr).toBe(true);
    expect(r.stdout).toContain('wrote 65536/65536 bytes at offset 0');
    expect(r.stdout).toContain('discard 65536/65536 bytes at offset 1048576');
    // The bytes really reached the image file.
    const file = await readFile(diskPath);
    expect(file.subarray(0, 4096).every((b) => b === 0xab)).toBe(true);
    expect(file.subarray(4096, 12288).every((b) => b === 0)).toBe(true);
    expect(file.subarray(1024 * 1024, 1024 * 1024 + 65536).every((b) => b === 0)).toBe(true);
    expect(file.subarray(1088 * 1024, 1152 * 1024).every((b) => b === 0xcd)).toBe(true);
    expect(file.subarray(2 * 1024 * 1024, 2 * 1024 * 1024 + 4096).every((b) => b === 0x11)).toBe(true);
  });

  it('a wrong pattern is detected (the qemu-io check can fail)', async () => {
    const r = await qemuIo(url('disk'), ['read -P 0x77 0 4k']);
    expect(r.ok).toBe(false);
  });

  it('qemu-img info / convert / compare', async () => {
    await writeFile(join(dir, 'src.raw'), randomBytes(SIZE));
    const info = await runTool('qemu-img', ['info', '--output=json', '-f', 'raw', url('disk')]);
    expect(info.code, info.stderr).toBe(0);
    expect(JSON.parse(info.stdout)['virtual-size']).toBe(SIZE);

    const up = await runTool('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', join(dir, 'src.raw'), url('disk')]);
    expect(up.code, up.stderr).toBe(0);
    const cmp = await runTool('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', join(dir, 'src.raw'), url('disk')]);
    expect(cmp.code, cmp.stdout + cmp.stderr).toBe(0);

    const down = await runTool('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', url('disk'), join(dir, 'down.raw')]);
    expect(down.code, down.stderr).toBe(0);
    expect((await readFile(join(dir, 'down.raw'))).equals(await readFile(join(dir, 'src.raw')))).toBe(true);

    // compare must be able to fail: change one byte through NBD.
    const w = await qemuIo(url('disk'), ['write -P 0x42 4000000 1']);
    expect(w.ok).toBe(true);
    const cmp2 = await runTool('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', join(dir, 'src.raw'), url('disk')]);
    expect(cmp2.code).toBe(1);
  });

  it('nbdinfo --list and nbdinfo --json', async () => {
    const list = await runTool('nbdinfo', ['--list', '--json', `nbd://127.0.0.1:${port}`]);
    expect(list.code, list.stderr).toBe(0);
    const j = JSON.parse(list.stdout) as { exports: Array<Record<string, unknown>> };
    const byName = new Map(j.exports.map((e) => [e['export-name'], e]));
    expect([...byName.keys()].sort()).toEqual(['disk', 'ro']);
    expect(byName.get('disk')?.description).toBe('the test disk');
    expect(byName.get('disk')?.['export-size']).toBe(SIZE);
    expect(byName.get('ro')?.is_read_only).toBe(true);

    const one = await runTool('nbdinfo', ['--json', url('disk')]);
    expect(one.code, one.stderr).toBe(0);
    const e = (JSON.parse(one.stdout) as { exports: Array<Record<string, unknown>> }).exports[0];
    expect(e['export-size']).toBe(SIZE);
    expect(e.is_read_only).toBe(false);
    expect(e.can_flush).toBe(true);
    expect(e.can_fua).toBe(true);
    expect(e.can_trim).toBe(true);
    expect(e.can_zero).toBe(true);
    expect(e.can_multi_conn).toBe(true);
    expect(e.block_size_maximum).toBe(32 * 1024 * 1024);
    expect(e.contexts).toContain('base:allocation');

    const missing = await runTool('nbdinfo', [url('nope')]);
    expect(missing.code).not.toBe(0);
  });

  it('nbdcopy in both directions, byte for byte', async () => {
    const src = join(dir, 'copy-src.raw');
    const back = join(dir, 'copy-back.raw');
    await writeFile(src, randomBytes(SIZE));
    const up = await runTool('nbdcopy', ['--requests=32', '--connections=4', src, url('disk')]);
    expect(up.code, up.stderr).toBe(0);
    await writeFile(back, Buffer.alloc(0));
    const down = await runTool('nbdcopy', ['--requests=32', url('disk'), back]);
    expect(down.code, down.stderr).toBe(0);
    const [a, b] = await Promise.all([readFile(src), readFile(back)]);
    expect(b.length).toBe(SIZE);
    expect(b.equals(a)).toBe(true);
    expect((await readFile(diskPath)).equals(a)).toBe(true);
  });

  it('serves the Unix socket (nbd+unix://)', async () => {
    const u = `nbd+unix:///disk?socket=${sock}`;
    const r = await qemuIo(u, ['write -P 0x5a 3M 64k', 'read -P 0x5a 3M 64k']);
    expect(r.ok, r.stdout + r.stderr).toBe(true);
    const info = await runTool('nbdinfo', ['--json', u]);
    expect(info.code, info.stderr).toBe(0);
    // Same device as over TCP.
    const t = await qemuIo(url('disk'), ['read -P 0x5a 3M 64k']);
    expect(t.ok, t.stdout + t.stderr).toBe(true);
  });

  it('several clients at once', async () => {
    const n = 6;
    const runs = Array.from({ length: n }, (_, i) =>
      qemuIo(url('disk'), [`write -P ${0x10 + i} ${i}M 512k`, `read -P ${0x10 + i} ${i}M 512k`]),
    );
    const results = await Promise.all([...runs, runTool('nbdinfo', ['--list', `nbd://127.0.0.1:${port}`])]);
    for (const r of results) expect(r.code, r.stderr).toBe(0);
    for (const r of results.slice(0, n)) expect((r as { ok: boolean }).ok, r.stdout + r.stderr).toBe(true);
    const file = await readFile(diskPath);
    for (let i = 0; i < n; i++) {
      const part = file.subarray(i * 1024 * 1024, i * 1024 * 1024 + 512 * 1024);
      expect(part.every((b) => b === 0x10 + i)).toBe(true);
    }
  });

  it('read-only export: reads work, writes are refused', async () => {
    const expected = await roDev.read(0, 65536);
    await writeFile(join(dir, 'ro-expected.raw'), expected);
    const r = await qemuIo(url('ro'), ['read 0 64k'], { readOnly: true });
    expect(r.ok, r.stdout + r.stderr).toBe(true);
    // qemu sees NBD_FLAG_READ_ONLY and refuses a read-write open; the
    // server-side EPERM path is covered by the raw-client tests.
    const w = await qemuIo(url('ro'), ['write -P 1 0 4k']);
    expect(w.ok).toBe(false);
    expect(w.stderr).toMatch(/Permission denied|read-only/i);
    const c = await runTool('nbdcopy', [join(dir, 'ro-expected.raw'), url('ro')]);
    expect(c.code).not.toBe(0);
    expect((await roDev.read(0, 65536)).equals(expected)).toBe(true);
  });

  it('did not log protocol warnings for well-behaved clients', () => {
    expect(logger.warnings).toEqual([]);
  });
});
