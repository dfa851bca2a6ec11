/**
 * Feature detection for pull-mode backup. We ask QEMU what it has
 * (query-qmp-schema) instead of trusting a version number alone: distro
 * builds backport and strip things. What we need and when QEMU got it:
 *   - copy-before-write filter with on-cbw-error / cbw-timeout (7.1),
 *   - snapshot-access driver (7.1),
 *   - blockdev-reopen (stable since 6.1), block-export-add (5.2),
 *   - block-dirty-bitmap-add/-merge/-disable/-enable in transactions,
 *   - job graph: blockdev-backup with filter-node-name (4.2), blockdev-create
 *     of qcow2 (4.0).
 */
import type { QmpClient } from './qmp.js';
import { QemuUnsupportedError } from './errors.js';
import type { GraphKind } from './graph.js';

export interface QemuFeatures {
  version: string;
  snapshotAccess: boolean;
  cbwErrorPolicy: boolean;
  blockdevReopen: boolean;
  blockExportAdd: boolean;
  /** x-debug-query-block-graph is used to find a drive's parents. */
  blockGraph: boolean;
  /** blockdev-backup that names its cbw filter (job graph). */
  backupJob: boolean;
  /** blockdev-create (the job graph's qcow2 fleecing overlay). */
  blockdevCreate: boolean;
}

interface SchemaEntry {
  name: string;
  'meta-type': string;
  values?: string[];
  members?: { name: string }[] | { name: string; type?: string }[];
}

const MIN_VERSION = { major: 7, minor: 1 };

/** Reads the schema and lists what pull-mode backup can use. */
export async function detectFeatures(qmp: QmpClient): Promise<QemuFeatures> {
  const schema = await qmp.execute<SchemaEntry[]>('query-qmp-schema', {}, 30_000);
  const commands = new Set<string>();
  const enumValues = new Set<string>();
  const memberNames = new Set<string>();
  for (const e of Array.isArray(schema) ? schema : []) {
    if (e['meta-type'] === 'command') commands.add(e.name);
    if (e['meta-type'] === 'enum' && Array.isArray(e.values)) for (const v of e.values) enumValues.add(v);
    if (e['meta-type'] === 'object' && Array.isArray(e.members)) for (const m of e.members) memberNames.add(m.name);
  }
  const v = qmp.version;
  return {
    version: `${v.major}.${v.minor}.${v.micro}${v.package ? ` (${v.package.trim()})` : ''}`,
    snapshotAccess: enumValues.has('snapshot-access'),
    cbwErrorPolicy: memberNames.has('on-cbw-error') && memberNames.has('cbw-timeout'),
    blockdevReopen: commands.has('blockdev-reopen'),
    blockExportAdd: commands.has('block-export-add'),
    blockGraph: commands.has('x-debug-query-block-graph'),
    backupJob: commands.has('blockdev-backup') && memberNames.has('filter-node-name'),
    blockdevCreate: commands.has('blockdev-create'),
  };
}

/** Throws QemuUnsupportedError naming every missing piece. */
export function requirePullBackup(f: QemuFeatures, graph: GraphKind = 'filter'): void {
  const missing: string[] = [];
  if (graph === 'filter') {
    if (!f.snapshotAccess) missing.push('the snapshot-access block driver');
    if (!f.cbwErrorPolicy) missing.push('copy-before-write on-cbw-error/cbw-timeout');
    if (!f.blockdevReopen) missing.push('blockdev-reopen');
  } else {
    if (!f.backupJob) missing.push('blockdev-backup with filter-node-name');
    if (!f.blockdevCreate) missing.push('blockdev-create');
  }
  if (!f.blockExportAdd) missing.push('block-export-add');
  if (!f.blockGraph) missing.push('x-debug-query-block-graph');
  if (missing.length > 0) {
    throw new QemuUnsupportedError(
      `QEMU ${f.version} is too old for pull-mode backup (needs ${MIN_VERSION.major}.${MIN_VERSION.minor} or newer): missing ${missing.join(', ')}`,
    );
  }
}
