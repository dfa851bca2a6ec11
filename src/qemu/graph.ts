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
  image?: { 'virtual-size'?: number };
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
      readOnly: n.ro === true,
      detectZeroes: n.detect_zeroes ?? 'off',
      cache: { direct: n.cache?.direct === true, noFlush: n.cache?.['no-flush'] === true },
      bitmaps: (n['dirty-bitmaps'] ?? []).map((b) => ({
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

export interface DrivePlan {
  node: NamedNode;
  /** Named `raw` filter nodes whose `file` child is the drive: redirected through the cbw filter. */
  redirect: NamedNode[];
}

/**
 * Checks that a drive node can be fleeced and finds its parents.
 *
 * QEMU 7.2 has no blockdev-replace, so the only way QMP can put a filter
 * between a running user and a node is blockdev-reopen of a parent node with
 * a new `file` child. We therefore accept parents that are named `raw` nodes
 * (a plain pass-through, which is how we attach the guest-facing export in
 * qemu-storage-daemon) and refuse a device/export attached directly to the
 * drive node, whose writes the filter could not see.
 */
export function planDrive(nodeName: string, nodes: Map<string, NamedNode>, parents: Map<string, ParentEdge[]>): DrivePlan {
  const node = nodes.get(nodeName);
  if (!node) {
    const known = [...nodes.keys()].filter((n) => !n.startsWith(COWSTREAM_NODE_PREFIX)).sort();
    throw new QemuDriveError(`block node '${nodeName}' not found in QEMU (known nodes: ${known.join(', ') || 'none'})`);
  }
  if (node.size <= 0) throw new QemuDriveError(`block node '${nodeName}' has no medium or size 0`);
  const redirect: NamedNode[] = [];
  for (const p of parents.get(nodeName) ?? []) {
    if (p.type === 'block-driver') {
      const pn = nodes.get(p.name);
      if (p.name.startsWith(COWSTREAM_NODE_PREFIX)) {
        throw new QemuDriveError(`block node '${nodeName}' is still used by '${p.name}' from an earlier cowstream backup; another backup is running or one crashed (remove that node with blockdev-del)`);
      }
      if (!pn || pn.drv !== 'raw' || p.role !== 'file') {
        throw new QemuDriveError(`block node '${nodeName}' is the '${p.role}' child of '${p.name}' (${pn?.drv ?? '?'}); pull-mode backup can only redirect 'raw' filter parents (QEMU 7.2 has no blockdev-replace)`);
      }
      redirect.push(pn);
    } else if (p.type === 'block-backend') {
      throw new QemuDriveError(
        `block node '${nodeName}' is attached directly to ${p.name ? `'${p.name}'` : 'a device or export'}; its writes would bypass the copy-before-write filter. ` +
          `Attach the guest through a 'raw' filter node on top of '${nodeName}' (QEMU 7.2 cannot insert a filter above a device's root node over QMP)`,
      );
    } else if (p.type === 'block-job') {
      throw new QemuDriveError(`block node '${nodeName}' is used by a running block job ('${p.name}')`);
    }
  }
  return { node, redirect };
}
