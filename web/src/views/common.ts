import { h, type Child } from '../dom.js';
import { ApiError } from '../api.js';

export interface ViewContext {
  root: HTMLElement;
  /** Aborted when the user leaves the view: stop polling. */
  signal: AbortSignal;
  query: URLSearchParams;
}

export type View = (ctx: ViewContext, ...params: string[]) => Promise<void>;

export function statusBadge(status: string): HTMLElement {
  return h('span', { class: `badge status-${status.toLowerCase()}` }, status);
}

export function errorBox(err: unknown): HTMLElement {
  const msg = err instanceof ApiError ? `${err.message}${err.status ? ` (HTTP ${err.status})` : ''}` : String((err as Error)?.message ?? err);
  return h('p', { class: 'error', role: 'alert' }, msg);
}

export function table(head: string[], rows: HTMLTableRowElement[], attrs: Record<string, unknown> = {}): HTMLTableElement {
  return h('table', attrs, h('thead', null, h('tr', null, head.map((c) => h('th', { scope: 'col' }, c)))), h('tbody', null, rows));
}

export function facts(pairs: Array<[string, Child]>): HTMLDListElement {
  return h('dl', { class: 'facts' }, pairs.map(([k, v]) => [h('dt', null, k), h('dd', null, v)]));
}

/** Repeats `fn` every `ms` until the view is left; a failed round shows in `onError`, the next one retries. */
export function poll(signal: AbortSignal, ms: number, fn: () => Promise<void>, onError: (err: unknown) => void): void {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const round = async (): Promise<void> => {
    if (signal.aborted) return;
    try {
      await fn();
    } catch (err) {
      onError(err);
    }
    if (!signal.aborted) timer = setTimeout(() => void round(), ms);
  };
  signal.addEventListener('abort', () => clearTimeout(timer));
  timer = setTimeout(() => void round(), ms);
}
