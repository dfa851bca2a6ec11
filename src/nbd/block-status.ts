/**
 * NBD_CMD_BLOCK_STATUS for the base:allocation context, answered from a
 * device's allocation map. Rules of proto.md this enforces on whatever the
 * device returned:
 *  - descriptors start at the request offset, are contiguous and non-empty;
 *  - their lengths add up to at most the request length (a shorter answer is
 *    allowed: the client asks again for the rest);
 *  - with NBD_CMD_FLAG_REQ_ONE, exactly one descriptor;
 *  - lengths are multiples of the advertised minimum block size (except the
 *    tail at the end of the export): a block that mixes states is reported
 *    with only the flags all its parts share (HOLE/ZERO are claims, so
 *    dropping one is always correct, adding one never is);
 *  - a bounded number of descriptors per reply (the server MAY send fewer).
 * Without mapExtents every byte is reported allocated with unknown contents
 * (status 0), which is always a correct answer.
 */
import { checkedExtents } from '../device/extents.js';
import type { BlockDevice, DeviceExtent } from '../device/types.js';
import { NBD_STATE_HOLE, NBD_STATE_ZERO, type BlockStatusExtent } from './protocol.js';

/** At most this many descriptors per reply (8 bytes each: 128 KiB of payload). */
export const MAX_BLOCK_STATUS_EXTENTS = 16 * 1024;

export interface BlockStatusQuery {
  offset: number;
  length: number;
  /** NBD_CMD_FLAG_REQ_ONE: exactly one descriptor. */
  reqOne: boolean;
  /** Advertised minimum block size (1 = byte granularity); offset and length are multiples of it. */
  granularity: number;
  maxExtents?: number;
}

/** The base:allocation descriptors for one request. Throws what mapExtents throws, or DeviceError for a bad map. */
export async function baseAllocation(dev: BlockDevice, q: BlockStatusQuery): Promise<BlockStatusExtent[]> {
  if (!dev.mapExtents) return [{ length: q.length, flags: 0 }];
  const raw = await dev.mapExtents(q.offset, q.length);
  const extents = checkedExtents(raw, q.length, `allocation map at ${q.offset}+${q.length}`);
  const max = q.reqOne ? 1 : (q.maxExtents ?? MAX_BLOCK_STATUS_EXTENTS);
  return descriptors(extents, q.length, q.granularity).slice(0, max);
}

function stateFlags(e: DeviceExtent): number {
  return (e.hole ? NBD_STATE_HOLE | NBD_STATE_ZERO : 0) | (e.zero ? NBD_STATE_ZERO : 0);
}

/**
 * Extents (already checked, total <= length) → descriptors aligned to
 * `granularity`, adjacent equal flags merged.
 */
export function descriptors(extents: readonly DeviceExtent[], length: number, granularity: number): BlockStatusExtent[] {
  const g = Math.max(1, granularity);
  // [start, end, flags] relative to the request offset; ends rounded up to g
  // (capped at length), so a block that straddles two extents is ANDed.
  const runs: Array<{ start: number; end: number; flags: number }> = [];
  let pos = 0;
  for (const e of extents) {
    let s = pos;
    const end = pos + e.length;
    const f = stateFlags(e);
    pos = end;
    const last = runs.at(-1);
    if (last && last.end > s) {
      last.flags &= f;
      if (end <= last.end) continue;
      s = last.end;
    }
    const alignedEnd = Math.floor(end / g) * g;
    if (alignedEnd > s) runs.push({ start: s, end: alignedEnd, flags: f });
    if (end > Math.max(s, alignedEnd)) {
      const bs = Math.max(s, alignedEnd);
      runs.push({ start: bs, end: Math.min(bs + g, length), flags: f });
    }
  }
  // The map may stop short of `length` inside a block: the unreported bytes of
  // that block are unknown, so the block cannot claim anything.
  const last = runs.at(-1);
  if (last && last.end > pos) {
    const cut = Math.floor(pos / g) * g;
    if (cut > last.start) last.end = cut;
    else if (runs.length > 1) runs.pop();
    else last.flags = 0;
  }
  const out: BlockStatusExtent[] = [];
  for (const r of runs) {
    const prev = out.at(-1);
    if (prev && prev.flags === r.flags) prev.length += r.end - r.start;
    else out.push({ length: r.end - r.start, flags: r.flags });
  }
  return out;
}
