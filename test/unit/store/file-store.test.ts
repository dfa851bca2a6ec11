import { mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConflictError, NotFoundError, StoreError } from '../../../src/errors.js';
import { CLUSTER_SIZE } from '../../../src/format/constants.js';
import { openArchive } from '../../../src/format/reader.js';
import { ArchiveWriter } from '../../../src/format/writer.js';
import { FileByteSink, FileRangeSource } from '../../../src/store/file.js';
import { TestZstdCompressor } from '../../helpers/format-compressor.js';
import { makeImage } from '../../helpers/format-fixtures.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cowstream-file-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('FileByteSink / FileRangeSource', () => {
  it('writes <path>.partial and makes <path> visible only on close', async () => {
    const p = join(dir, 'a.cwa');
    const s = await FileByteSink.create(p);
    await s.write(Buffer.from('hello '));
    expect(await readdir(dir)).toContain('a.cwa.partial');
    expect(await readdir(dir)).not.toContain('a.cwa');
    await s.write(Buffer.from('world'));
    await s.close();
    expect((await readFile(p)).toString()).toBe('hello world');
    expect(await readdir(dir)).not.toContain('a.cwa.partial');
    await expect(s.write(Buffer.from('x'))).rejects.toBeInstanceOf(StoreError);
  });

  it('refuses to overwrite unless asked', async () => {
    const p = join(dir, 'c.cwa');
    await writeFile(p, 'old');
    await expect(FileByteSink.create(p)).rejects.toBeInstanceOf(ConflictError);
    const s = await FileByteSink.create(p, { overwrite: true });
    await s.write(Buffer.from('new'));
    await s.close();
    expect((await readFile(p)).toString()).toBe('new');
    // Race: the target appears between create and close → ConflictError, partial removed.
    const q = join(dir, 'd.cwa');
    const t = await FileByteSink.create(q);
    await t.write(Buffer.from('mine'));
    await writeFile(q, 'theirs');
    await expect(t.close()).rejects.toBeInstanceOf(ConflictError);
    expect((await readFile(q)).toString()).toBe('theirs');
    expect(await readdir(dir)).not.toContain('d.cwa.partial');
  });

  // Ranges, abort and stdout are covered by test/integration/sink-source-contract.test.ts.
  it('FileRangeSource maps ENOENT to NotFoundError', async () => {
    await expect(FileRangeSource.open(join(dir, 'missing'))).rejects.toBeInstanceOf(NotFoundError);
  });

  it('archive round trip through a real file', async () => {
    const compressor = new TestZstdCompressor();
    const img = makeImage(20 * CLUSTER_SIZE + 3, 4);
    const p = join(dir, 'e.cwa');
    const w = await ArchiveWriter.create({ hostId: 'h', devices: [{ id: 0, name: 'd', size: img.length }], compressor, output: await FileByteSink.create(p) });
    for (let c = 20; c >= 0; c--) await w.writeCluster(0, c, img.subarray(c * CLUSTER_SIZE, Math.min(img.length, (c + 1) * CLUSTER_SIZE)));
    const s = await w.finish();
    const src = await FileRangeSource.open(p);
    expect(src.size).toBe(s.bytesWritten);
    const r = await openArchive(src, { compressor });
    const out = Buffer.alloc(img.length);
    for await (const c of r.clusters()) c.data.copy(out, c.cluster * CLUSTER_SIZE);
    expect(out.equals(img)).toBe(true);
    expect((await r.verify()).ok).toBe(true);
    await r.close();
  });
});
