/**
 * The web console in a real browser (Debian's headless Chromium, driven by
 * playwright-core) against an agent with the embedded catalogue and real
 * backups: the hosts table and the history chart show the catalogue's
 * numbers, a delete shows the chain it would break and the catalogue's 409,
 * a restore requested through the form (first with a field the API rejects)
 * is executed by the agent to SUCCEEDED and the image is byte-identical.
 * Screenshots of each page land in .tmp/console/.
 */
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { execFile } from 'node:child_process';
import { mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { Page } from 'playwright-core';
import { startAgent, type Agent } from '../../src/agent/agent.js';
import { parseAgentConfig } from '../../src/agent/config.js';
import { AgentClient } from '../../src/agent/control-client.js';
import { silentLogger } from '../../src/agent/log.js';
import { CatalogClient } from '../../src/catalog/client.js';
import type { ArchiveRecord } from '../../src/catalog/records.js';
import { formatBytes } from '../../src/cli/output.js';
import { readEmbeddedCredentials } from '../../src/store/embedded-credentials.js';
import { startConsoleServer } from '../../src/console/server.js';
import { makeDisk, makeTempDir, REPO_ROOT } from '../helpers/agent-process.js';
import { nbdUri, runQemuIo } from '../helpers/agent-workload.js';
import { launchChromium, screenshot, type Chromium } from '../helpers/browser.js';

const VDA = 3 * 1024 * 1024 + 4096;
const VDB = 1024 * 1024;
const HOST = 'web-host';

let tmp: { dir: string; cleanup(): Promise<void> };
let agent: Agent;
let control: AgentClient;
let catalog: CatalogClient;
let browser: Chromium;
let page: Page;
let token: string;
let restoreDir: string;
let vdaPath: string;
const backups: Array<{ uuid: string; vda: Buffer }> = [];
let archives: ArchiveRecord[] = []; // newest first, as the API lists them
const savedPoll = process.env.COWSTREAM_RESTORE_POLL_MS;

async function backup(mode: 'full' | 'incremental'): Promise<void> {
  const st = await control.startBackup({ mode, target: 's3' });
  const done = await control.waitForBackup(st.uuid, undefined, 25);
  expect(done.status, done.error ?? '').toBe('done');
  backups.push({ uuid: st.uuid, vda: await readFile(vdaPath) });
  await vi.waitFor(() => catalog.getArchive(st.uuid), { timeout: 10_000, interval: 50 });
}

beforeAll(async () => {
  // The agent's embedded catalogue serves the package's build: build it from the current sources.
  await promisify(execFile)(process.execPath, [join(REPO_ROOT, 'scripts', 'build-web.mjs')], { cwd: REPO_ROOT });
  process.env.COWSTREAM_RESTORE_POLL_MS = '100';
  tmp = await makeTempDir('cowstream-console-');
  vdaPath = join(tmp.dir, 'vda.raw');
  restoreDir = join(tmp.dir, 'restores');
  await mkdir(restoreDir);
  await makeDisk(vdaPath, VDA, 21);
  await makeDisk(join(tmp.dir, 'vdb.raw'), VDB, 22);
  agent = await startAgent(
    parseAgentConfig({
      hostId: HOST,
      stateDir: join(tmp.dir, 'state'),
      disks: [
        { name: 'vda', path: vdaPath },
        { name: 'vdb', path: join(tmp.dir, 'vdb.raw') },
      ],
      nbd: { listen: '127.0.0.1:0' },
      catalog: { embedded: true },
      restore: { allowedDirs: [restoreDir] },
    }),
    { log: silentLogger },
  );
  control = new AgentClient(agent.controlSocket);
  // The embedded catalogue's bearer token, generated at first start (credentials.json, 0600).
  token = (await readEmbeddedCredentials(join(tmp.dir, 'state'))).catalogToken;
  catalog = new CatalogClient({ url: agent.catalogUrl!, token });

  const uri = nbdUri(agent.nbdAddress!.host, agent.nbdAddress!.port, 'vda');
  await backup('full');
  await runQemuIo(uri, ['write -P 0xa5 65536 131072', `write -P 0x77 ${VDA - 4096} 4096`]);
  await backup('incremental');
  await runQemuIo(uri, ['write -P 0x3c 1048576 524288']);
  await backup('incremental');
  archives = (await catalog.listArchives({ host: HOST })).items;
  expect(archives.map((a) => a.uuid)).toEqual(backups.map((b) => b.uuid).reverse());

  browser = await launchChromium();
  page = browser.page;
  page.on('pageerror', (err) => console.error('page error:', err));
}, 120_000);

afterAll(async () => {
  await browser?.close();
  await agent?.stop();
  await tmp?.cleanup();
  if (savedPoll === undefined) delete process.env.COWSTREAM_RESTORE_POLL_MS;
  else process.env.COWSTREAM_RESTORE_POLL_MS = savedPoll;
});

describe('web console in headless Chromium', () => {
  it('serves the page at / of the embedded catalogue and sends the bearer token on every API call', async () => {
    const apiCalls: Array<{ url: string; auth: string | undefined }> = [];
    const foreign: string[] = [];
    page.on('request', (r) => {
      if (!r.url().startsWith(`${agent.catalogUrl}/`) && !r.url().startsWith('data:')) foreign.push(r.url());
      const path = new URL(r.url()).pathname;
      if (/^\/(archives|hosts|restores)/.test(path)) apiCalls.push({ url: r.url(), auth: r.headers().authorization });
    });
    const res = await page.goto(`${agent.catalogUrl}/#token=${token}`);
    expect(res?.status()).toBe(200);
    expect(res?.headers()['content-security-policy']).toContain("script-src 'self'");
    await page.locator('#hosts tbody tr').first().waitFor();
    // The token left the address bar (no history entry, no bookmark) and lives in this tab only.
    expect(await page.evaluate('location.hash')).toBe('#/hosts');
    expect(await page.evaluate("sessionStorage.getItem('cowstream.console.token')")).toBe(token);
    expect(apiCalls.length).toBeGreaterThanOrEqual(2);
    for (const c of apiCalls) expect(c.auth, c.url).toBe(`Bearer ${token}`);
    // Everything is bundled: no CDN, no font service, nothing but the catalogue's own origin.
    expect(foreign).toEqual([]);
  });

  it('hosts table: per disk the last good backup, its size and age, coloured against the threshold', async () => {
    const newest = archives[0]!;
    const rows = page.locator('#hosts tbody tr');
    expect(await rows.count()).toBe(2);
    for (const [disk, size] of [['vda', VDA], ['vdb', VDB]] as const) {
      const row = page.locator(`#hosts tr[data-host="${HOST}"][data-disk="${disk}"]`);
      const cells = await row.locator('th, td').allInnerTexts();
      expect(cells[0]).toBe(HOST);
      expect(cells[1]).toBe(disk);
      expect(cells[2]).toBe(formatBytes(size));
      expect(cells[3]).toMatch(/^\d+ s ago|^\d+ min ago/);
      expect(cells[5]).toMatch(/^incremental\s+INDEXED$/);
      expect(cells[6]).toBe(formatBytes(newest.bytesStored));
      expect(cells[7]).toBe('2');
      expect(cells[8]).toBe('not reported');
      expect(await row.getAttribute('data-freshness')).toBe('fresh');
    }
    await screenshot(page, 'hosts');

  });

  it('history: the chart holds the catalogue numbers, steps by keyboard, draws full and incremental points', async () => {
    await page.locator(`#hosts tr[data-disk="vda"] a`, { hasText: 'History' }).click();
    await page.locator('.chart canvas').first().waitFor();
    expect(await page.locator('#archives tbody tr').count()).toBe(3);
    const chart = page.locator('.chart').first();
    await chart.focus();
    const readout = page.getByTestId('chart-readout');
    const oldestFirst = [...archives].reverse();
    await chart.press('Home');
    for (let i = 0; i < oldestFirst.length; i++) {
      if (i > 0) await chart.press('ArrowRight');
      const a = oldestFirst[i]!;
      await expect.poll(() => readout.getAttribute('data-uuid')).toBe(a.uuid);
      const text = await readout.innerText();
      expect(text).toContain(`${i === 0 ? 'full' : 'incremental'} ${a.uuid.slice(-8)}`);
      expect(text).toContain(`stored ${formatBytes(a.bytesStored)}`);
      expect(await readout.getAttribute('data-stored')).toBe(String(a.bytesStored));
      expect(text).toContain(`logical ${formatBytes(a.dataBytes + a.zeroBytes)}`);
      if (i > 0) expect(text).toContain(`depends on ${oldestFirst[i - 1]!.uuid.slice(-8)}`);
      // uPlot's own legend shows the same value for the series under the cursor.
      expect(await page.locator('.u-legend').first().innerText()).toContain(formatBytes(a.bytesStored));
    }
    // Each incremental is joined to the archive it depends on.
    expect(await chart.getAttribute('data-links')).toBe(`${oldestFirst[0]!.uuid}>${oldestFirst[1]!.uuid} ${oldestFirst[1]!.uuid}>${oldestFirst[2]!.uuid}`);
    // The canvas really has the blue full point and orange incremental points on it.
    const colours = await page.locator('.chart canvas').first().evaluate((el) => {
      type Canvas = { width: number; height: number; getContext(t: '2d'): { getImageData(x: number, y: number, w: number, h: number): { data: Uint8ClampedArray } } };
      const c = el as unknown as Canvas;
      const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
      let blue = 0;
      let orange = 0;
      for (let i = 0; i < d.length; i += 4) {
        if (d[i] === 0x1d && d[i + 1] === 0x5f && d[i + 2] === 0xbf) blue++;
        if (d[i] === 0xd9 && d[i + 1] === 0x7a && d[i + 2] === 0x00) orange++;
      }
      return { blue, orange };
    });
    expect(colours.blue).toBeGreaterThan(20);
    expect(colours.orange).toBeGreaterThan(20);
    await expect.poll(() => page.locator('.u-title').allInnerTexts()).toEqual(['Backups: stored and logical bytes', 'Growth of stored bytes']);
    await screenshot(page, 'history');
    await chart.press('Home');
    await chart.press('Enter');
    await page.waitForURL(new RegExp(`#/archive/${oldestFirst[0]!.uuid}$`));
  });

  it('archive detail, and delete: the dialog lists the chain it would break and shows the catalogue\'s 409', async () => {
    const full = archives[2]!;
    await page.locator('dl.facts').waitFor();
    const facts = await page.locator('dl.facts').innerText();
    expect(facts).toContain(full.uuid);
    expect(facts).toContain(`${full.bytesStored.toLocaleString('en')} bytes`);
    expect(facts).toContain('never verified');
    expect(await page.locator('#dependents tbody tr').count()).toBe(2);
    await screenshot(page, 'archive');

    await page.locator('#delete').click();
    const dialog = page.locator('#delete-dialog');
    await dialog.waitFor();
    const broken = await page.locator('#broken-chain tbody tr').evaluateAll((trs) => trs.map((t) => t.getAttribute('data-uuid')));
    expect(broken).toEqual([archives[0]!.uuid, archives[1]!.uuid]);
    // Keyboard: focus starts on Cancel; Tab reaches the delete button.
    expect(await page.evaluate('document.activeElement?.id')).toBe('cancel-delete');
    await page.keyboard.press('Tab');
    expect(await page.evaluate('document.activeElement?.id')).toBe('confirm-delete');
    await page.keyboard.press('Enter');
    await expect.poll(() => dialog.locator('[role=alert]').innerText().catch(() => '')).toContain(`The catalogue refused: archive ${full.uuid} is the parent of ${archives[1]!.uuid}`);
    await screenshot(page, 'delete');
    await page.keyboard.press('Escape');
    await expect.poll(() => page.locator('#delete-dialog').count()).toBe(0);
    expect((await catalog.getArchive(full.uuid)).status).toBe('INDEXED');
  });

  it('restore form: the API\'s validation error, then a restore the agent runs to SUCCEEDED, byte-identical', async () => {
    const newest = archives[0]!;
    await page.goto(`${agent.catalogUrl}/#/archive/${newest.uuid}`);
    await expect.poll(() => page.locator('dl.facts').innerText().catch(() => '')).toContain(newest.uuid);
    await page.locator('#restore').click();
    await page.waitForURL(/#\/restores\?archive=/);
    await page.locator('#r-devices input[value="vda"]').waitFor();
    expect(await page.locator('#r-archive').inputValue()).toBe(newest.uuid);
    expect(await page.locator('#r-host').inputValue()).toBe(HOST);

    // A host id the API's schema refuses: its message is shown and the field marked.
    await page.locator('#r-host').fill('no such host!');
    await page.locator('#r-target').fill(join(restoreDir, 'vda.raw'));
    await page.locator('#r-devices input[value="vda"]').check();
    await page.locator('#r-submit').click();
    await expect.poll(() => page.locator('#restore-error').innerText().catch(() => '')).toMatch(/invalid restore request: hostId: must be 1-128 characters.*HTTP 400/);
    expect(await page.locator('#r-host').getAttribute('aria-invalid')).toBe('true');
    await screenshot(page, 'restore-error');

    await page.locator('#r-host').fill(HOST);
    await page.locator('#r-host').press('Enter'); // submits the form from the keyboard
    await page.locator('#restore-ok').waitFor();
    const row = page.locator('#restores tr.current');
    await row.waitFor();
    const jobId = await row.getAttribute('data-restore');
    const seen = new Set<string>();
    await expect
      .poll(
        async () => {
          const s = (await row.getAttribute('data-status')) ?? '';
          seen.add(s);
          return s;
        },
        { timeout: 30_000, interval: 100 },
      )
      .toBe('SUCCEEDED');
    expect([...seen][0]).toMatch(/PENDING|CLAIMED|RUNNING|SUCCEEDED/);
    const cells = await row.locator('td').allInnerTexts();
    expect(cells[1]).toBe(HOST);
    expect(await row.locator('[data-devices]').innerText()).toBe('vda');
    expect(cells[5]).toContain(`${formatBytes(VDA)} of ${formatBytes(VDA)} (100%)`);
    expect(cells[6]).toMatch(new RegExp(`^${HOST}@`));
    await screenshot(page, 'restores');

    const job = await catalog.getRestore(jobId!);
    expect(job.status).toBe('SUCCEEDED');
    expect(job.devices).toEqual(['vda']);
    const restored = await readFile(join(restoreDir, 'vda.raw'));
    expect(restored.equals(backups[2]!.vda)).toBe(true);
    expect(restored.equals(backups[0]!.vda)).toBe(false);
  });

  it('a restore the agent refuses (outside its allowed directories) shows FAILED with the reason', async () => {
    await page.locator('#r-target').fill(join(tmp.dir, 'elsewhere.raw'));
    await page.locator('#r-submit').click();
    await page.locator('#restore-ok').waitFor();
    const row = page.locator('#restores tr.current');
    await expect.poll(() => row.getAttribute('data-status'), { timeout: 30_000 }).toBe('FAILED');
    expect(await row.locator('td.error-cell').innerText()).toContain('outside the allowed directories');
  });

  it('through `cowstream console` (loopback proxy): without its token the page asks for one, a wrong one is refused', async () => {
    const srv = await startConsoleServer({ catalogUrl: agent.catalogUrl!, catalogToken: token });
    try {
      await page.goto(`${srv.url}/`);
      await page.locator('#token-form').waitFor();
      expect(await page.locator('#token-form').innerText()).toContain('The catalogue wants a token');
      await screenshot(page, 'token');
      await page.locator('#token').fill('not-the-token');
      await page.locator('#token').press('Enter');
      await expect.poll(() => page.locator('#token-form').innerText().catch(() => '')).toContain('refused the token of this tab');
      await page.locator('#token').fill(srv.token);
      await page.locator('#token').press('Enter');
      await page.locator(`#hosts tr[data-disk="vda"]`).waitFor();
      expect(await page.locator(`#hosts tr[data-disk="vda"] td[data-stored]`).innerText()).toBe(formatBytes(archives[0]!.bytesStored));
    } finally {
      await srv.close();
    }
  });

  // Last: the page's clock stays faked from here on.
  it('freshness colours follow the threshold as the backups age', async () => {
    await page.goto(`${agent.catalogUrl}/#/hosts`);
    // Thirty hours later: past the default 26 h threshold but within twice it → late; a 10 h threshold → stale.
    await page.clock.setFixedTime(Date.now() + 30 * 3600_000);
    await page.reload();
    const vda = page.locator(`#hosts tr[data-disk="vda"]`);
    await expect.poll(() => vda.getAttribute('data-freshness')).toBe('late');
    expect(await vda.locator('.badge').first().innerText()).toMatch(/^30 h( \d+ min)? ago$/);
    expect(await vda.locator('.badge').first().evaluate((e) => (globalThis as unknown as { getComputedStyle(e: unknown): { color: string } }).getComputedStyle(e).color)).toBe('rgb(161, 92, 0)');
    await page.locator('#fresh-hours').fill('10');
    await page.locator('#fresh-hours').press('Enter');
    await expect.poll(() => vda.getAttribute('data-freshness')).toBe('stale');
    expect(await vda.locator('.badge').first().evaluate((e) => (globalThis as unknown as { getComputedStyle(e: unknown): { color: string } }).getComputedStyle(e).color)).toBe('rgb(179, 38, 30)');
    expect(await page.locator('.summary').innerText()).toContain('2 stale');
    await page.locator('#fresh-hours').fill('48');
    await page.locator('#fresh-hours').press('Enter');
    await expect.poll(() => vda.getAttribute('data-freshness')).toBe('fresh');
  });
});
