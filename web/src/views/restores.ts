/** Restore jobs with live progress, and the form that requests one. */
import { api, ApiError, type ArchiveRecord, type CreateRestoreBody, type RestoreJob, type RestoreStatus } from '../api.js';
import { h, link, replace } from '../dom.js';
import { formatBytes, short, when } from '../format.js';
import { errorBox, poll, statusBadge, table, type View } from './common.js';

const STATUSES: RestoreStatus[] = ['PENDING', 'CLAIMED', 'RUNNING', 'SUCCEEDED', 'FAILED', 'CANCELLED'];
const ACTIVE: ReadonlySet<string> = new Set(['PENDING', 'CLAIMED', 'RUNNING']);
const POLL_MS = 1000;
/** Finished jobs listed per host and status; active ones are few by nature. */
const PER_STATUS = 25;
const TRACKED_KEY = 'cowstream.console.restores';

/** Jobs requested from this tab: polled by id even when a host has more than a page of them. */
function tracked(): string[] {
  try {
    return (JSON.parse(sessionStorage.getItem(TRACKED_KEY) ?? '[]') as string[]).slice(-50);
  } catch {
    return [];
  }
}
function track(id: string): void {
  sessionStorage.setItem(TRACKED_KEY, JSON.stringify([...tracked(), id]));
}

async function loadJobs(): Promise<RestoreJob[]> {
  const hosts = (await api.hosts()).items.map((x) => x.hostId);
  const pages = await Promise.all(hosts.flatMap((host) => STATUSES.map((s) => api.restoresOf(host, s, PER_STATUS).then((p) => p.items))));
  const byId = new Map(pages.flat().map((j) => [j.id, j]));
  const extra = await Promise.all(tracked().filter((id) => !byId.has(id)).map((id) => api.restore(id).catch(() => null)));
  for (const j of extra) if (j) byId.set(j.id, j);
  return [...byId.values()].sort((a, b) => b.createdAt.localeCompare(a.createdAt));
}

function progressCell(j: RestoreJob): HTMLElement {
  const { bytesDone, bytesTotal } = j.progress;
  const pct = bytesTotal > 0 ? Math.floor((bytesDone / bytesTotal) * 100) : j.status === 'SUCCEEDED' ? 100 : 0;
  return h(
    'td',
    { class: 'progress-cell' },
    h('progress', { max: '100', value: String(pct), 'aria-label': `restore ${short(j.id)} progress` }),
    h('br'),
    h('span', { class: 'num' }, bytesTotal > 0 ? `${formatBytes(bytesDone)} of ${formatBytes(bytesTotal)} (${pct}%)` : `${pct}%`),
  );
}

function jobRow(j: RestoreJob, highlight: string | null, onCancel: (j: RestoreJob) => void): HTMLTableRowElement {
  return h(
    'tr',
    { 'data-restore': j.id, 'data-status': j.status, class: j.id === highlight ? 'current' : undefined },
    h('td', null, h('code', { title: j.id }, short(j.id))),
    h('td', null, j.hostId),
    h('td', null, link(`#/archive/${j.archiveId}`, short(j.archiveId))),
    h('td', { class: 'target' }, h('code', null, j.target.path), h('br'), h('span', { class: 'muted', 'data-devices': '' }, j.devices?.join(', ') ?? 'all devices')),
    h('td', null, statusBadge(j.status)),
    progressCell(j),
    h('td', null, j.claimedBy ?? '—'),
    h('td', { title: j.createdAt }, when(j.createdAt)),
    h('td', { title: j.finishedAt ?? '' }, j.finishedAt ? when(j.finishedAt) : '—'),
    h('td', { class: 'error-cell' }, j.error ?? ''),
    h('td', null, ACTIVE.has(j.status) ? h('button', { type: 'button', onclick: () => onCancel(j) }, 'Cancel') : ''),
  );
}

/** The API names bad fields in its message (`target.path: ...`); mark those inputs. */
const FIELD_OF: Record<string, string> = { archiveId: 'r-archive', hostId: 'r-host', devices: 'r-devices', 'target.path': 'r-target', target: 'r-target' };

function restoreForm(initialArchive: string, onRequested: (id: string) => void): HTMLFormElement {
  const archiveIn = h('input', { id: 'r-archive', name: 'archiveId', required: true, size: 38, spellcheck: 'false', autocomplete: 'off', value: initialArchive });
  const hostIn = h('input', { id: 'r-host', name: 'hostId', required: true, spellcheck: 'false', autocomplete: 'off' });
  const targetIn = h('input', { id: 'r-target', name: 'target', required: true, size: 48, spellcheck: 'false', autocomplete: 'off', placeholder: '/var/restores/vda.raw' });
  const devices = h('fieldset', { id: 'r-devices', class: 'devices' }, h('legend', null, 'Devices'), h('span', { class: 'muted' }, 'Enter an archive to choose its devices.'));
  const message = h('div', { id: 'restore-message', 'aria-live': 'polite' });
  const submit = h('button', { type: 'submit', id: 'r-submit' }, 'Request restore');
  let archive: ArchiveRecord | null = null;

  const loadArchive = async (): Promise<void> => {
    const id = archiveIn.value.trim();
    if (!id || id === archive?.uuid) return;
    try {
      archive = await api.archive(id);
    } catch (err) {
      archive = null;
      replace(devices, h('legend', null, 'Devices'), errorBox(err));
      return;
    }
    if (!hostIn.value) hostIn.value = archive.hostId;
    replace(
      devices,
      h('legend', null, `Devices of ${short(archive.uuid)} (none ticked = all)`),
      archive.devices.map((d) => h('label', null, h('input', { type: 'checkbox', name: 'device', value: d.name }), ` ${d.name} (${formatBytes(d.size)})`)),
    );
  };
  archiveIn.addEventListener('change', () => void loadArchive());

  const form = h(
    'form',
    { id: 'restore-form', class: 'card', novalidate: true, 'aria-labelledby': 'restore-form-title' },
    h('h2', { id: 'restore-form-title' }, 'Request a restore'),
    h('p', { class: 'muted' }, 'The agent of the chosen host claims the job and writes the image to the target path, which must lie in one of its restore.allowedDirs.'),
    h('div', { class: 'fields' }, h('label', { for: 'r-archive' }, 'Archive UUID'), archiveIn, h('label', { for: 'r-host' }, 'Host that restores'), hostIn, h('label', { for: 'r-target' }, 'Target path on that host'), targetIn),
    devices,
    h('div', { class: 'actions' }, submit),
    message,
  );
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    void (async () => {
      for (const el of form.querySelectorAll('[aria-invalid]')) el.removeAttribute('aria-invalid');
      const picked = [...form.querySelectorAll<HTMLInputElement>('input[name=device]:checked')].map((c) => c.value);
      const body: CreateRestoreBody = {
        archiveId: archiveIn.value.trim(),
        hostId: hostIn.value.trim(),
        target: { path: targetIn.value },
        ...(picked.length ? { devices: picked } : {}),
      };
      submit.disabled = true;
      try {
        const { restoreId } = await api.createRestore(body);
        track(restoreId);
        replace(message, h('p', { class: 'ok', role: 'status', id: 'restore-ok' }, `Restore ${short(restoreId)} requested; it appears below as the agent works on it.`));
        onRequested(restoreId);
      } catch (err) {
        if (err instanceof ApiError) {
          for (const [field, id] of Object.entries(FIELD_OF)) if (new RegExp(`(^|[ ;:])${field.replace('.', '\\.')}(\\[\\d+\\])?:`).test(err.message)) document.getElementById(id)?.setAttribute('aria-invalid', 'true');
        }
        replace(message, h('div', { id: 'restore-error' }, errorBox(err)));
      } finally {
        submit.disabled = false;
      }
    })();
  });
  if (initialArchive) void loadArchive();
  return form;
}

export const restoresView: View = async ({ root, signal, query }) => {
  let highlight: string | null = null;
  const body = h('tbody');
  const status = h('p', { class: 'muted', id: 'jobs-status' });
  const render = (jobs: RestoreJob[]): void => {
    replace(body, jobs.length ? jobs.map((j) => jobRow(j, highlight, cancel)) : h('tr', null, h('td', { colspan: '11' }, 'No restore jobs.')));
    const active = jobs.filter((j) => ACTIVE.has(j.status)).length;
    status.textContent = `${jobs.length} jobs, ${active} active · updated ${when(new Date().toISOString())}`;
  };
  const refresh = async (): Promise<void> => render(await loadJobs());
  const cancel = (j: RestoreJob): void => {
    void api.cancelRestore(j.id).then(refresh, (err: unknown) => status.replaceChildren(errorBox(err)));
  };
  const form = restoreForm(query.get('archive') ?? '', (id) => {
    highlight = id;
    void refresh();
  });
  const jobs = table(['Job', 'Host', 'Archive', 'Target and devices', 'Status', 'Progress', 'Agent', 'Requested', 'Finished', 'Error', ''], [], { id: 'restores', class: 'grid' });
  jobs.tBodies[0]!.replaceWith(body);
  await refresh();
  replace(root, h('h1', null, 'Restores'), form, h('h2', null, 'Jobs'), status, h('div', { class: 'scroll' }, jobs));
  poll(signal, POLL_MS, refresh, (err) => status.replaceChildren(errorBox(err)));
  if (query.get('archive')) document.getElementById('r-target')?.focus();
};
