/**
 * The local cache of bucket listings: archive summaries keyed by object key
 * and ETag, so a second listing of N archives costs one LIST plus what
 * changed. An object's summary never changes while its ETag does not.
 *
 * The file is the user's own (0600, in a 0700 directory), but what it holds
 * came from a bucket, so it is validated on load like any other input; a
 * file that does not validate is ignored (and rewritten), never trusted.
 */
import { createHash } from 'node:crypto';
import { mkdir, readFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';
import { z } from 'zod';
import { writeFileAtomic } from '../device/durable.js';
import { archiveRecordSchema, type ArchiveRecord } from './records.js';

const cacheFileSchema = z.object({
  version: z.literal(1),
  entries: z.record(z.string(), z.object({ etag: z.string(), record: archiveRecordSchema })),
});

/** `$XDG_CACHE_HOME/cowstream` or `~/.cache/cowstream`. */
export function defaultCacheDir(): string {
  return join(process.env.XDG_CACHE_HOME || join(homedir(), '.cache'), 'cowstream');
}

export class ListingCache {
  private entries = new Map<string, { etag: string; record: ArchiveRecord }>();
  private dirty = false;

  private constructor(readonly path: string) {}

  /** The cache of one endpoint + bucket + prefix, under `dir`. */
  static async open(dir: string, endpoint: string, bucket: string, prefix: string): Promise<ListingCache> {
    const id = createHash('sha256').update(`${endpoint}\n${bucket}\n${prefix}`).digest('hex').slice(0, 32);
    const cache = new ListingCache(join(dir, `listing-${id}.json`));
    const text = await readFile(cache.path, 'utf8').catch(() => null);
    if (text !== null) {
      let parsed: unknown;
      try {
        parsed = JSON.parse(text);
      } catch {
        parsed = null;
      }
      const r = cacheFileSchema.safeParse(parsed);
      if (r.success) cache.entries = new Map(Object.entries(r.data.entries));
      else cache.dirty = true;
    }
    return cache;
  }

  get(key: string, etag: string): ArchiveRecord | undefined {
    const e = this.entries.get(key);
    return e && e.etag === etag ? structuredClone(e.record) : undefined;
  }

  set(key: string, etag: string, record: ArchiveRecord): void {
    this.entries.set(key, { etag, record: structuredClone(record) });
    this.dirty = true;
  }

  get size(): number {
    return this.entries.size;
  }

  /** Drops keys no longer in the bucket, then writes atomically (writeFileAtomic), mode 0600. */
  async save(present: Set<string>): Promise<void> {
    for (const key of this.entries.keys()) {
      if (!present.has(key)) {
        this.entries.delete(key);
        this.dirty = true;
      }
    }
    if (!this.dirty) return;
    await mkdir(dirname(this.path), { recursive: true, mode: 0o700 });
    await writeFileAtomic(this.path, JSON.stringify({ version: 1, entries: Object.fromEntries(this.entries) }));
    this.dirty = false;
  }
}
