import { mkdtemp, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ListingCache } from '../../../src/catalog/listing-cache.js';
import { archiveRecord } from './fixtures.js';

describe('ListingCache', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'cowstream-lc-'));
  });
  afterAll(async () => rm(dir, { recursive: true, force: true }));

  it('keys by object key and ETag, drops vanished keys, writes 0600 in a 0700 directory', async () => {
    const cdir = join(dir, 'c1');
    const c = await ListingCache.open(cdir, 'ep', 'b', 'p');
    const rec = archiveRecord({ hostId: 'h', createdAt: '2026-01-01T00:00:00.000Z' });
    c.set('k1', 'e1', rec);
    c.set('k2', 'e2', archiveRecord({ hostId: 'h', createdAt: '2026-01-01T00:00:00.000Z' }));
    await c.save(new Set(['k1', 'k2']));
    expect((await stat(c.path)).mode & 0o777).toBe(0o600);
    expect((await stat(cdir)).mode & 0o777).toBe(0o700);
    const again = await ListingCache.open(cdir, 'ep', 'b', 'p');
    expect(again.get('k1', 'e1')).toEqual(rec);
    expect(again.get('k1', 'other-etag')).toBeUndefined();
    await again.save(new Set(['k1']));
    expect((await ListingCache.open(cdir, 'ep', 'b', 'p')).size).toBe(1);
    // Another bucket or prefix has its own file.
    expect((await ListingCache.open(cdir, 'ep', 'b', 'other')).size).toBe(0);
    expect((await readdir(cdir)).filter((f) => f.endsWith('.tmp'))).toEqual([]);
  });

  it('ignores a file that does not validate (it came from a bucket) and rewrites it', async () => {
    const cdir = join(dir, 'c2');
    const c = await ListingCache.open(cdir, 'ep', 'b', 'p');
    c.set('k', 'e', archiveRecord({ hostId: 'h', createdAt: '2026-01-01T00:00:00.000Z' }));
    await c.save(new Set(['k']));
    for (const junk of ['not json', JSON.stringify({ version: 1, entries: { k: { etag: 'e', record: { uuid: 'x' } } } }), JSON.stringify({ version: 2 })]) {
      await writeFile(c.path, junk);
      const reopened = await ListingCache.open(cdir, 'ep', 'b', 'p');
      expect(reopened.size).toBe(0);
      expect(reopened.get('k', 'e')).toBeUndefined();
    }
  });
});
