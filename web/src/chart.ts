/**
 * The history charts (uPlot, bundled). Backups are points: full and
 * incremental in their own colours, each incremental joined to the archive it
 * depends on, so chains read left to right. The chart is keyboard-usable:
 * focus it and step through backups with the arrow keys; the readout below
 * names the backup under the cursor, Enter opens it.
 */
import uPlot from 'uplot';
import 'uplot/dist/uPlot.min.css';
import { GOOD_STATUSES, type ArchiveRecord } from './api.js';
import { h } from './dom.js';
import { bytesTicks, formatBytes, kind, logicalBytes, short, when } from './format.js';

const COLORS = { full: '#1d5fbf', incremental: '#d97a00', logical: '#6b7280', bad: '#c62828', growth: '#2e7d32', link: 'rgba(80,80,80,0.45)' };

const bytesAxis = (_u: uPlot, splits: number[]): string[] => bytesTicks(splits);
const bytesValue = (_u: uPlot, v: number | null): string => (v == null ? '—' : formatBytes(v));

function sized(el: HTMLElement): { width: number; height: number } {
  return { width: Math.max(320, Math.floor(el.clientWidth || 900)), height: 260 };
}

export interface HistoryChart {
  element: HTMLElement;
  /** Index (oldest first) of the backup under the cursor, or null. */
  selected(): number | null;
  destroy(): void;
}

/** `archives` oldest first. `open` is called with an archive when the user presses Enter on it. */
export function backupsChart(host: HTMLElement, archives: ArchiveRecord[], open: (a: ArchiveRecord) => void): HistoryChart {
  const xs = archives.map((a) => Date.parse(a.createdAt) / 1000);
  const stored = archives.map((a) => a.bytesStored);
  const only = (pred: (a: ArchiveRecord) => boolean): Array<number | null> => archives.map((a) => (pred(a) ? a.bytesStored : null));
  const indexOf = new Map(archives.map((a, i) => [a.uuid, i]));
  const parents = archives.map((a) => (a.parentUuid ? (indexOf.get(a.parentUuid) ?? -1) : -1));
  const readout = h('p', { class: 'readout', 'aria-live': 'polite', 'data-testid': 'chart-readout' }, 'Focus the chart and use ← → to step through backups.');
  const plotEl = h('div', { class: 'plot' });
  const wrap = h(
    'div',
    { class: 'chart', tabindex: '0', role: 'group', 'aria-label': 'Backups over time: use the left and right arrow keys to step through backups, Enter to open one' },
    plotEl,
  );
  const pointStyle = (color: string, size: number, fill = color): uPlot.Series.Points => ({ show: true, size, stroke: color, fill, width: 2 });
  const opts: uPlot.Options = {
    ...sized(host),
    title: 'Backups: stored and logical bytes',
    scales: { x: { time: true } },
    legend: { live: true },
    cursor: { drag: { x: false, y: false }, points: { size: 12 } },
    axes: [{}, { values: bytesAxis, size: 80 }],
    series: [
      { label: 'Taken', value: (_u, v) => (v == null ? '—' : when(new Date(v * 1000).toISOString())) },
      { label: 'Stored (full)', stroke: COLORS.full, paths: () => null, points: pointStyle(COLORS.full, 11), value: bytesValue },
      { label: 'Stored (incremental)', stroke: COLORS.incremental, paths: () => null, points: pointStyle(COLORS.incremental, 9), value: bytesValue },
      { label: 'Logical (data + zero)', stroke: COLORS.logical, dash: [4, 4], width: 1, points: pointStyle(COLORS.logical, 5, '#fff'), value: bytesValue },
      { label: 'Not restorable', stroke: COLORS.bad, paths: () => null, points: pointStyle(COLORS.bad, 15, 'transparent'), value: bytesValue },
    ],
    hooks: {
      // Chain links under the points: each incremental to the archive it depends on.
      drawSeries: [
        (u, si) => {
          if (si !== 1) return;
          const ctx = u.ctx;
          ctx.save();
          ctx.strokeStyle = COLORS.link;
          ctx.lineWidth = 1.5 * devicePixelRatio;
          const drawn: string[] = [];
          for (let i = 0; i < archives.length; i++) {
            const p = parents[i]!;
            if (p < 0) continue;
            ctx.beginPath();
            ctx.moveTo(u.valToPos(xs[p]!, 'x', true), u.valToPos(stored[p]!, 'y', true));
            ctx.lineTo(u.valToPos(xs[i]!, 'x', true), u.valToPos(stored[i]!, 'y', true));
            ctx.stroke();
            drawn.push(`${archives[p]!.uuid}>${archives[i]!.uuid}`);
          }
          ctx.restore();
          // What was drawn, for assistive technology and tests: the canvas itself is opaque.
          wrap.dataset.links = drawn.join(' ');
        },
      ],
      setCursor: [
        (u) => {
          const i = u.cursor.idx;
          if (i == null) return;
          const a = archives[i]!;
          readout.textContent =
            `${when(a.createdAt)} · ${kind(a)} ${short(a.uuid)}` +
            `${a.parentUuid ? ` (depends on ${short(a.parentUuid)})` : ''} · stored ${formatBytes(u.data[1]![i] ?? u.data[2]![i] ?? 0)}` +
            ` · logical ${formatBytes(u.data[3]![i] ?? 0)} · ${a.status}`;
          readout.dataset.uuid = a.uuid;
          readout.dataset.stored = String(stored[i]);
        },
      ],
    },
  };
  const data: uPlot.AlignedData = [
    xs,
    only((a) => a.parentUuid === null),
    only((a) => a.parentUuid !== null),
    archives.map(logicalBytes),
    only((a) => !GOOD_STATUSES.includes(a.status)),
  ];
  host.append(wrap, readout);
  const u = new uPlot(opts, data, plotEl);
  let idx: number | null = null;
  const select = (i: number): void => {
    idx = Math.max(0, Math.min(archives.length - 1, i));
    u.setCursor({ left: u.valToPos(xs[idx]!, 'x'), top: u.valToPos(stored[idx]!, 'y') });
  };
  wrap.addEventListener('keydown', (e) => {
    const keys: Record<string, () => void> = {
      ArrowRight: () => select(idx === null ? 0 : idx + 1),
      ArrowLeft: () => select(idx === null ? archives.length - 1 : idx - 1),
      Home: () => select(0),
      End: () => select(archives.length - 1),
      Enter: () => idx !== null && open(archives[idx]!),
    };
    const run = keys[e.key];
    if (!run) return;
    e.preventDefault();
    run();
  });
  const resize = new ResizeObserver(() => u.setSize(sized(host)));
  resize.observe(host);
  return {
    element: wrap,
    selected: () => idx,
    destroy: () => {
      resize.disconnect();
      u.destroy();
    },
  };
}

/** Stored bytes of the listed (not deleted) archives, summed over time. */
export function growthChart(host: HTMLElement, archives: ArchiveRecord[]): { destroy(): void } {
  const xs = archives.map((a) => Date.parse(a.createdAt) / 1000);
  let sum = 0;
  const total = archives.map((a) => (sum += a.bytesStored));
  const plotEl = h('div', { class: 'plot', 'aria-label': `Stored bytes over time, now ${formatBytes(sum)}`, role: 'img' });
  host.append(plotEl);
  const u = new uPlot(
    {
      ...sized(host),
      height: 200,
      title: 'Growth of stored bytes',
      scales: { x: { time: true } },
      axes: [{}, { values: bytesAxis, size: 80 }],
      series: [
        { label: 'Taken' },
        { label: 'Stored, cumulative', stroke: COLORS.growth, fill: 'rgba(46,125,50,0.12)', width: 2, paths: uPlot.paths.stepped!({ align: 1 }), value: bytesValue },
      ],
    },
    [xs, total],
    plotEl,
  );
  const resize = new ResizeObserver(() => u.setSize({ ...sized(host), height: 200 }));
  resize.observe(host);
  return {
    destroy: () => {
      resize.disconnect();
      u.destroy();
    },
  };
}
