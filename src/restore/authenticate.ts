/**
 * Before a restore with a key touches its target, every archive of the plan's
 * chain is opened with the key (docs/FORMAT.md "What a reader with the key
 * checks") and the plan is recomputed from the authenticated indexes: the plan
 * is built without the key (by the CLI or the catalogue, which stores it in
 * the bucket), so it is only trusted when it says exactly what they say.
 */
import { keyFingerprint } from '../codec/crypto.js';
import { EncryptionKeyError } from '../errors.js';
import { AuthenticationError } from '../format/errors.js';
import { openArchive } from '../format/reader.js';
import type { RangeSource } from '../format/sink.js';
import { describeLocator, plannerArchiveOf } from './chain.js';
import { planRestore, type ArchiveLocator, type PlannerArchive, type RestorePlan } from './plan.js';

export interface AuthenticatedChain {
  /** Per chain index: the v2 header tag bound into its extents (null for v1). */
  headerTags: (Buffer | null)[];
}

/** What a plan says, independent of how its extents are grouped into ranges. */
function planContent(plan: RestorePlan): { devices: string; extents: string[] } {
  const extents: string[] = [];
  for (const r of plan.ranges) for (const e of r.extents) extents.push(`${r.archive}@${e.offset}+${e.length}:${JSON.stringify(e.runs)}`);
  extents.sort();
  return { devices: JSON.stringify(plan.devices), extents };
}

async function openLink(plan: RestorePlan, i: number, key: Buffer, openSource: (l: ArchiveLocator) => Promise<RangeSource>): Promise<{ arch: PlannerArchive; tag: Buffer | null }> {
  const link = plan.chain[i]!;
  const what = `archive ${link.uuid} (${describeLocator(link.locator)})`;
  const source = await openSource(link.locator);
  try {
    const reader = await openArchive(source, { key });
    const h = reader.header;
    if (h.uuid !== link.uuid || h.parentUuid !== link.parentUuid || source.size !== link.size) {
      throw new AuthenticationError(`${what}: the restore plan says uuid ${link.uuid}, parent ${link.parentUuid}, ${link.size} bytes; the authenticated archive is ${h.uuid}, parent ${h.parentUuid}, ${source.size} bytes`);
    }
    return { arch: plannerArchiveOf(reader, link.locator), tag: reader.headerTag };
  } finally {
    await source.close().catch(() => undefined);
  }
}

/**
 * Authenticates every archive of `plan.chain` under `key` and checks the plan
 * against them. Throws EncryptionKeyError (wrong key, unencrypted archive)
 * or AuthenticationError naming the archive and the part that failed.
 */
export async function authenticatePlan(plan: RestorePlan, key: Buffer, openSource: (l: ArchiveLocator) => Promise<RangeSource>): Promise<AuthenticatedChain> {
  if (plan.chain.length === 0) throw new EncryptionKeyError('restore plan has no archives');
  const archives: PlannerArchive[] = [];
  const headerTags: (Buffer | null)[] = [];
  for (let i = 0; i < plan.chain.length; i++) {
    const { arch, tag } = await openLink(plan, i, key, openSource);
    if (i > 0 && archives[i - 1]!.hostId !== arch.hostId) {
      throw new AuthenticationError(`archive ${arch.uuid} is from host ${arch.hostId}, its child ${archives[i - 1]!.uuid} from ${archives[i - 1]!.hostId}`);
    }
    archives.push(arch);
    headerTags.push(tag);
  }
  if (plan.archiveUuid !== archives[0]!.uuid || plan.hostId !== archives[0]!.hostId) {
    throw new AuthenticationError(`restore plan is of archive ${plan.archiveUuid} (host ${plan.hostId}), its chain starts at ${archives[0]!.uuid} (host ${archives[0]!.hostId})`);
  }
  const expected = planContent(planRestore(archives, { devices: plan.devices.map((d) => d.name) }));
  const given = planContent(plan);
  if (expected.devices !== given.devices || expected.extents.length !== given.extents.length || expected.extents.some((e, k) => e !== given.extents[k])) {
    throw new AuthenticationError(
      `restore plan of archive ${plan.archiveUuid} does not match the authenticated indexes of its chain (devices, zero runs or extents differ): the plan or an index was altered`,
    );
  }
  return { headerTags };
}

/**
 * Names a missing or wrong key before anything is read or written: every
 * encrypted archive of the chain must expect the fingerprint of `key`.
 */
export function checkPlanKey(plan: RestorePlan, key: Buffer | undefined): void {
  const encrypted = plan.chain.filter((c) => c.keyFingerprint);
  if (encrypted.length === 0) return;
  const want = encrypted[0]!.keyFingerprint!;
  if (!key) throw new EncryptionKeyError(`archive ${encrypted[0]!.uuid} is encrypted (key fingerprint ${want}); pass --key FILE`);
  const got = keyFingerprint(key);
  const wrong = encrypted.find((c) => c.keyFingerprint !== got);
  if (wrong) throw new EncryptionKeyError(`wrong key: archive ${wrong.uuid} expects key fingerprint ${wrong.keyFingerprint}, given key has ${got}`);
}
