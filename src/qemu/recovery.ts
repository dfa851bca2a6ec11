/**
 * Removes what a killed pull-mode backup left in QEMU (run-record.ts says
 * how its objects are recognised and how a dead owner is told from a live
 * one). In order: its NBD exports, its backup/create jobs (cancelling the
 * backup job takes the job's cbw filter out of the guest's path), the raw
 * parents it had moved onto its own cbw filter (reopened back onto the
 * drive), the NBD server it started, its nodes (parents first), its
 * dirty-bitmap generation (folded back into the previous one, the rule of a
 * failed backup: no dirty bit is lost), and its files.
 */
import { readdir, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { describeError } from '../errors.js';
import { QemuDriveError } from './errors.js';
import { BITMAP_PREFIX, namedNodes, parentsByNode, reopenOptions, type NamedNode } from './graph.js';
import type { QmpClient } from './qmp.js';
import { ownerAlive, parseFleecePath, readRecord, removeRecord, tagOf, type RunRecord } from './run-record.js';

interface Job {
  id: string;
  type: string;
  status: string;
}

const WAIT_MS = 10_000;

/** Cleans every dead run's leftovers; returns one line per run recovered. Throws if a live run owns some. */
export async function recoverLeftovers(qmp: QmpClient, warn: (m: string) => void): Promise<string[]> {
  const nodes = await namedNodes(qmp);
  const jobs = await qmp.execute<Job[]>('query-jobs');
  const exports = await qmp.execute<{ id: string }[]>('query-block-exports');
  const tags = new Set<string>();
  for (const id of [...nodes.keys(), ...jobs.map((j) => j.id), ...exports.map((e) => e.id)]) {
    const t = tagOf(id);
    if (t) tags.add(t);
  }
  const done: string[] = [];
  for (const tag of tags) {
    const owner = await findOwner(tag, nodes);
    if (!owner.record) {
      // Every run writes its record before it creates anything: without one, nothing proves the owner is gone.
      const ids = [...nodes.keys(), ...jobs.map((j) => j.id), ...exports.map((e) => e.id)].filter((id) => tagOf(id) === tag);
      throw new QemuDriveError(
        `QEMU holds cowstream objects whose owner cannot be told (no run record beside their fleecing file): ${[...new Set(ids)].sort().join(', ')}. ` +
          'If no cowstream backup is running on this QEMU, remove them (block-export-del, job-cancel, blockdev-del) or restore the record',
      );
    }
    if (ownerAlive(owner.record)) {
      throw new QemuDriveError(`cowstream backup ${owner.uuid} (pid ${owner.record.pid}) is still running on this QEMU; wait for it or cancel it`);
    }
    await cleanRun(qmp, tag, owner, warn);
    done.push(`removed the leftovers of cowstream backup ${owner.uuid ?? `cowstream-${tag}-*`} (its process is gone)`);
  }
  return done;
}

interface Owner {
  uuid: string | null;
  dir: string | null;
  record: RunRecord | null;
}

async function findOwner(tag: string, nodes: Map<string, NamedNode>): Promise<Owner> {
  for (const n of nodes.values()) {
    if (tagOf(n.nodeName) !== tag || n.drv !== 'file') continue;
    const f = parseFleecePath(n.filename);
    if (f && f.uuid.replace(/-/g, '').endsWith(tag)) return { uuid: f.uuid, dir: f.dir, record: await readRecord(f.dir, f.uuid) };
  }
  return { uuid: null, dir: null, record: null };
}

async function cleanRun(qmp: QmpClient, tag: string, owner: Owner, warn: (m: string) => void): Promise<void> {
  const mine = (id: string): boolean => tagOf(id) === tag;
  const step = async (what: string, fn: () => Promise<unknown>): Promise<void> => {
    try {
      await fn();
    } catch (err) {
      warn(`recovery: ${what}: ${describeError(err)}`);
    }
  };
  // 1. Exports (an NBD client of the dead run may still hold one open: hard).
  for (const e of (await qmp.execute<{ id: string }[]>('query-block-exports')).filter((x) => mine(x.id))) {
    await step(`block-export-del ${e.id}`, () => qmp.execute('block-export-del', { id: e.id, mode: 'hard' }));
  }
  await until(async () => !(await qmp.execute<{ id: string }[]>('query-block-exports')).some((x) => mine(x.id)));
  // 2. Jobs: cancel what still runs, dismiss what concluded.
  for (const j of (await qmp.execute<Job[]>('query-jobs')).filter((x) => mine(x.id))) {
    if (j.status !== 'concluded' && j.status !== 'null') await step(`job-cancel ${j.id}`, () => qmp.execute('job-cancel', { id: j.id }));
  }
  await until(async () => (await qmp.execute<Job[]>('query-jobs')).filter((x) => mine(x.id)).every((x) => x.status === 'concluded' || x.status === 'null'));
  for (const j of (await qmp.execute<Job[]>('query-jobs')).filter((x) => mine(x.id) && x.status === 'concluded')) {
    await step(`job-dismiss ${j.id}`, () => qmp.execute('job-dismiss', { id: j.id }));
  }
  // 3. Raw parents still routed through our cbw filter go back onto the drive
  //    (once the snapshot-access readers above the filter are gone: their
  //    cbw child does not share write permission on the drive).
  let nodes = await namedNodes(qmp);
  let parents = await parentsByNode(qmp);
  for (const n of nodes.values()) {
    if (mine(n.nodeName) && n.drv === 'snapshot-access' && (parents.get(n.nodeName) ?? []).length === 0) {
      await step(`blockdev-del ${n.nodeName}`, () => qmp.execute('blockdev-del', { 'node-name': n.nodeName }));
    }
  }
  nodes = await namedNodes(qmp);
  parents = await parentsByNode(qmp);
  const back: Record<string, unknown>[] = [];
  for (const [child, edges] of childrenOf(parents)) {
    if (!mine(child) || nodes.get(child)?.drv !== 'copy-before-write') continue;
    const drive = edges.find((e) => e.role === 'file')?.child;
    if (!drive) continue;
    for (const p of parents.get(child) ?? []) {
      const pn = nodes.get(p.name);
      if (p.type === 'block-driver' && !mine(p.name) && pn?.drv === 'raw' && p.role === 'file') back.push(reopenOptions(pn, drive));
    }
  }
  if (back.length > 0) await step('blockdev-reopen (restore the drives\' parents)', () => qmp.execute('blockdev-reopen', { options: back }));
  // 4. The NBD server the dead run started (QEMU runs one; it was that run's).
  if (owner.record?.nbdSocket) await step('nbd-server-stop', () => qmp.execute('nbd-server-stop'));
  // 5. Nodes, parents first.
  for (let round = 0; ; round++) {
    nodes = await namedNodes(qmp);
    parents = await parentsByNode(qmp);
    const left = [...nodes.keys()].filter(mine);
    if (left.length === 0) break;
    if (round === 8) throw new QemuDriveError(`cannot remove nodes ${left.join(', ')} left by a killed cowstream backup (remove them with blockdev-del)`);
    const free = left.filter((n) => (parents.get(n) ?? []).length === 0);
    if (free.length === 0) {
      throw new QemuDriveError(`cannot remove nodes ${left.join(', ')} left by a killed cowstream backup: they are still in use (remove them with blockdev-del)`);
    }
    for (const n of free) await step(`blockdev-del ${n}`, () => qmp.execute('blockdev-del', { 'node-name': n }));
  }
  // 6. The dead run's bitmap generation goes back into the previous one.
  if (owner.uuid) {
    const name = `${BITMAP_PREFIX}${owner.uuid}`;
    for (const n of (await namedNodes(qmp)).values()) {
      if (!n.bitmaps.some((b) => b.name === name)) continue;
      const prev = n.bitmaps.filter((b) => b.name.startsWith(BITMAP_PREFIX) && b.name !== name);
      const node = n.nodeName;
      const actions: unknown[] = [];
      if (prev.length === 1) {
        const old = prev[0] as NamedNode['bitmaps'][number];
        if (!old.recording) actions.push({ type: 'block-dirty-bitmap-enable', data: { node, name: old.name } });
        actions.push({ type: 'block-dirty-bitmap-merge', data: { node, target: old.name, bitmaps: [name] } });
      }
      // No single previous generation: the archive of that run may not exist, so the next backup is full.
      actions.push({ type: 'block-dirty-bitmap-remove', data: { node, name } });
      await step(`restoring the dirty bitmaps of ${node}`, () => qmp.execute('transaction', { actions }));
    }
  }
  // 7. Files (only names this tool makes, in the directory QEMU named).
  if (owner.uuid && owner.dir) {
    const dir = owner.dir;
    const files = await readdir(dir).catch(() => [] as string[]);
    for (const f of files) if (parseFleecePath(join(dir, f))?.uuid === owner.uuid) await unlink(join(dir, f)).catch(() => undefined);
    await removeRecord(dir, owner.uuid);
  }
}

function childrenOf(parents: Map<string, { type: string; name: string; role: string }[]>): Map<string, { role: string; child: string }[]> {
  const out = new Map<string, { role: string; child: string }[]>();
  for (const [child, edges] of parents) {
    for (const e of edges) {
      if (e.type !== 'block-driver') continue;
      const list = out.get(e.name) ?? [];
      list.push({ role: e.role, child });
      out.set(e.name, list);
    }
  }
  return out;
}

async function until(cond: () => Promise<boolean>): Promise<void> {
  const deadline = Date.now() + WAIT_MS;
  while (!(await cond())) {
    if (Date.now() > deadline) return;
    await new Promise((r) => setTimeout(r, 50));
  }
}
