/**
 * The catalogue API as the page sees it: same origin, every call with
 * `Authorization: Bearer <token>`. The token arrives in the URL fragment
 * (`#token=...`, which never reaches a server or its logs) and is kept in
 * sessionStorage: it lives as long as the tab and is never shared with others.
 */
import type { ArchiveRecord, CreateRestoreBody, HostRecord, RestoreJob, RestoreStatus } from '../../src/catalog/records.js';

export type { ArchiveRecord, CreateRestoreBody, HostRecord, RestoreJob, RestoreStatus };

/** Agents may report a schedule one day; the console shows it when present. */
export type HostInfo = HostRecord & { schedule?: string; nextRunAt?: string };

export interface Page<T> {
  items: T[];
  cursor?: string;
}

const TOKEN_KEY = 'cowstream.console.token';

/** Moves `#token=...` into sessionStorage and out of the address bar (and so out of history and bookmarks). */
export function takeTokenFromFragment(): void {
  const m = /^#token=([^&]+)/.exec(location.hash);
  if (!m) return;
  sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1]!));
  history.replaceState(null, '', `${location.pathname}${location.search}#/hosts`);
}

export function getToken(): string | null {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(token: string): void {
  sessionStorage.setItem(TOKEN_KEY, token.trim());
}

export function forgetToken(): void {
  sessionStorage.removeItem(TOKEN_KEY);
}

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

/** Fired on 401/403 so the page can ask for a token. */
export const UNAUTHORIZED_EVENT = 'cowstream:unauthorized';

async function call<T>(method: string, path: string, body?: unknown, query: Record<string, string | number | undefined> = {}): Promise<T> {
  const params = new URLSearchParams();
  for (const [k, v] of Object.entries(query)) if (v !== undefined && v !== '') params.set(k, String(v));
  const qs = params.toString();
  const headers: Record<string, string> = { accept: 'application/json' };
  const token = getToken();
  if (token) headers.authorization = `Bearer ${token}`;
  if (body !== undefined) headers['content-type'] = 'application/json';
  // Relative to the page, so a console served under a path prefix still reaches its own API.
  const url = `.${path}${qs ? `?${qs}` : ''}`;
  let res: Response;
  try {
    res = await fetch(url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: 'no-store' });
  } catch (err) {
    throw new ApiError(0, 'NETWORK', `the catalogue did not answer (${(err as Error).message})`);
  }
  const text = await res.text();
  let data: unknown;
  try {
    data = text === '' ? undefined : JSON.parse(text);
  } catch {
    data = undefined;
  }
  if (res.ok) return data as T;
  const e = (data as { error?: { code?: string; message?: string } } | undefined)?.error;
  if (res.status === 401 || res.status === 403) window.dispatchEvent(new CustomEvent(UNAUTHORIZED_EVENT, { detail: e?.message ?? `HTTP ${res.status}` }));
  throw new ApiError(res.status, e?.code ?? `HTTP_${res.status}`, e?.message ?? `${method} ${path}: HTTP ${res.status} ${text.slice(0, 200)}`);
}

const enc = encodeURIComponent;

export const api = {
  hosts: (): Promise<{ items: HostInfo[] }> => call('GET', '/hosts'),
  archives: (q: { host?: string; disk?: string; limit?: number; cursor?: string }): Promise<Page<ArchiveRecord>> =>
    call('GET', '/archives', undefined, { host: q.host, disk: q.disk, limit: q.limit, cursor: q.cursor }),
  archive: (id: string): Promise<ArchiveRecord> => call('GET', `/archives/${enc(id)}`),
  chain: (id: string): Promise<{ items: ArchiveRecord[] }> => call('GET', `/archives/${enc(id)}/chain`),
  deleteArchive: (id: string): Promise<ArchiveRecord> => call('DELETE', `/archives/${enc(id)}`),
  createRestore: (body: CreateRestoreBody): Promise<{ restoreId: string }> => call('POST', '/restores', body),
  restore: (id: string): Promise<RestoreJob> => call('GET', `/restores/${enc(id)}`),
  restoresOf: (host: string, status: RestoreStatus, limit = 25): Promise<Page<RestoreJob>> =>
    call('GET', `/hosts/${enc(host)}/restores`, undefined, { status, limit }),
  cancelRestore: (id: string): Promise<RestoreJob> => call('POST', `/restores/${enc(id)}/cancel`),
};

/** Newest first, following pages up to `max` archives (the API's largest page is 500). */
export async function listArchives(host: string, disk: string | undefined, max: number): Promise<{ items: ArchiveRecord[]; truncated: boolean }> {
  const items: ArchiveRecord[] = [];
  let cursor: string | undefined;
  do {
    const page = await api.archives({ host, disk, limit: Math.min(500, max - items.length), cursor });
    items.push(...page.items);
    cursor = page.cursor;
  } while (cursor && items.length < max);
  return { items, truncated: cursor !== undefined };
}

export const GOOD_STATUSES: readonly string[] = ['INDEXED', 'VERIFIED'];
