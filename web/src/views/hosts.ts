/** Every host, and per disk the age of its last good backup against a freshness threshold. */
import { api, listArchives, GOOD_STATUSES, type ArchiveRecord, type HostInfo } from '../api.js';
import { h, link, replace } from '../dom.js';
import { age, formatBytes, freshness, freshnessThreshold, kind, setFreshnessThreshold, when, type Freshness } from '../format.js';
import { errorBox, statusBadge, table, type View } from './common.js';

/** Archives read per host to find each disk's newest one. */
const ARCHIVES_PER_HOST = 500;

interface DiskRow {
  host: HostInfo;
  disk: string | null;
  lastGood: ArchiveRecord | null;
  newest: ArchiveRecord | null;
  size: number | null;
}

function diskRows(host: HostInfo, archives: ArchiveRecord[]): DiskRow[] {
  const byDisk = new Map<string, DiskRow>();
  for (const a of archives) {
    for (const d of a.devices) {
      let row = byDisk.get(d.name);
      if (!row) byDisk.set(d.name, (row = { host, disk: d.name, lastGood: null, newest: a, size: d.size }));
      if (!row.lastGood && GOOD_STATUSES.includes(a.status)) row.lastGood = a;
    }
  }
  const rows = [...byDisk.values()].sort((x, y) => x.disk!.localeCompare(y.disk!));
  return rows.length > 0 ? rows : [{ host, disk: null, lastGood: null, newest: null, size: null }];
}

const LABEL: Record<Freshness, string> = { fresh: 'fresh', late: 'late', stale: 'stale', none: 'no backup' };

function renderRow(r: DiskRow, thresholdH: number, now: number): HTMLTableRowElement {
  const ageMs = r.lastGood ? now - Date.parse(r.lastGood.createdAt) : null;
  const f = freshness(ageMs, thresholdH);
  const schedule = [r.host.schedule, r.host.nextRunAt ? `next ${when(r.host.nextRunAt)}` : undefined].filter(Boolean).join(' · ');
  return h(
    'tr',
    { 'data-host': r.host.hostId, 'data-disk': r.disk ?? '', 'data-freshness': f },
    h('th', { scope: 'row' }, r.host.hostId),
    h('td', null, r.disk ?? '—'),
    h('td', { class: 'num' }, r.size === null ? '—' : formatBytes(r.size)),
    h(
      'td',
      { class: 'age' },
      h('span', { class: `badge fresh-${f}`, 'data-age': '' }, ageMs === null ? LABEL.none : `${age(ageMs)} ago`),
      ' ',
      h('span', { class: 'sr-hint' }, ageMs === null ? '' : `(${LABEL[f]})`),
    ),
    h('td', { title: r.lastGood?.createdAt ?? '' }, r.lastGood ? link(`#/archive/${r.lastGood.uuid}`, when(r.lastGood.createdAt)) : '—'),
    h('td', null, r.newest ? [kind(r.newest), ' ', statusBadge(r.newest.status)] : '—'),
    h('td', { class: 'num', 'data-stored': r.lastGood?.bytesStored ?? '' }, r.lastGood ? formatBytes(r.lastGood.bytesStored) : '—'),
    h('td', { class: 'num' }, r.lastGood ? String(r.lastGood.chainDepth) : '—'),
    h('td', null, schedule || h('span', { class: 'muted', title: 'the agent does not report a schedule' }, 'not reported')),
    h('td', null, r.disk ? link(`#/history/${encodeURIComponent(r.host.hostId)}/${encodeURIComponent(r.disk)}`, 'History') : ''),
  );
}

export const hostsView: View = async ({ root }) => {
  const hosts = (await api.hosts()).items;
  const perHost = await Promise.all(
    hosts.map(async (host) => {
      try {
        const { items, truncated } = await listArchives(host.hostId, undefined, ARCHIVES_PER_HOST);
        return { rows: diskRows(host, items), truncated, error: null };
      } catch (err) {
        return { rows: [{ host, disk: null, lastGood: null, newest: null, size: null }], truncated: false, error: err };
      }
    }),
  );
  const rows = perHost.flatMap((p) => p.rows);
  const summary = h('p', { class: 'summary', 'aria-live': 'polite' });
  const body = h('tbody');
  const render = (): void => {
    const t = freshnessThreshold();
    const now = Date.now();
    const trs = rows.map((r) => renderRow(r, t, now));
    replace(body, trs);
    const counts = { fresh: 0, late: 0, stale: 0, none: 0 };
    for (const tr of trs) counts[tr.dataset.freshness as Freshness]++;
    replace(summary, `${hosts.length} host${hosts.length === 1 ? '' : 's'}, ${rows.filter((r) => r.disk).length} disks: `, h('span', { class: 'badge fresh-fresh' }, `${counts.fresh} fresh`), ' ', h('span', { class: 'badge fresh-late' }, `${counts.late} late`), ' ', h('span', { class: 'badge fresh-stale' }, `${counts.stale} stale`), ' ', h('span', { class: 'badge fresh-none' }, `${counts.none} without a good backup`));
  };
  const threshold = h('input', {
    id: 'fresh-hours',
    type: 'number',
    min: '1',
    max: '8760',
    step: '1',
    value: String(freshnessThreshold()),
    onchange: (e: Event) => {
      const v = Number((e.target as HTMLInputElement).value);
      if (Number.isFinite(v) && v > 0) {
        setFreshnessThreshold(v);
        render();
      }
    },
  });
  const head = ['Host', 'Disk', 'Size', 'Last good backup', 'Taken', 'Newest archive', 'Stored', 'Chain depth', 'Schedule / next run', ''];
  const tableEl = table(head, [], { id: 'hosts', class: 'grid' });
  tableEl.tBodies[0]!.replaceWith(body);
  render();
  replace(
    root,
    h('div', { class: 'toolbar' }, h('h1', null, 'Hosts'), h('label', { for: 'fresh-hours' }, 'Fresh within ', threshold, ' hours')),
    summary,
    hosts.length === 0 ? h('p', null, 'No host has uploaded an archive yet.') : tableEl,
    perHost.filter((p) => p.error).map((p) => errorBox(p.error)),
    perHost.some((p) => p.truncated) ? h('p', { class: 'muted' }, `Only the newest ${ARCHIVES_PER_HOST} archives of each host were read.`) : null,
    h('p', { class: 'muted legend' }, 'Age of the newest INDEXED or VERIFIED archive holding each disk. Late: past the threshold; stale: past twice the threshold.'),
  );
};
