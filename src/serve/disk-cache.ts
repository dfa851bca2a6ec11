/**
 * Optional on-disk cache of fetched extents, as stored in the archive
 * (compressed, and encrypted when the archive is: no plaintext reaches the
 * disk). A hit is decoded again, so every digest is checked again and a
 * cache file altered by another local user is caught like a damaged extent.
 *
 * The cache lives in a fresh directory made by mkdtemp (mode 0700) inside the
 * directory the user names, so no other user can plant or swap files in it;
 * files are created exclusively with mode 0600. Bounded by `limitBytes`,
 * least recently used evicted first; removed on close.
 */
import { mkdtemp, readFile, rm, unlink, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';

export class DiskCache {
  /** key → size; `ready` once its file is completely written. */
  private readonly entries = new Map<string, { size: number; ready: boolean }>();
  private used = 0;
  private hitCount = 0;
  private readonly pending = new Set<Promise<void>>();

  private constructor(
    readonly dir: string,
    readonly limitBytes: number,
  ) {}

  static async open(parent: string, limitBytes: number): Promise<DiskCache> {
    const dir = await mkdtemp(join(resolve(parent), 'cowstream-serve-'));
    return new DiskCache(dir, limitBytes);
  }

  private fileOf(key: string): string {
    // Keys are "<chain index>@<offset>": digits and one '@' only.
    return join(this.dir, key.replace('@', '-'));
  }

  /** The stored bytes of `key`, or undefined (never cached, evicted, or unreadable). */
  async get(key: string): Promise<Buffer | undefined> {
    const e = this.entries.get(key);
    if (e === undefined || !e.ready) return undefined;
    this.entries.delete(key);
    this.entries.set(key, e);
    try {
      const data = await readFile(this.fileOf(key));
      this.hitCount++;
      return data;
    } catch {
      this.forget(key);
      return undefined;
    }
  }

  /** Stores `data` in the background (a failed write only loses the cache entry). */
  put(key: string, data: Buffer): void {
    if (data.length > this.limitBytes || this.entries.has(key)) return;
    const evicted: string[] = [];
    for (const k of this.entries.keys()) {
      if (this.used + data.length <= this.limitBytes) break;
      this.forget(k);
      evicted.push(k);
    }
    const entry = { size: data.length, ready: false };
    this.entries.set(key, entry);
    this.used += data.length;
    const work = (async (): Promise<void> => {
      for (const k of evicted) await unlink(this.fileOf(k)).catch(() => undefined);
      try {
        await writeFile(this.fileOf(key), data, { flag: 'wx', mode: 0o600 });
        entry.ready = true;
      } catch {
        if (this.entries.get(key) === entry) this.forget(key);
      }
    })();
    this.pending.add(work);
    void work.finally(() => this.pending.delete(work));
  }

  /** Drops an entry whose bytes did not decode. */
  drop(key: string): void {
    if (!this.entries.has(key)) return;
    this.forget(key);
    const work = unlink(this.fileOf(key)).catch(() => undefined);
    this.pending.add(work);
    void work.finally(() => this.pending.delete(work));
  }

  private forget(key: string): void {
    const e = this.entries.get(key);
    if (e === undefined) return;
    this.entries.delete(key);
    this.used -= e.size;
  }

  get bytes(): number {
    return this.used;
  }

  get hits(): number {
    return this.hitCount;
  }

  async close(): Promise<void> {
    await Promise.all([...this.pending]);
    this.entries.clear();
    this.used = 0;
    await rm(this.dir, { recursive: true, force: true });
  }
}
