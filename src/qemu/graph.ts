/**
 * Reading QEMU's block graph: named nodes (query-named-block-nodes) and
 * parent edges (x-debug-query-block-graph), to validate --drive nodes and to
 * find the parents that must be redirected through the copy-before-write
 * filter.
 */
import type { QmpClient } from './qmp.js';
import { QemuDriveError } from './errors.js';

export interface NamedNode {
  nodeName: string;
  drv: string;
  size: number;
  /** Image file name as QEMU reports it (a file node's path; JSON for composed nodes). */
  filename: string;
  readOnly: boolean;
  detectZeroes: string;
  cache: { direct: boolean; noFlush: boolean };
  bitmaps: { name: string; recording: boolean; persistent: boolean; busy: boolean; granularity: number; count: number }[];
}

export interface ParentEdge {
  /** 'block-driver' (a named node), 'block-backend' (a device or export), 'block-job'. */
  type: string;
  /** Parent node name (block-driver) or backend name (may be ''). */
  name: string;
  /** Child role, e.g. 'file', 'backing', 'root'. */
  role: string;
}

interface RawNode {
  'node-name': string;
  drv: string;
  ro: boolean;
  detect_zeroes?: string;
  cache?: { direct?: boolean; 'no-flush'?: boolean };
  image?: { 'virtual-size'?: number; filename?: string };
  'dirty-bitmaps'?: { name: string; recording?: boolean; persistent?: boolean; busy?: boolean; granularity?: number; count?: number }[];
}

export async function namedNodes(qmp: QmpClient): Promise<Map<string, NamedNode>> {
  const raw = await qmp.execute<RawNode[]>('query-named-block-nodes', { flat: true });
  const out = new Map<string, NamedNode>();
  for (const n of raw) {
    out.set(n['node-name'], {
      nodeName: n['node-name'],
      drv: n.drv,
      size: Number(n.image?.['virtual-size'] ?? 0),
      filename: typeof n.image?.filename === 'string' ? n.image.filename : '',
      readOnly: n.ro === true,
      detectZeroes: n.detect_zeroes ?? 'off',
      cache: { direct: n.cache?.direct === true, noFlush: n.cache?.['no-flush'] === true },
      // A copy-before-write filter keeps an unnamed bitmap on its drive: not one of ours, and no name to use.
      bitmaps: (n['dirty-bitmaps'] ?? []).filter((b) => typeof b.name === 'string').map((b) => ({
        name: b.name,
        recording: b.recording === true,
        persistent: b.persistent === true,
        busy: b.busy === true,
        granularity: Number(b.granularity ?? 0),
        count: Number(b.count ?? 0),
      })),
    });
  }
  return out;
}

interface RawGraph {
  nodes: { id: number; type: string; name: string }[];
  edges: { parent: number; child: number; name: string }[];
}

/** Parents of every named node, from x-debug-query-block-graph. */
export async function parentsByNode(qmp: QmpClient): Promise<Map<string, ParentEdge[]>> {
  const g = await qmp.execute<RawGraph>('x-debug-query-block-graph');
  const byId = new Map(g.nodes.map((n) => [n.id, n]));
  const out = new Map<string, ParentEdge[]>();
  for (const e of g.edges) {
    const child = byId.get(e.child);
    const parent = byId.get(e.parent);
    if (!child || !parent || child.type !== 'block-driver') continue;
    const list = out.get(child.name) ?? [];
    list.push({ type: parent.type, name: parent.name, role: e.name });
    out.set(child.name, list);
  }
  return out;
}

/** Node names this tool creates (so a crashed run's leftovers are recognisable). */
export const COWSTREAM_NODE_PREFIX = 'cowstream-';

/** Dirty bitmaps this tool keeps: `cowstream-<uuid of the archive whose snapshot point started it>`. */
export const BITMAP_PREFIX = 'cowstream-';

/**
 * How the copy-before-write filter gets into the guest's write path:
 *  - 'filter': every parent of the drive is a named `raw` node; ONE
 *    blockdev-reopen of those parents moves them onto our own cbw filter
 *    (on-cbw-error=break-snapshot: a failing fleecing store never fails a
 *    guest write), read through snapshot-access.
 *  - 'job': a device or export is attached to the drive directly (how libvirt
 *    and most command lines attach disks). QEMU 7.2 cannot move such a parent
 *    over QMP, but a `blockdev-backup` job with sync=none inserts its own cbw
 *    filter above the drive (replacing every parent inside QEMU) and copies
 *    old data into a qcow2 fleecing overlay whose backing is the drive; that
 *    overlay, exported read-only, is the disk at the snapshot point (the
 *    libvirt pull-mode design, QEMU iotest image-fleecing).
 */
export type GraphKind = 'filter' | 'job';

export interface DrivePlan {
  node: NamedNode;
  /** Graph this drive needs on its own. */
  graph: GraphKind;
  /** Named `raw` filter nodes whose `file` child is the drive (filter graph: redirected through the cbw filter). */
  redirect: NamedNode[];
  /** Why the job graph is needed (a direct attachment), for the output. */
  reason: string | null;
}

/**
 * Checks that a drive node can be fleeced and finds its parents. Refuses a
 * drive used by a block job (a second cbw filter would race it) and a drive
 * still carrying leftovers of a cowstream run (recovery removes those first).
 */
export function planDrive(nodeName: string, nodes: Map<string, NamedNode>, parents: Map<string, ParentEdge[]>): DrivePlan {
  const node = nodes.get(nodeName);
  if (!node) {
    const known = [...nodes.keys()].filter((n) => !n.startsWith(COWSTREAM_NODE_PREFIX)).sort();
    throw new QemuDriveError(`block node '${nodeName}' not found in QEMU (known nodes: ${known.join(', ') || 'none'})`);
  }
  if (node.size <= 0) throw new QemuDriveError(`block node '${nodeName}' has no medium or size 0`);
  const redirect: NamedNode[] = [];
  let reason: string | null = null;
  for (const p of parents.get(nodeName) ?? []) {
    if (p.name.startsWith(COWSTREAM_NODE_PREFIX)) {
      throw new QemuDriveError(`block node '${nodeName}' is still used by '${p.name}' of another cowstream backup, which is running`);
    }
    if (p.type === 'block-driver') {
      const pn = nodes.get(p.name);
      if (pn && pn.drv === 'raw' && p.role === 'file') redirect.push(pn);
      else reason ??= `'${nodeName}' is the '${p.role}' child of '${p.name}' (${pn?.drv ?? '?'})`;
    } else if (p.type === 'block-backend') {
      reason ??= `'${nodeName}' is attached directly to ${p.name ? `'${p.name}'` : 'a device or export'}`;
    } else if (p.type === 'block-job') {
      throw new QemuDriveError(`block node '${nodeName}' is used by a running block job ('${p.name}')`);
    }
  }
  return { node, graph: reason === null ? 'filter' : 'job', redirect, reason };
}

/**
 * One graph for the whole backup, so every drive shares one snapshot point:
 * the filter graph's point is one blockdev-reopen, the job graph's one
 * transaction, and the two cannot be combined. The job graph works for any
 * drive, so one directly attached drive moves the whole backup to it.
 */
export function chooseGraph(plans: DrivePlan[]): { graph: GraphKind; reason: string } {
  const direct = plans.filter((p) => p.graph === 'job');
  if (direct.length === 0) return { graph: 'filter', reason: 'every drive is attached through a raw filter node' };
  return { graph: 'job', reason: `${direct.map((p) => p.reason).join('; ')}: a backup job inserts the copy-before-write filter` };
}

/** blockdev-reopen options for a raw parent: same options, new `file` child. */
export function reopenOptions(parent: NamedNode, file: string): Record<string, unknown> {
  // blockdev-reopen resets every option not given to its default, so repeat the ones QEMU reports.
  return {
    driver: 'raw',
    'node-name': parent.nodeName,
    file,
    'read-only': parent.readOnly,
    'detect-zeroes': parent.detectZeroes,
    cache: { direct: parent.cache.direct, 'no-flush': parent.cache.noFlush },
  };
}
