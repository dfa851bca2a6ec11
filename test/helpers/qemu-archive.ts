/** Restore helpers for QEMU pull-mode tests: archive chain (files) → raw image(s). */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Compressor } from '../../src/codec/types.js';
import { buildRestorePlan, sourceOpener } from '../../src/restore/locate.js';
import { restoreArchive } from '../../src/restore/engine.js';

/** Restores the chain ending at `archivePath` into `dir/<device>.raw`; returns device name → bytes. */
export async function restoreChain(archivePath: string, dir: string, compressor: Compressor): Promise<Map<string, Buffer>> {
  const ctx = { store: null, client: null };
  const plan = await buildRestorePlan({ kind: 'file', path: archivePath }, ctx);
  const r = await restoreArchive({ plan, openSource: sourceOpener(ctx), target: dir, compressor, force: true });
  const out = new Map<string, Buffer>();
  for (const d of r.devices) out.set(d.name, await readFile(d.path ?? join(dir, `${d.name}.raw`)));
  return out;
}

/** First differing 4 KiB block, for readable failures. */
export function firstDiff(a: Buffer, b: Buffer): string | null {
  if (a.length !== b.length) return `length ${a.length} != ${b.length}`;
  for (let off = 0; off < a.length; off += 4096) {
    if (!a.subarray(off, off + 4096).equals(b.subarray(off, off + 4096))) return `first difference in block at offset ${off}`;
  }
  return null;
}
