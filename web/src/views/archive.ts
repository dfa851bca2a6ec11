/** One archive: header facts, devices, verification, its chain, and Restore / Delete. */
import { api, ApiError, listArchives, type ArchiveRecord } from '../api.js';
import { h, link, replace } from '../dom.js';
import { formatBytes, kind, logicalBytes, ratio, short, when } from '../format.js';
import { errorBox, facts, statusBadge, table, type View } from './common.js';

/** Archives that depend on `id`, directly or through others (newest first): what a delete would break. */
export function dependents(id: string, hostArchives: ArchiveRecord[]): ArchiveRecord[] {
  const broken = new Set([id]);
  const out: ArchiveRecord[] = [];
  // Oldest first, so a parent is marked before its children are looked at.
  for (const a of [...hostArchives].sort((x, y) => x.createdAt.localeCompare(y.createdAt))) {
    if (a.parentUuid && broken.has(a.parentUuid) && !broken.has(a.uuid)) {
      broken.add(a.uuid);
      out.push(a);
    }
  }
  return out.reverse();
}

function archiveRows(list: ArchiveRecord[], current?: string): HTMLTableRowElement[] {
  return list.map((c) =>
    h(
      'tr',
      { 'data-uuid': c.uuid, ...(c.uuid === current ? { 'aria-current': 'true', class: 'current' } : {}) },
      h('td', null, link(`#/archive/${c.uuid}`, short(c.uuid))),
      h('td', { title: c.createdAt }, when(c.createdAt)),
      h('td', null, kind(c)),
      h('td', { class: 'num' }, formatBytes(c.bytesStored)),
      h('td', null, statusBadge(c.status)),
    ),
  );
}

function deleteDialog(a: ArchiveRecord, broken: ArchiveRecord[], onDeleted: () => void): HTMLDialogElement {
  const result = h('div', { class: 'dialog-result' });
  const confirm = h('button', { type: 'button', class: 'danger', id: 'confirm-delete' }, broken.length ? 'Delete anyway' : 'Delete archive');
  const cancel = h('button', { type: 'button', id: 'cancel-delete' }, 'Cancel');
  const dialog = h(
    'dialog',
    { id: 'delete-dialog', 'aria-labelledby': 'delete-title' },
    h('h2', { id: 'delete-title' }, `Delete archive ${short(a.uuid)}?`),
    h('p', null, `The ${kind(a)} backup of ${a.hostId} taken ${when(a.createdAt)} (${formatBytes(a.bytesStored)} stored) will be removed from the bucket. This cannot be undone.`),
    broken.length
      ? [
          h('p', { class: 'warn' }, `${broken.length} incremental archive${broken.length === 1 ? ' depends' : 's depend'} on it and could no longer be restored. The catalogue refuses until they are deleted first:`),
          table(['Archive', 'Taken', 'Type', 'Stored', 'Status'], archiveRows(broken), { class: 'grid', id: 'broken-chain' }),
        ]
      : h('p', null, 'No other archive depends on it.'),
    result,
    h('div', { class: 'actions' }, cancel, confirm),
  );
  cancel.addEventListener('click', () => dialog.close());
  dialog.addEventListener('close', () => dialog.remove());
  confirm.addEventListener('click', () => {
    confirm.disabled = true;
    void api
      .deleteArchive(a.uuid)
      .then(() => {
        dialog.close();
        onDeleted();
      })
      .catch((err: unknown) => {
        confirm.disabled = false;
        const why = err instanceof ApiError && err.status === 409 ? `The catalogue refused: ${err.message}` : undefined;
        replace(result, why ? h('p', { class: 'error', role: 'alert' }, why) : errorBox(err));
      });
  });
  return dialog;
}

export const archiveView: View = async ({ root }, id) => {
  const a = await api.archive(id!);
  const [chain, hostArchives] = await Promise.all([
    api.chain(a.uuid).then((r) => r.items, (err: unknown) => err),
    listArchives(a.hostId, undefined, 2000).then((r) => r.items, () => [] as ArchiveRecord[]),
  ]);
  const broken = dependents(a.uuid, hostArchives);
  const verify =
    a.status === 'VERIFIED' ? `verified ${when(a.lastVerifiedAt)}` : a.status === 'CORRUPT' ? `CORRUPT (checked ${when(a.lastVerifiedAt)})` : a.lastVerifiedAt ? `last verified ${when(a.lastVerifiedAt)}` : 'never verified';
  const restorable = a.status === 'INDEXED' || a.status === 'VERIFIED';
  const deleteBtn = h('button', { type: 'button', class: 'danger', id: 'delete', disabled: a.status === 'DELETED' }, 'Delete…');
  deleteBtn.addEventListener('click', () => {
    const d = deleteDialog(a, broken, () => location.reload());
    document.body.append(d);
    d.showModal();
    d.querySelector<HTMLButtonElement>('#cancel-delete')!.focus();
  });
  const disks = a.devices.map((d) => d.name);
  replace(
    root,
    h('p', { class: 'crumbs' }, link('#/hosts', 'Hosts'), ' › ', a.hostId, disks.length ? [' › ', link(`#/history/${encodeURIComponent(a.hostId)}/${encodeURIComponent(disks[0]!)}`, disks[0]!)] : null),
    h('div', { class: 'toolbar' }, h('h1', null, `Archive ${short(a.uuid)}`), statusBadge(a.status), h('span', { class: 'spacer' }), restorable ? link(`#/restores?archive=${a.uuid}`, 'Restore…', { class: 'button', id: 'restore' }) : null, deleteBtn),
    facts([
      ['UUID', h('code', null, a.uuid)],
      ['Host', a.hostId],
      ['Taken', h('span', { title: a.createdAt }, when(a.createdAt))],
      ['Type', a.parentUuid ? ['incremental of ', link(`#/archive/${a.parentUuid}`, short(a.parentUuid)), ` (chain depth ${a.chainDepth})`] : 'full'],
      ['Status', [a.status, a.reason ? ` — ${a.reason}` : '']],
      ['Verification', verify],
      ['Stored', `${formatBytes(a.bytesStored)} (${a.bytesStored.toLocaleString('en')} bytes)`],
      ['Data / zero', `${formatBytes(a.dataBytes)} / ${formatBytes(a.zeroBytes)} (logical ${formatBytes(logicalBytes(a))})`],
      ['Compression', ratio(a)],
      ['Object', h('code', null, `s3://${a.bucket}/${a.key}`)],
      ['Indexed', when(a.indexedAt)],
      ...(a.deletedAt ? ([['Deleted', when(a.deletedAt)]] as Array<[string, string]>) : []),
    ]),
    h('h2', null, 'Devices'),
    table(['Device', 'Size'], a.devices.map((d) => h('tr', null, h('td', null, d.name), h('td', { class: 'num' }, `${formatBytes(d.size)} (${d.size.toLocaleString('en')} bytes)`))), { class: 'grid narrow' }),
    h('h2', null, 'Chain a restore reads (newest first)'),
    Array.isArray(chain) ? table(['Archive', 'Taken', 'Type', 'Stored', 'Status'], archiveRows(chain, a.uuid), { class: 'grid narrow', id: 'chain' }) : errorBox(chain),
    h('h2', null, 'Depends on this archive'),
    broken.length ? table(['Archive', 'Taken', 'Type', 'Stored', 'Status'], archiveRows(broken), { class: 'grid narrow', id: 'dependents' }) : h('p', null, 'Nothing: deleting it breaks no chain.'),
  );
};
