/**
 * Pull-mode backup against a REAL qemu-storage-daemon (QEMU 7.2):
 * consistency under concurrent guest writes, incremental chains (qcow2
 * persistent bitmap across a daemon restart), S3 failure mid-backup and a
 * clean graph afterwards.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { existsSync, readdirSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ZstdPool } from '../../src/codec/zstd-pool.js';
import { FileByteSink } from '../../src/store/file.js';
import { S3ArchiveSink } from '../../src/store/s3-sink.js';
import { QmpClient } from '../../src/qemu/qmp.js';
import { runPullBackup } from '../../src/qemu/pull-backup.js';
import { QemuBackupError } from '../../src/qemu/errors.js';
import { CowstreamError } from '../../src/errors.js';
import { backupToFile, fillRandom } from '../helpers/qemu-pull.js';
import { copyExport, createImage, guestWrites, startDaemon, tempDir, type QemuDaemon } from '../helpers/qemu-daemon.js';
import { firstDiff, restoreChain } from '../helpers/qemu-archive.js';
import { startS3rver } from '../helpers/s3-servers.js';
import type { ByteSink } from '../../src/format/sink.js';

const SIZE = 64 * 1024 * 1024;
const pool = new ZstdPool({ workers: 2 });
afterAll(async () => pool.close());


async function nodeNames(qmp: QmpClient): Promise<string[]> {
  const nodes = await qmp.execute<{ 'node-name': string }[]>('query-named-block-nodes', { flat: true });
  return nodes.map((n) => n['node-name']).sort();
}

async function bitmaps(qmp: QmpClient, node: string): Promise<{ name: string; recording: boolean; persistent: boolean }[]> {
  const nodes = await qmp.execute<{ 'node-name': string; 'dirty-bitmaps'?: { name: string; recording: boolean; persistent: boolean }[] }[]>('query-named-block-nodes', { flat: true });
  return nodes.find((n) => n['node-name'] === node)?.['dirty-bitmaps'] ?? [];
}


describe('QEMU pull-mode backup (qemu-storage-daemon)', () => {
  const t = tempDir();
  let d: QemuDaemon;
  let qmp: QmpClient;
  const img = join(t.dir, 'd0.qcow2');
  const clean = ['d0', 'd0-file', 'd0-guest'];

  beforeAll(async () => {
    await createImage(img, 'qcow2', String(SIZE));
    d = await startDaemon(t.dir, [{ path: img, format: 'qcow2' }]);
    qmp = await QmpClient.connect(d.qmpSocket);
  });
  afterAll(async () => {
    await qmp?.close();
    await d?.stop();
    t.cleanup();
  });

  it('archive equals the disk at the fleecing point while the guest keeps writing', async () => {
    await fillRandom(d, t.dir, 24 * 1024 * 1024);
    await guestWrites(d.guestUri(0), 7, 40, SIZE);
    // Writers are paused here: this copy is the disk at the coming fleecing point.
    const ref = join(t.dir, 'ref-consistency.raw');
    await copyExport(d.guestUri(0), ref);
    let writers: Promise<void> | null = null;
    let writesDone = false;
    let readWhileWriting = false;
    const r = await backupToFile(d, qmp, t.dir, 'full', pool, {
      readChunk: 256 * 1024,
      maxInFlight: 2,
      onSnapshot: () => {
        // Resume the guest: seeded random writes race with the backup's reads.
        writers = guestWrites(d.guestUri(0), 99, 300, SIZE, { maxLen: 512 * 1024 }).then(() => void (writesDone = true));
      },
      onProgress: () => {
        if (!writesDone) readWhileWriting = true;
      },
    });
    expect(writers).not.toBeNull();
    await writers;
    expect(writesDone).toBe(true);
    expect(readWhileWriting).toBe(true);
    expect(r.mode).toBe('full');
    expect(r.devices[0]!.dataClusters).toBeGreaterThan(300);

    const now = join(t.dir, 'now.raw');
    await copyExport(d.guestUri(0), now);
    const restored = await restoreChain(r.path, join(t.dir, 'restore-consistency'), pool);
    const want = await readFile(ref);
    expect(firstDiff(restored.get('vda')!, want)).toBeNull();
    // The guest's writes really landed (the archive is not simply "now").
    expect((await readFile(now)).equals(want)).toBe(false);
    expect(await nodeNames(qmp)).toEqual(clean);
    expect(readdirSync(t.dir).filter((f) => f.endsWith('.fleece'))).toEqual([]);
  }, 60_000);

  it('full → writes → incremental → restore chain equals the disk; the qcow2 bitmap survives a daemon restart', async () => {
    const full = await backupToFile(d, qmp, t.dir, 'full', pool);
    expect((await bitmaps(qmp, 'd0')).map((b) => b.name)).toEqual([`cowstream-${full.uuid}`]);
    await guestWrites(d.guestUri(0), 11, 60, SIZE);
    const inc1 = await backupToFile(d, qmp, t.dir, 'incremental', pool);
    expect(inc1.mode).toBe('incremental');
    expect(inc1.parentUuid).toBe(full.uuid);
    expect(inc1.devices[0]!.skippedClusters).toBeGreaterThan(0);
    let disk = join(t.dir, 'disk1.raw');
    await copyExport(d.guestUri(0), disk);
    let restored = await restoreChain(inc1.path, join(t.dir, 'restore-inc1'), pool);
    expect(firstDiff(restored.get('vda')!, await readFile(disk))).toBeNull();

    // Restart the daemon: the persistent bitmap must come back from the qcow2.
    await qmp.close();
    await d.stop();
    d = await startDaemon(t.dir, [{ path: img, format: 'qcow2' }]);
    qmp = await QmpClient.connect(d.qmpSocket);
    const bms = await bitmaps(qmp, 'd0');
    expect(bms).toEqual([expect.objectContaining({ name: `cowstream-${inc1.uuid}`, recording: true, persistent: true })]);

    await guestWrites(d.guestUri(0), 12, 60, SIZE);
    const inc2 = await backupToFile(d, qmp, t.dir, 'incremental', pool);
    expect(inc2.mode).toBe('incremental');
    expect(inc2.parentUuid).toBe(inc1.uuid);
    disk = join(t.dir, 'disk2.raw');
    await copyExport(d.guestUri(0), disk);
    restored = await restoreChain(inc2.path, join(t.dir, 'restore-inc2'), pool);
    expect(firstDiff(restored.get('vda')!, await readFile(disk))).toBeNull();
    expect(await nodeNames(qmp)).toEqual(clean);
  }, 60_000);

  it('S3 endpoint dies mid-backup: backup fails, graph clean, guest writes keep working, next incremental captures everything', async () => {
    const base = await backupToFile(d, qmp, t.dir, 'full', pool);
    // Incompressible data so the upload needs several parts.
    await fillRandom(d, t.dir, 40 * 1024 * 1024, 8 * 1024 * 1024);
    const s3 = await startS3rver('qemu-fail');
    const client = s3.client({ maxAttempts: 1 });
    let killed = false;
    let closing: Promise<void> | null = null;
    let guestDuring: Promise<void> | null = null;
    try {
      const failed = runPullBackup({
        qmp,
        drives: [{ node: 'd0', name: 'vda' }],
        mode: 'incremental',
        fleecingDir: t.dir,
        hostId: 'test-host',
        compressor: pool,
        nbdServerSocket: d.nbdSocket,
        readChunk: 1024 * 1024,
        onWarning: () => undefined,
        openOutput: async (c) => new S3ArchiveSink({ client, bucket: 'qemu-fail', key: `a/${c.uuid}.cwa`, expectedBytes: c.expectedBytes, partSize: 5 * 1024 * 1024, onWarning: () => undefined }),
        onSnapshot: () => {
          guestDuring = guestWrites(d.guestUri(0), 21, 100, SIZE);
        },
        onProgress: (p) => {
          if (!killed && p.done >= 8 * 1024 * 1024) {
            killed = true;
            closing = s3.close();
          }
        },
      });
      await expect(failed).rejects.toBeInstanceOf(CowstreamError);
      expect(killed).toBe(true);
    } finally {
      client.destroy();
      await (closing ?? s3.close());
    }
    await guestDuring; // the guest never saw an error
    expect(await nodeNames(qmp)).toEqual(clean);
    expect(readdirSync(t.dir).filter((f) => f.endsWith('.fleece'))).toEqual([]);
    // The old generation is back and recording; nothing of the failed run remains.
    expect(await bitmaps(qmp, 'd0')).toEqual([expect.objectContaining({ name: `cowstream-${base.uuid}`, recording: true })]);
    await guestWrites(d.guestUri(0), 22, 30, SIZE);
    const next = await backupToFile(d, qmp, t.dir, 'incremental', pool);
    expect(next.parentUuid).toBe(base.uuid);
    const disk = join(t.dir, 'disk3.raw');
    await copyExport(d.guestUri(0), disk);
    const restored = await restoreChain(next.path, join(t.dir, 'restore-after-fail'), pool);
    expect(firstDiff(restored.get('vda')!, await readFile(disk))).toBeNull();
  }, 60_000);

  it('cancel tears everything down and keeps the bitmap generation', async () => {
    const before = await bitmaps(qmp, 'd0');
    const ac = new AbortController();
    const p = backupToFile(d, qmp, t.dir, 'full', pool, { signal: ac.signal, readChunk: 64 * 1024, maxInFlight: 1, onProgress: () => ac.abort() });
    await expect(p).rejects.toBeInstanceOf(QemuBackupError);
    expect(await nodeNames(qmp)).toEqual(clean);
    expect((await bitmaps(qmp, 'd0')).map((b) => b.name)).toEqual(before.map((b) => b.name));
    expect(readdirSync(t.dir).filter((f) => f.endsWith('.partial') || f.endsWith('.fleece'))).toEqual([]);
    expect(existsSync(img)).toBe(true);
  }, 30_000);

  it('cancel after the last READ, while the archive is still completing, still cancels', async () => {
    const before = await bitmaps(qmp, 'd0');
    const ac = new AbortController();
    let path = '';
    let closing = false;
    // Bytes pass straight through, but completing the object (close: an S3
    // CompleteMultipartUpload) never ends on its own: the cancel lands in
    // writer.finish(), after the reading loop, and must still win.
    const openOutput = async (c: { uuid: string }): Promise<ByteSink> => {
      const file = await FileByteSink.create((path = join(t.dir, `${c.uuid}.cwa`)));
      let release: (e: Error) => void = () => undefined;
      return {
        write: (chunk) => file.write(chunk),
        close: async () => {
          closing = true;
          setTimeout(() => ac.abort(), 20);
          await new Promise<void>((_, reject) => (release = reject));
        },
        abort: async (reason) => {
          release(new Error('aborted'));
          await file.abort(reason);
        },
      };
    };
    const t0 = Date.now();
    await expect(backupToFile(d, qmp, t.dir, 'full', pool, { signal: ac.signal, openOutput })).rejects.toThrow(/backup cancelled/);
    expect(closing).toBe(true);
    expect(Date.now() - t0).toBeLessThan(15_000);
    expect(await nodeNames(qmp)).toEqual(clean);
    expect((await bitmaps(qmp, 'd0')).map((b) => b.name)).toEqual(before.map((b) => b.name));
    expect(existsSync(path)).toBe(false);
    expect(readdirSync(t.dir).filter((f) => f.endsWith('.partial') || f.endsWith('.fleece'))).toEqual([]);
  }, 30_000);
});
