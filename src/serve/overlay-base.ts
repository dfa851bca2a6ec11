/**
 * The identity an overlay records for the base it is written over
 * (src/device/overlay-device.ts `baseId`): the served archive and disk. Two
 * archives of one disk have the same size, so size alone cannot tell an
 * overlay that `serve` or the agent reopens over another backup.
 */
export function overlayBaseId(archiveUuid: string, disk: string): string {
  return `${archiveUuid.toLowerCase()}/${disk}`;
}
