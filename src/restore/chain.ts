/**
 * Incremental chain resolution: from an archive, follow parentUuid links to
 * the full archive, reading only each archive's footer, header and trailer
 * (openArchive does three ranged reads; no extent data is touched).
 *
 * Where a parent lives is the caller's business (`locateParent`): the CLI
 * looks next to the child (same S3 host prefix, or same directory), the
 * catalogue looks it up in DynamoDB.
 */
import { NotFoundError, RestoreError } from '../errors.js';
import { type ArchiveReader, openArchive } from '../format/reader.js';
import type { RangeSource } from '../format/sink.js';
import type { ArchiveLocator, PlannerArchive } from './plan.js';

/** Chains deeper than this are refused (cycle or runaway input). */
const MAX_CHAIN_DEPTH = 10_000;

export function describeLocator(loc: ArchiveLocator): string {
  return loc.kind === 's3' ? `s3://${loc.bucket}/${loc.key}` : loc.path;
}

/**
 * Reads header + footer + trailer of one archive into the planner's input.
 * The source is closed afterwards.
 */
async function readPlannerArchive(source: RangeSource, locator: ArchiveLocator): Promise<PlannerArchive> {
  try {
    return plannerArchiveOf(await openArchive(source), locator);
  } finally {
    await source.close().catch(() => undefined);
  }
}

/** The planner's view of an opened archive: header identity and index runs. */
export function plannerArchiveOf(reader: ArchiveReader, locator: ArchiveLocator): PlannerArchive {
  {
    const h = reader.header;
    return {
      uuid: h.uuid,
      parentUuid: h.parentUuid,
      hostId: h.hostId,
      createdAt: h.createdAt,
      locator,
      size: reader.source.size,
      keyFingerprint: h.keyFingerprint,
      devices: h.devices.map((d) => ({ id: d.id, name: d.name, size: d.size })),
      dataRuns: reader.index.dataRuns.map((r) => ({
        deviceId: r.deviceId,
        firstCluster: r.firstCluster,
        count: r.count,
        extentOffset: r.extentOffset,
        extentLength: r.extentLength,
      })),
      zeroRuns: reader.index.zeroRuns.map((r) => ({ deviceId: r.deviceId, firstCluster: r.firstCluster, count: r.count })),
    };
  }
}

export interface ChainDeps {
  /** Opens a RangeSource for a locator (S3 ranged GETs or a local file). */
  openSource(locator: ArchiveLocator): Promise<RangeSource>;
  /** Finds the parent archive `uuid` of `child`; null when it cannot be found. */
  locateParent(uuid: string, child: PlannerArchive): Promise<ArchiveLocator | null>;
  maxDepth?: number;
}

/**
 * Resolves the chain ending at `start`: newest first, the full archive last.
 * Errors name the missing or inconsistent link.
 */
export async function resolveChain(start: ArchiveLocator, deps: ChainDeps): Promise<PlannerArchive[]> {
  const chain: PlannerArchive[] = [];
  const seen = new Set<string>();
  const maxDepth = deps.maxDepth ?? MAX_CHAIN_DEPTH;
  let loc: ArchiveLocator | null = start;
  let expectUuid: string | null = null;
  while (loc) {
    if (chain.length >= maxDepth) throw new RestoreError(`archive chain deeper than ${maxDepth} archives`);
    const arch = await readPlannerArchive(await deps.openSource(loc), loc);
    if (expectUuid !== null && arch.uuid !== expectUuid) {
      throw new RestoreError(`${describeLocator(loc)} holds archive ${arch.uuid}, expected parent ${expectUuid}`);
    }
    if (seen.has(arch.uuid)) throw new RestoreError(`archive chain has a cycle at ${arch.uuid}`);
    seen.add(arch.uuid);
    const child = chain[chain.length - 1];
    if (child && child.hostId !== arch.hostId) {
      throw new RestoreError(`archive ${child.uuid} (host ${child.hostId}) has parent ${arch.uuid} from another host (${arch.hostId})`);
    }
    chain.push(arch);
    if (arch.parentUuid === null) break;
    expectUuid = arch.parentUuid;
    loc = await deps.locateParent(arch.parentUuid, arch);
    if (!loc) {
      throw new NotFoundError(`parent archive ${arch.parentUuid} of ${arch.uuid} not found (looked up from ${describeLocator(arch.locator)})`);
    }
  }
  return chain;
}
