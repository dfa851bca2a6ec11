/**
 * Helpers for allocation maps (DeviceExtent lists): building them without
 * adjacent duplicates, and checking what a device returned before anyone
 * trusts it. One place for the rules of BlockDevice.mapExtents.
 */
import { DeviceError } from '../errors.js';
import type { BlockDevice, DeviceExtent } from './types.js';

/** Appends a run, merging it into the last one when both have the same state. */
export function pushExtent(out: DeviceExtent[], length: number, hole: boolean, zero: boolean): void {
  if (length <= 0) return;
  const z = zero || hole; // holes read as zeroes (DeviceExtent contract)
  const last = out.at(-1);
  if (last && last.hole === hole && last.zero === z) last.length += length;
  else out.push({ length, hole, zero: z });
}

/**
 * Validates the answer of `mapExtents(offset, length)` and clips it to
 * `length`: a non-empty list of positive safe-integer lengths. A device that
 * breaks the contract gets a DeviceError (never a malformed reply on the wire).
 */
export function checkedExtents(extents: unknown, length: number, what: string): DeviceExtent[] {
  if (!Array.isArray(extents) || extents.length === 0) {
    throw new DeviceError(`${what}: allocation map is empty`);
  }
  const out: DeviceExtent[] = [];
  let covered = 0;
  for (const e of extents as unknown[]) {
    if (covered >= length) break;
    const ext = e as Partial<DeviceExtent> | null;
    if (
      ext === null || typeof ext !== 'object' || !Number.isSafeInteger(ext.length) || (ext.length as number) <= 0 ||
      typeof ext.hole !== 'boolean' || typeof ext.zero !== 'boolean'
    ) {
      throw new DeviceError(`${what}: malformed extent ${JSON.stringify(e)}`);
    }
    const n = Math.min(ext.length as number, length - covered);
    pushExtent(out, n, ext.hole, ext.zero);
    covered += n;
  }
  return out;
}

/** Total bytes covered by a list of extents. */
export function extentsLength(extents: readonly DeviceExtent[]): number {
  return extents.reduce((n, e) => n + e.length, 0);
}

/**
 * The allocation map of [start, end) of `dev`, asking again where an answer
 * stops short, checked per `checkedExtents`. A device without a map is all
 * data. Stops early (returning less) once `maxExtents` runs are collected.
 */
export async function mapRange(dev: BlockDevice, start: number, end: number, maxExtents = Infinity): Promise<DeviceExtent[]> {
  const out: DeviceExtent[] = [];
  if (!dev.mapExtents) {
    pushExtent(out, end - start, false, false);
    return out;
  }
  let pos = start;
  while (pos < end && out.length < maxExtents) {
    const got = checkedExtents(await dev.mapExtents(pos, end - pos), end - pos, `allocation map at ${pos}+${end - pos}`);
    for (const e of got) pushExtent(out, e.length, e.hole, e.zero);
    pos += extentsLength(got);
  }
  return out;
}
