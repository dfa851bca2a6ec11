/**
 * Fleecing on a scratch file system that fills up. Linux answers a write
 * that only partly fits with a short count (ENOSPC comes on the next call):
 * a slot written only in part must never count as stored, or its stale
 * tail would be drained into the archive. A real, tiny tmpfs (needs root to
 * mount; skipped otherwise).
 */
import { afterAll, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { FleecingStore } from '../../../src/cbw/fleecing.js';
import { CLUSTER_SIZE } from '../../../src/format/constants.js';
import { DeviceError } from '../../../src/errors.js';

const mnt = mkdtempSync(join(tmpdir(), 'cowstream-fleece-full-'));
let mounted = false;
try {
  // 3.125 slots of 64 KiB: the fourth slot's write is short (8 KiB), then ENOSPC.
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=200k,mode=0700', 'tmpfs', mnt], { stdio: 'ignore' });
  mounted = true;
} catch {
  mounted = false;
}

afterAll(() => {
  if (mounted) execFileSync('umount', ['-l', mnt]);
  rmSync(mnt, { recursive: true, force: true });
});

describe.skipIf(!mounted)('fleecing store on a full file system', () => {
  it('a slot write that does not fit fails; every write that succeeded reads back exactly', async () => {
    const store = await FleecingStore.create({ dir: mnt, maxBytes: 16 * CLUSTER_SIZE });
    const stored: { slot: number; data: Buffer }[] = [];
    let failure: unknown = null;
    for (let i = 0; i < 8 && failure === null; i++) {
      const slot = store.allocate();
      const data = randomBytes(CLUSTER_SIZE);
      try {
        await store.write(slot, data);
        stored.push({ slot, data });
      } catch (err) {
        failure = err;
      }
    }
    try {
      for (const s of stored) expect((await store.read(s.slot, CLUSTER_SIZE).catch(() => Buffer.alloc(0))).equals(s.data), `slot ${s.slot} reads back`).toBe(true);
      expect(stored.length).toBe(3);
      expect(failure).toBeInstanceOf(DeviceError);
      expect((failure as Error).message).toMatch(/ENOSPC|no space/i);
    } finally {
      await store.close();
    }
  });
});
