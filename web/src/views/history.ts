/** One host's disk over time: charts, chains and every archive. */
import { listArchives, type ArchiveRecord } from '../api.js';
import { backupsChart, growthChart } from '../chart.js';
import { h, link, replace } from '../dom.js';
import { formatBytes, kind, logicalBytes, ratio, short, when } from '../format.js';
import { statusBadge, table, type View } from './common.js';

const MAX_ARCHIVES = 2000;

const plural = (n: number, word: string): string => `${n} ${word}${n === 1 ? '' : 's'}`;

/** Chain number of each archive (1 = the oldest full), following parents within the list. */
function chainNumbers(oldestFirst: ArchiveRecord[]): Map<string, number> {
  const byId = new Map(oldestFirst.map((a) => [a.uuid, a]));
  const roots = new Map<string, number>();
  const out = new Map<string, number>();
  for (const a of oldestFirst) {
    let r = a;
    for (let hops = 0; r.parentUuid && byId.has(r.parentUuid) && hops < 10_000; hops++) r = byId.get(r.parentUuid)!;
    if (!roots.has(r.uuid)) roots.set(r.uuid, roots.size + 1);
    out.set(a.uuid, roots.get(r.uuid)!);
  }
  return out;
}

export const historyView: View = async ({ root, signal }, host, disk) => {
  const { items, truncated } = await listArchives(host!, disk!, MAX_ARCHIVES);
  const oldestFirst = [...items].reverse();
  const chains = chainNumbers(oldestFirst);
  const fulls = items.filter((a) => a.parentUuid === null).length;
  const stored = items.reduce((s, a) => s + a.bytesStored, 0);
  const rows = items.map((a) =>
    h(
      'tr',
      { 'data-uuid': a.uuid, class: `chain-${(chains.get(a.uuid)! % 2) + 1}` },
      h('td', { title: a.createdAt }, link(`#/archive/${a.uuid}`, when(a.createdAt))),
      h('td', null, kind(a)),
      h('td', { class: 'num' }, `#${chains.get(a.uuid)}`, a.chainDepth ? ` · depth ${a.chainDepth}` : ''),
      h('td', null, a.parentUuid ? link(`#/archive/${a.parentUuid}`, short(a.parentUuid)) : '—'),
      h('td', { class: 'num', 'data-stored': a.bytesStored }, formatBytes(a.bytesStored)),
      h('td', { class: 'num' }, formatBytes(logicalBytes(a))),
      h('td', { class: 'num' }, ratio(a)),
      h('td', null, statusBadge(a.status)),
      h('td', { title: a.lastVerifiedAt ?? '' }, a.lastVerifiedAt ? when(a.lastVerifiedAt) : 'never'),
    ),
  );
  const charts = h('section', { class: 'charts', 'aria-label': 'Charts' });
  replace(
    root,
    h('p', { class: 'crumbs' }, link('#/hosts', 'Hosts'), ' › ', host!, ' › ', disk!),
    h('h1', null, `${host} / ${disk}`),
    h(
      'p',
      { class: 'summary' },
      `${items.length} archives (${fulls} full, ${items.length - fulls} incremental) in ${plural(new Set(chains.values()).size, 'chain')}, ${formatBytes(stored)} stored`,
      truncated ? ` — only the newest ${MAX_ARCHIVES} are shown` : '',
    ),
    charts,
    h('h2', null, 'Archives, newest first'),
    items.length ? table(['Taken', 'Type', 'Chain', 'Depends on', 'Stored', 'Logical', 'Ratio', 'Status', 'Verified'], rows, { id: 'archives', class: 'grid' }) : h('p', null, 'No archives of this disk.'),
  );
  if (items.length === 0) return;
  const c1 = backupsChart(charts, oldestFirst, (a) => (location.hash = `#/archive/${a.uuid}`));
  const c2 = growthChart(charts, oldestFirst);
  signal.addEventListener('abort', () => {
    c1.destroy();
    c2.destroy();
  });
};
