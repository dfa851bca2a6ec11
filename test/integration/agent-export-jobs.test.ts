/**
 * Export jobs end to end: an operator asks the catalogue (the agent's
 * embedded one: dynalite + the same API code as the Lambda) to serve an
 * archive on host h1; h1's agent claims it, serves it over its NBD server
 * (src/serve, reading the agent's embedded S3)
 * and reports the URIs, which real clients (qemu-img) read; ending the job
 * in the catalogue removes the export on the agent. A poller of another
 * host never claims it; a job whose overlay escapes the allowed directories
 * fails with the reason; an export removed on the agent completes its job.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { startAgent, type Agent } from '../../src/agent/agent.js';
import { AgentClient } from '../../src/agent/control-client.js';
import { silentLogger } from '../../src/agent/log.js';
import { ArchiveExports } from '../../src/agent/archive-exports.js';
import { RestorePoller } from '../../src/agent/restore-poller.js';
import { CatalogClient } from '../../src/catalog/client.js';
import type { ExportJob } from '../../src/catalog/records.js';
import { readEmbeddedCredentials } from '../../src/store/embedded-credentials.js';
import { makeDisk, makeTempDir, runCli } from '../helpers/agent-process.js';
import { twoDiskAgentConfig } from '../helpers/agent-two-disks.js';
import { runTool } from '../helpers/nbd-tools.js';

const SIZE = 1024 * 1024 + 4096;

let tmp: { dir: string; cleanup(): Promise<void> };
let agent: Agent;
let catalog: CatalogClient;
let token: string;
let uuid: string;
let otherHost: RestorePoller;
let otherOpened = 0;

async function waitFor<T>(what: string, fn: () => Promise<T | null | undefined | false>, timeoutMs = 15_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn().catch(() => null);
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const jobIn = (id: string, ...statuses: string[]) => async (): Promise<ExportJob | null> => {
  const j = await catalog.getExport(id);
  return statuses.includes(j.status) ? j : null;
};

beforeAll(async () => {
  tmp = await makeTempDir('cowstream-export-jobs-');
  await makeDisk(join(tmp.dir, 'a.raw'), SIZE, 21);
  await makeDisk(join(tmp.dir, 'b.raw'), SIZE, 22);
  await mkdir(join(tmp.dir, 'allowed'));
  const config = twoDiskAgentConfig(tmp.dir, {
    catalog: { embedded: true },
    restore: { allowedDirs: [join(tmp.dir, 'allowed')], pollIntervalMs: 100 },
  });
  agent = await startAgent(config, { log: silentLogger });
  token = (await readEmbeddedCredentials(config.stateDir)).catalogToken;
  catalog = new CatalogClient({ url: agent.catalogUrl!, token });
  const control = new AgentClient(agent.controlSocket);
  const st = await control.startBackup({ mode: 'full' });
  expect((await control.waitForBackup(st.uuid, undefined, 50)).status).toBe('done');
  uuid = st.uuid;
  await waitFor('the archive in the catalogue', () => catalog.getArchive(uuid));
  // Another host's agent polling the same catalogue: it must never claim h1's jobs.
  otherHost = new RestorePoller({
    hostId: 'h2',
    catalogUrl: agent.catalogUrl!,
    catalogToken: token,
    allowedDirs: [],
    store: null,
    pollIntervalMs: 50,
    archiveExports: new ArchiveExports({
      exports: new Map(),
      config: agent.config.exports,
      allowedDirs: [],
      context: null,
      open: async () => {
        otherOpened++;
        throw new Error('h2 must not serve h1 jobs');
      },
      uris: () => [],
      log: silentLogger,
    }),
  });
  otherHost.start();
}, 60_000);

afterAll(async () => {
  await otherHost?.stop();
  await agent?.stop();
  await tmp?.cleanup();
});

describe('catalogue export jobs', () => {
  it("are claimed by the host's agent, served at the reported URI, and removed when the operator ends them", async () => {
    const { exportId } = await catalog.createExport({ archiveId: uuid, hostId: 'h1', devices: ['a'] });
    const job = await waitFor('the export served', jobIn(exportId, 'RUNNING', 'FAILED'));
    expect(job.error).toBeUndefined();
    expect(job.claimedBy).toMatch(/^h1@/);
    expect(job.served!.exports).toHaveLength(1);
    const disk = job.served!.exports[0]!;
    expect(disk).toMatchObject({ disk: 'a', size: SIZE, name: `export-${job.served!.exportId}/a` });
    const uri = disk.uris[0]!;
    expect(uri).toMatch(/^nbd\+unix:\/\/\//);
    const cmp = await runTool('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', join(tmp.dir, 'a.raw'), uri]);
    expect(cmp.code, cmp.stdout + cmp.stderr).toBe(0);
    expect(agent.archiveExports.list().map((e) => [e.id, e.jobId])).toEqual([[job.served!.exportId, exportId]]);

    // Its lease is renewed while it is served.
    const lease = job.leaseExpiresAt!;
    await waitFor('a renewed lease', async () => (await catalog.getExport(exportId)).leaseExpiresAt! > lease, 10_000);

    expect((await catalog.endExport(exportId)).status).toBe('CANCELLED');
    await waitFor('the export removed on the agent', async () => agent.archiveExports.list().length === 0, 10_000);
    const gone = await runTool('qemu-img', ['info', '-f', 'raw', uri]);
    expect(gone.code).not.toBe(0);
    expect(otherOpened).toBe(0);
  });

  it('fail with the reason when the overlay escapes the allowed directories; nothing is served', async () => {
    const { exportId } = await catalog.createExport({ archiveId: uuid, hostId: 'h1', devices: ['a'], overlay: join(tmp.dir, 'elsewhere', 'a.overlay') });
    const job = await waitFor('the job failed', jobIn(exportId, 'FAILED', 'RUNNING'));
    expect(job.status).toBe('FAILED');
    expect(job.error).toMatch(/outside the allowed directories/);
    expect(agent.archiveExports.list()).toEqual([]);
  });

  it('complete when the export is removed on the agent', async () => {
    const { exportId } = await catalog.createExport({ archiveId: uuid, hostId: 'h1' });
    const job = await waitFor('the export served', jobIn(exportId, 'RUNNING', 'FAILED'));
    expect(job.served!.exports.map((e) => e.disk).sort()).toEqual(['a', 'b']);
    await new AgentClient(agent.controlSocket).call('DELETE', `/exports/${job.served!.exportId}`);
    const done = await waitFor('the job completed', jobIn(exportId, 'SUCCEEDED', 'FAILED'), 10_000);
    expect(done.status).toBe('SUCCEEDED');
    expect(otherOpened).toBe(0);
  });

  it('cowstream export request --wait prints the URIs once served; export end ends it; a bad request names the field', async () => {
    const state = ['--state', agent.config.stateDir];
    const req = await runCli(['export', 'request', uuid, '--host', 'h1', '--disk', 'b', '--wait', '--json', ...state]);
    expect(req.code, req.stderr).toBe(0);
    const job = JSON.parse(req.stdout.toString()) as ExportJob;
    expect(job.status).toBe('RUNNING');
    const cmp = await runTool('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', join(tmp.dir, 'b.raw'), job.served!.exports[0]!.uris[0]!]);
    expect(cmp.code, cmp.stdout + cmp.stderr).toBe(0);
    const end = await runCli(['export', 'end', job.id, ...state]);
    expect(end.code, end.stderr).toBe(0);
    expect(end.stdout.toString()).toContain('CANCELLED');
    await waitFor('the export removed on the agent', async () => agent.archiveExports.list().length === 0, 10_000);
    const bad = await runCli(['export', 'request', uuid, '--host', 'h1', '--overlay', 'relative', ...state]);
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toMatch(/overlay: must be an absolute path/);
  }, 60_000);
});
