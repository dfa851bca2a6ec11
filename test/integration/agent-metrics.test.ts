/**
 * GET /metrics against real agents: a child process backed up to its
 * embedded S3 (control socket; the optional loopback TCP listener; no TCP
 * listener unless configured; uid 65534 kept out of the socket), and agents
 * in this process for what needs guest writes during a backup (CBW waits,
 * fleecing) or two agents side by side (one registry each).
 */
import { execFile, spawnSync } from 'node:child_process';
import { request } from 'node:http';
import { connect, createServer, type AddressInfo } from 'node:net';
import { once } from 'node:events';
import { chmod, mkdir, mkdtemp, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startAgent, type Agent } from '../../src/agent/agent.js';
import { parseAgentConfig } from '../../src/agent/config.js';
import { AgentClient } from '../../src/agent/control-client.js';
import { CatalogClient } from '../../src/catalog/client.js';
import { readEmbeddedCredentials } from '../../src/store/embedded-credentials.js';
import { silentLogger } from '../../src/agent/log.js';
import { makeDisk, makeTempDir, spawnAgent, writeAgentConfig, type AgentProcess } from '../helpers/agent-process.js';
import { SlowClusterSink } from '../helpers/agent-sinks.js';
import { listeningTcpPorts } from '../helpers/listening-ports.js';
import { qemuIo } from '../helpers/nbd-tools.js';
import { parsePromText, type PromText } from '../helpers/prom-text.js';

const SIZE = 2 * 1024 * 1024;
const NOBODY = ['--reuid=65534', '--regid=65534', '--clear-groups'];
const canDropPrivileges = process.getuid?.() === 0 && spawnSync('setpriv', [...NOBODY, 'true']).status === 0;

/** GET over the control socket or TCP; the raw answer. */
function get(target: { socketPath: string } | { port: number }, path: string, method = 'GET'): Promise<{ status: number; type: string; body: string }> {
  return new Promise((resolve, reject) => {
    const where = 'socketPath' in target ? { socketPath: target.socketPath } : { host: '127.0.0.1', port: target.port };
    const req = request({ ...where, method, path }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, type: String(res.headers['content-type'] ?? ''), body }));
    });
    req.on('error', reject);
    req.end();
  });
}

async function scrape(target: { socketPath: string } | { port: number }): Promise<PromText> {
  const r = await get(target, '/metrics');
  expect(r.status, r.body).toBe(200);
  expect(r.type).toMatch(/^text\/plain; version=0\.0\.4/);
  return parsePromText(r.body);
}

/** Every series is ours, and every `disk` label is a configured disk (bounded cardinality). */
function expectBounded(m: PromText, disks: string[]): void {
  for (const s of m.samples) {
    expect(s.name.startsWith('cowstream_'), s.name).toBe(true);
    if ('disk' in s.labels) expect(disks).toContain(s.labels.disk);
  }
}

describe('agent process: GET /metrics on the control socket', () => {
  let tmp: { dir: string; cleanup(): Promise<void> };
  let agent: AgentProcess;
  let client: AgentClient;
  let firstSuccess = 0;

  beforeAll(async () => {
    tmp = await makeTempDir('cowstream-metrics-');
    await makeDisk(join(tmp.dir, 'vda.raw'), SIZE, 1);
    await makeDisk(join(tmp.dir, 'vdb.raw'), SIZE, 2);
    // The control socket sits in a world-writable directory: only its own mode keeps other users out.
    const open = join(tmp.dir, 'open');
    await mkdir(open);
    await chmod(tmp.dir, 0o755);
    await chmod(open, 0o777);
    const cfg = await writeAgentConfig(tmp.dir, {
      hostId: 'metrics-host',
      stateDir: join(tmp.dir, 'state'),
      disks: [
        { name: 'vda', path: join(tmp.dir, 'vda.raw') },
        { name: 'vdb', path: join(tmp.dir, 'vdb.raw') },
      ],
      control: { socket: join(open, 'agent.sock') },
    });
    agent = await spawnAgent(cfg);
    client = new AgentClient(agent.controlSocket);
  }, 60_000);

  afterAll(async () => {
    await agent?.stop();
    await tmp?.cleanup();
  });

  it('a backup shows its success time, bytes and duration for that disk; the other disk has zeros', async () => {
    const before = Date.now() / 1000;
    const m0 = await scrape({ socketPath: agent.controlSocket });
    expect(m0.get('cowstream_backup_last_success_timestamp_seconds', { disk: 'vda' })).toBe(0);
    expect(m0.get('cowstream_backup_read_bytes_total', { disk: 'vda' })).toBe(0);

    const started = await client.startBackup({ mode: 'full', target: 's3', disks: ['vda'] });
    const st = await client.waitForBackup(started.uuid, undefined, 50);
    expect(st.status).toBe('done');
    const after = Date.now() / 1000;

    const m = await scrape({ socketPath: agent.controlSocket });
    expectBounded(m, ['vda', 'vdb']);
    expect(m.get('cowstream_agent_info', { host_id: 'metrics-host' })).toBe(1);
    expect(m.get('cowstream_agent_degraded')).toBe(0);
    firstSuccess = m.get('cowstream_backup_last_success_timestamp_seconds', { disk: 'vda' })!;
    expect(firstSuccess).toBeGreaterThanOrEqual(Math.floor(before));
    expect(firstSuccess).toBeLessThanOrEqual(after + 1);
    expect(m.get('cowstream_backup_last_success_timestamp_seconds', { disk: 'vdb' })).toBe(0);
    expect(m.get('cowstream_backup_last_result', { disk: 'vda', result: 'success' })).toBe(1);
    expect(m.get('cowstream_backup_last_result', { disk: 'vda', result: 'failure' })).toBe(0);
    expect(m.get('cowstream_backup_last_result', { disk: 'vdb', result: 'success' })).toBe(0);
    // A full backup reads the whole disk (all-zero clusters included).
    expect(st.transferred).toBe(SIZE);
    expect(m.get('cowstream_backup_read_bytes_total', { disk: 'vda' })).toBe(SIZE);
    expect(m.get('cowstream_backup_read_bytes_total', { disk: 'vdb' })).toBe(0);
    expect(st.archiveBytes).toBeGreaterThan(0);
    expect(m.get('cowstream_backup_stored_bytes_total', { target: 's3' })).toBe(st.archiveBytes);
    expect(m.get('cowstream_backups_total', { mode: 'full', result: 'success' })).toBe(1);
    const dur = { disk: 'vda', mode: 'full', result: 'success' };
    expect(m.types.get('cowstream_backup_duration_seconds')).toBe('histogram');
    expect(m.get('cowstream_backup_duration_seconds_count', dur)).toBe(1);
    const sum = m.get('cowstream_backup_duration_seconds_sum', dur)!;
    expect(sum).toBeGreaterThan(0);
    expect(sum).toBeLessThanOrEqual(after - before + 1);
    expect(m.get('cowstream_backup_duration_seconds_bucket', { ...dur, le: '+Inf' })).toBe(1);
    expect(m.get('cowstream_nbd_connections')).toBe(0);
    expect(m.get('cowstream_backup_running')).toBe(0);
  });

  it('a failed backup sets the result metric and keeps the last success time', async () => {
    expect(firstSuccess).toBeGreaterThan(0);
    // The target directory does not exist: the backup fails after it was accepted as a run.
    await expect(client.startBackup({ mode: 'full', target: `file:${join(tmp.dir, 'missing-dir', 'x.cwa')}`, disks: ['vda'] })).rejects.toThrow();
    const cur = await client.status();
    expect(cur.status).toBe('error');
    const m = await scrape({ socketPath: agent.controlSocket });
    expect(m.get('cowstream_backup_last_result', { disk: 'vda', result: 'failure' })).toBe(1);
    expect(m.get('cowstream_backup_last_result', { disk: 'vda', result: 'success' })).toBe(0);
    expect(m.get('cowstream_backups_total', { mode: 'full', result: 'failure' })).toBe(1);
    expect(m.get('cowstream_backup_last_success_timestamp_seconds', { disk: 'vda' })).toBe(firstSuccess);
    expect(m.get('cowstream_backup_last_end_timestamp_seconds', { disk: 'vda' })).toBeGreaterThanOrEqual(firstSuccess);
  });

  it('opens no TCP listener for metrics unless configured', async () => {
    const ready = agent.logs.find((l) => l.msg === 'agent ready')!;
    expect(ready.metrics).toBeUndefined();
    // The embedded S3 is the only TCP listener of this agent (no nbd.listen, no metrics.listen).
    const s3Port = Number(new URL((ready.s3 as { endpoint: string }).endpoint).port);
    expect(await listeningTcpPorts(agent.child.pid!)).toEqual([s3Port]);
  });

  it.skipIf(!canDropPrivileges)('uid 65534 cannot read the metrics from the control socket', async () => {
    const script = join(await mkdtemp(join(tmp.dir, 'nobody-')), 'scrape.cjs');
    await writeFile(
      script,
      `const http = require('node:http');
const req = http.request({ socketPath: process.argv[2], path: '/metrics' }, (res) => { let b = ''; res.on('data', (d) => (b += d)); res.on('end', () => console.log(JSON.stringify({ status: res.statusCode, metrics: b.includes('cowstream_backup_last_success_timestamp_seconds') }))); });
req.on('error', (e) => console.log(JSON.stringify({ error: e.code })));
req.end();`,
    );
    await chmod(script, 0o644);
    await chmod(join(script, '..'), 0o755);
    const run = promisify(execFile);
    // The same script as the agent's user reads them: the refusal below is the socket's doing.
    const own = JSON.parse((await run(process.execPath, [script, agent.controlSocket])).stdout) as { status?: number; metrics?: boolean };
    expect(own).toEqual({ status: 200, metrics: true });
    const nobody = JSON.parse((await run('setpriv', [...NOBODY, process.execPath, script, agent.controlSocket])).stdout) as { error?: string };
    expect(nobody).toEqual({ error: 'EACCES' });
  });
});

describe('agent process: metrics.listen on loopback, degraded, with a schedule', () => {
  let tmp: { dir: string; cleanup(): Promise<void> };
  let agent: AgentProcess;
  let port: number;

  beforeAll(async () => {
    tmp = await makeTempDir('cowstream-metrics-tcp-');
    await makeDisk(join(tmp.dir, 'vda.raw'), SIZE, 3);
    const cfg = await writeAgentConfig(tmp.dir, {
      hostId: 'metrics-tcp',
      stateDir: join(tmp.dir, 'state'),
      disks: [{ name: 'vda', path: join(tmp.dir, 'vda.raw') }],
      metrics: { listen: '127.0.0.1:0' },
      // Nothing listens on port 9: the store check fails and the agent starts degraded.
      store: { bucket: 'unreachable', endpoint: 'http://127.0.0.1:9', region: 'us-east-1', forcePathStyle: true, timeouts: { connectMs: 200, requestMs: 500 } },
      startDegraded: true,
      schedules: [{ name: 'weekly', disks: ['vda'], full: '0 3 * * 0' }],
    });
    agent = await spawnAgent(cfg);
    const ready = agent.logs.find((l) => l.msg === 'agent ready')!;
    const addr = ready.metrics as { host: string; port: number };
    expect(addr.host).toBe('127.0.0.1');
    port = addr.port;
  }, 60_000);

  afterAll(async () => {
    await agent?.stop();
    await tmp?.cleanup();
  });

  it('serves GET /metrics on the configured loopback port, and nothing else there', async () => {
    expect(await listeningTcpPorts(agent.child.pid!)).toContain(port);
    const m = await scrape({ port });
    expect(m.get('cowstream_agent_info', { host_id: 'metrics-tcp' })).toBe(1);
    expect(m.get('cowstream_backup_last_success_timestamp_seconds', { disk: 'vda' })).toBe(0);
    // The control API is not reachable through this port.
    expect((await get({ port }, '/')).status).toBe(404);
    expect((await get({ port }, '/disks')).status).toBe(404);
    expect((await get({ port }, '/backups', 'POST')).status).toBe(404);
    expect((await get({ port }, '/metrics', 'POST')).status).toBe(405);
  });

  it('reports the degraded start and the next scheduled run', async () => {
    const m = await scrape({ port });
    expect(m.get('cowstream_agent_degraded')).toBe(1);
    expect(m.get('cowstream_agent_startup_check_failed', { check: 'store.read' })).toBe(1);
    const next = m.get('cowstream_schedule_next_run_timestamp_seconds', { schedule: 'weekly', mode: 'full' })!;
    const schedules = await new AgentClient(agent.controlSocket).schedules();
    expect(next).toBe(Date.parse(schedules[0]!.next!.at) / 1000);
    expect(next).toBeGreaterThan(Date.now() / 1000);
    expect(new Date(next * 1000).getUTCHours()).toBe(3);
  });
});

describe('agents in this process', () => {
  let tmp: { dir: string; cleanup(): Promise<void> };
  const agents: Agent[] = [];

  beforeAll(async () => {
    tmp = await makeTempDir('cowstream-metrics-inproc-');
  });

  afterAll(async () => {
    for (const a of agents) await a.stop();
    await tmp?.cleanup();
  });

  async function start(name: string, wrap?: { bytesPerSec: number }): Promise<Agent> {
    await makeDisk(join(tmp.dir, `${name}.raw`), SIZE, name.length);
    const config = parseAgentConfig({
      hostId: name,
      stateDir: join(tmp.dir, `${name}-state`),
      disks: [{ name: 'vda', path: join(tmp.dir, `${name}.raw`) }],
      store: { bucket: 'unused-bucket', endpoint: 'http://127.0.0.1:9', region: 'us-east-1' },
    });
    const a = await startAgent(config, { log: silentLogger, ...(wrap ? { wrapClusterSink: (s) => new SlowClusterSink(s, wrap.bytesPerSec) } : {}) });
    agents.push(a);
    return a;
  }

  it('two agents keep separate registries', async () => {
    const a = await start('alpha');
    const b = await start('beta');
    const ma = parsePromText((await a.metrics.render()).body);
    const mb = parsePromText((await b.metrics.render()).body);
    expect(ma.get('cowstream_agent_info', { host_id: 'alpha' })).toBe(1);
    expect(ma.get('cowstream_agent_info', { host_id: 'beta' })).toBeUndefined();
    expect(mb.get('cowstream_agent_info', { host_id: 'beta' })).toBe(1);
  });

  it('guest writes during a fleecing backup show CBW waits and the scratch peak', async () => {
    const a = await start('gamma', { bytesPerSec: 512 * 1024 });
    const client = new AgentClient(a.controlSocket);
    const fleece = join(tmp.dir, 'fleece');
    await mkdir(fleece);
    const started = await client.startBackup({ mode: 'full', target: `file:${join(tmp.dir, 'gamma.cwa')}`, fleecing: { dir: fleece, maxBytes: SIZE } });
    // Writes to the end of the disk, which the background pass reaches last.
    const w = await qemuIo(`nbd+unix:///vda?socket=${a.nbdSocket}`, ['write -P 0x5a 1792k 64k', 'write -P 0x5b 1920k 128k']);
    expect(w.ok, w.stdout + w.stderr).toBe(true);
    const st = await client.waitForBackup(started.uuid, undefined, 50);
    expect(st.status).toBe('done');
    expect(st.cbwClusters).toBeGreaterThan(0);
    const m = parsePromText((await a.metrics.render()).body);
    expect(m.get('cowstream_cbw_guest_write_wait_seconds_count', { disk: 'vda' })).toBeGreaterThanOrEqual(1);
    expect(m.get('cowstream_cbw_guest_write_wait_max_seconds', { disk: 'vda' })).toBeGreaterThan(0);
    expect(m.get('cowstream_fleecing_scratch_peak_bytes')).toBe(st.fleecingPeakBytes);
    expect(st.fleecingPeakBytes).toBeGreaterThan(0);
    expect(m.get('cowstream_backup_stored_bytes_total', { target: 'file' })).toBe(st.archiveBytes);
    expect(m.get('cowstream_nbd_requests_total')).toBeGreaterThanOrEqual(2);
  });

  it('counts open NBD connections', async () => {
    const a = await start('delta');
    const before = parsePromText((await a.metrics.render()).body);
    expect(before.get('cowstream_nbd_connections')).toBe(0);
    const sock = connect(a.nbdSocket!);
    await once(sock, 'connect');
    try {
      // The server counts a connection from its accept, which follows the client's connect.
      let n = 0;
      for (let i = 0; i < 100 && n === 0; i++) {
        n = parsePromText((await a.metrics.render()).body).get('cowstream_nbd_connections')!;
        if (n === 0) await new Promise((r) => setTimeout(r, 20));
      }
      expect(n).toBe(1);
    } finally {
      sock.destroy();
    }
  });

  it('counts catalogue restore jobs by result', async () => {
    await makeDisk(join(tmp.dir, 'rho.raw'), SIZE, 7);
    const allowed = join(tmp.dir, 'restores');
    await mkdir(allowed);
    const a = await startAgent(
      parseAgentConfig({
        hostId: 'rho',
        stateDir: join(tmp.dir, 'rho-state'),
        disks: [{ name: 'vda', path: join(tmp.dir, 'rho.raw') }],
        catalog: { embedded: true },
        restore: { allowedDirs: [allowed], pollIntervalMs: 100 },
      }),
      { log: silentLogger },
    );
    agents.push(a);
    const started = await new AgentClient(a.controlSocket).startBackup({ mode: 'full', target: 's3' });
    expect((await new AgentClient(a.controlSocket).waitForBackup(started.uuid, undefined, 50)).status).toBe('done');
    const catalog = new CatalogClient({ url: a.catalogUrl!, token: (await readEmbeddedCredentials(a.config.stateDir)).catalogToken });
    const restoreWhenIndexed = async (path: string): Promise<string> => {
      for (let i = 0; ; i++) {
        try {
          return (await catalog.createRestore({ archiveId: started.uuid, hostId: 'rho', target: { path } })).restoreId;
        } catch (err) {
          if (i > 100) throw err; // the S3 event indexes the archive shortly after the upload
          await new Promise((r) => setTimeout(r, 100));
        }
      }
    };
    const ended = async (id: string): Promise<string> => {
      for (let i = 0; i < 300; i++) {
        const job = await catalog.getRestore(id);
        if (job.status === 'SUCCEEDED' || job.status === 'FAILED') return job.status;
        await new Promise((r) => setTimeout(r, 100));
      }
      throw new Error(`restore ${id} did not end`);
    };
    expect(await ended(await restoreWhenIndexed(join(allowed, 'ok')))).toBe('SUCCEEDED');
    // Outside restore.allowedDirs: the agent refuses the job.
    expect(await ended(await restoreWhenIndexed(join(tmp.dir, 'elsewhere')))).toBe('FAILED');
    // The poller counts a job once the catalogue acknowledged its completion, which a reader may see first.
    let m = parsePromText((await a.metrics.render()).body);
    for (let i = 0; i < 50 && m.get('cowstream_restore_jobs_total', { result: 'failure' }) === 0; i++) {
      await new Promise((r) => setTimeout(r, 20));
      m = parsePromText((await a.metrics.render()).body);
    }
    expect(m.get('cowstream_restore_jobs_total', { result: 'success' })).toBe(1);
    expect(m.get('cowstream_restore_jobs_total', { result: 'failure' })).toBe(1);
  }, 60_000);

  it('a metrics port in use stops the start with an error naming metrics.listen, and undoes the start', async () => {
    const busy = createServer();
    await new Promise<void>((r) => busy.listen(0, '127.0.0.1', r));
    const port = (busy.address() as AddressInfo).port;
    await makeDisk(join(tmp.dir, 'sigma.raw'), SIZE, 9);
    const config = parseAgentConfig({
      hostId: 'sigma',
      stateDir: join(tmp.dir, 'sigma-state'),
      disks: [{ name: 'vda', path: join(tmp.dir, 'sigma.raw') }],
      store: { bucket: 'unused-bucket', endpoint: 'http://127.0.0.1:9', region: 'us-east-1' },
      metrics: { listen: `127.0.0.1:${port}` },
    });
    try {
      await expect(startAgent(config, { log: silentLogger })).rejects.toThrow(new RegExp(`metrics\\.listen: cannot listen on 127\\.0\\.0\\.1:${port}`));
    } finally {
      busy.close();
    }
    // Everything the failed start opened is closed again (state lock, sockets): the same config now starts.
    const a = await startAgent(config, { log: silentLogger });
    agents.push(a);
    expect(a.metricsAddress).toEqual({ host: '127.0.0.1', port });
  });
});
