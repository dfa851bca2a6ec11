/** The console's shell: token hand-over, hash routes, the token prompt. */
import './style.css';
import { forgetToken, getToken, setToken, takeTokenFromFragment, UNAUTHORIZED_EVENT } from './api.js';
import { h, replace } from './dom.js';
import { archiveView } from './views/archive.js';
import { errorBox, type View } from './views/common.js';
import { historyView } from './views/history.js';
import { hostsView } from './views/hosts.js';
import { restoresView } from './views/restores.js';

const ROUTES: Array<[RegExp, View, string]> = [
  [/^\/hosts$/, hostsView, 'hosts'],
  [/^\/history\/([^/]+)\/([^/]+)$/, historyView, 'hosts'],
  [/^\/archive\/([^/]+)$/, archiveView, 'hosts'],
  [/^\/restores$/, restoresView, 'restores'],
];

const view = document.getElementById('view')!;
let current: AbortController | null = null;
/** The route on screen, so a refresh keeps it visible while it reloads. */
let shown = '';

function tokenPrompt(reason: string): void {
  current?.abort();
  shown = '';
  const input = h('input', { id: 'token', type: 'password', autocomplete: 'off', required: true, size: 48 });
  const form = h(
    'form',
    { class: 'card', id: 'token-form' },
    h('h1', null, 'Access token needed'),
    h('p', null, reason),
    h('p', { class: 'muted' }, 'Open the link that cowstream catalog serve or cowstream console printed (it carries the token after #token=), or paste the token here. It is kept for this tab only.'),
    h('label', { for: 'token' }, 'Token '),
    input,
    ' ',
    h('button', { type: 'submit' }, 'Use token'),
  );
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    setToken(input.value);
    void route();
  });
  replace(view, form);
  input.focus();
}

async function route(): Promise<void> {
  takeTokenFromFragment();
  const [path = '/hosts', qs = ''] = location.hash.replace(/^#/, '').split('?');
  const match = ROUTES.map(([re, v, nav]) => [re.exec(path), v, nav] as const).find(([m]) => m);
  if (!match) {
    location.replace('#/hosts');
    return;
  }
  const [m, v, nav] = match;
  for (const a of document.querySelectorAll<HTMLAnchorElement>('[data-nav]')) a.toggleAttribute('aria-current', a.dataset.nav === nav);
  current?.abort();
  const ctl = new AbortController();
  current = ctl;
  view.setAttribute('aria-busy', 'true');
  // A new page never shows the previous one's buttons while it loads (a click there would act on the wrong archive).
  if (location.hash !== shown) replace(view, h('p', { class: 'muted' }, 'Loading…'));
  shown = location.hash;
  try {
    await v({ root: view, signal: ctl.signal, query: new URLSearchParams(qs) }, ...m!.slice(1).map(decodeURIComponent));
  } catch (err) {
    if (!ctl.signal.aborted) replace(view, h('h1', null, 'Something went wrong'), errorBox(err));
  } finally {
    view.removeAttribute('aria-busy');
  }
  if (!ctl.signal.aborted) {
    document.title = `${view.querySelector('h1')?.textContent ?? 'console'} · cowstream`;
    if (document.activeElement === document.body) view.focus({ preventScroll: true });
  }
}

window.addEventListener(UNAUTHORIZED_EVENT, (e) => {
  const why = (e as CustomEvent<string>).detail;
  tokenPrompt(getToken() ? `The catalogue refused the token of this tab: ${why}` : `The catalogue wants a token: ${why}`);
});
window.addEventListener('hashchange', () => void route());
document.getElementById('refresh')!.addEventListener('click', () => void route());
document.getElementById('forget')!.addEventListener('click', () => {
  forgetToken();
  tokenPrompt('The token was forgotten.');
});
document.addEventListener('keydown', (e) => {
  const t = e.target as HTMLElement;
  if (e.key === 'r' && !e.ctrlKey && !e.metaKey && !e.altKey && !['INPUT', 'TEXTAREA', 'SELECT'].includes(t.tagName) && !document.querySelector('dialog[open]')) void route();
});
void route();
