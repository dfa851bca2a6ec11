/**
 * Schedules in a real agent (embedded S3, a file disk, croner's 6-field cron
 * with seconds so a run comes every second): full and incremental backups
 * taken on their own, retention keep-last 2 applied after each success (old
 * chains leave the bucket, the members of kept chains stay), the status on
 * GET /schedules and `cowstream status`, the 0600 state file and the
 * catch-up run after a restart, a scheduled run waiting for a manual backup
 * instead of failing, and retention left to a catalogue URL.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { S3Client } from '@aws-sdk/client-s3';
import { startAgent, type Agent } from '../../src/agent/agent.js';
import { parseAgentConfig } from '../../src/agent/config.js';
import { AgentClient } from '../../src/agent/control-client.js';
import type { Logger } from '../../src/agent/log.js';
import type { ScheduleReport } from '../../src/agent/scheduled-backups.js';
import { listBucketArchives } from '../../src/catalog/bucket-listing.js';
import type { ArchiveRecord } from '../../src/catalog/records.js';
import { createS3Client } from '../../src/store/s3-client.js';
import { loadOrCreateEmbeddedCredentials } from '../../src/store/embedded-credentials.js';
import { makeDisk, makeTempDir } from '../helpers/agent-process.js';
import { SlowSink } from '../helpers/agent-sinks.js';
import { runCliInProcess } from '../helpers/cli-inprocess.js';

const SIZE = 1024 * 1024;

interface Line {
  level: string;
  msg: string;
  fields: Record<string, unknown>;
}

function capture(): { log: Logger; lines: Line[] } {
  const lines: Line[] = [];
  const at = (level: string) => (msg: string, fields: Record<string, unknown> = {}) => void lines.push({ level, msg, fields });
  return { lines, log: { debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error') } };
}

async function until(what: string, cond: () => boolean | Promise<boolean>, timeoutMs = 25_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function bucketClient(agent: Agent): Promise<S3Client> {
  const creds = (await loadOrCreateEmbeddedCredentials(agent.config.stateDir)).s3;
  return createS3Client({ bucket: agent.s3!.bucket, prefix: '', endpoint: agent.s3!.endpoint!, region: 'us-east-1', forcePathStyle: true, credentials: creds, requestChecksumCalculation: 'WHEN_REQUIRED', responseChecksumValidation: 'WHEN_REQUIRED' });
}

/** The bucket's archives; a listing that races a retention deletion (listed, then gone: NoSuchKey) is taken again. */
async function archives(agent: Agent, client: S3Client): Promise<ArchiveRecord[]> {
  for (let attempt = 0; ; attempt++) {
    try {
      return (await listBucketArchives({ client, bucket: agent.s3!.bucket })).archives;
    } catch (err) {
      if ((err as { name?: string }).name !== 'NoSuchKey' || attempt >= 10) throw err;
    }
  }
}

const done = (lines: Line[]): Line[] => lines.filter((l) => l.msg === 'scheduled backup done');

let tmp: { dir: string; cleanup(): Promise<void> };
let diskPath: string;
const agents: Agent[] = [];

beforeAll(async () => {
  tmp = await makeTempDir('cowstream-schedules-');
  diskPath = join(tmp.dir, 'vda.raw');
  await makeDisk(diskPath, SIZE, 3);
});

afterAll(async () => {
  for (const a of agents) await a.stop();
  await tmp?.cleanup();
});

describe('schedules in the agent', () => {
  const stateDir = (): string => join(tmp.dir, 'state');
  const config = (): Record<string, unknown> => ({
    hostId: 'sched',
    stateDir: stateDir(),
    disks: [{ name: 'vda', path: diskPath }],
    schedules: [{ name: 'nightly', disks: ['vda'], full: '*/4 * * * * *', incremental: '* * * * * *', compressionLevel: 1, retention: { keepLast: 2 } }],
  });

  it('takes full and incremental backups on its own, expires old chains, keeps chain members, reports status', async () => {
    const { log, lines } = capture();
    const agent = await startAgent(parseAgentConfig(config()), { log });
    agents.push(agent);
    const s3 = await bucketClient(agent);
    // The oldest archive (an incremental slot with no parent yet runs as a full backup).
    await until('the first scheduled backup', () => done(lines).length > 0);
    const first = done(lines)[0]!.fields.uuid as string;
    // Expired: the first chain, once a later full and an incremental on it are the two newest.
    await until('retention to remove the first chain', async () => !(await archives(agent, s3)).some((a) => a.uuid === first));

    const modes = done(lines).map((l) => l.fields.mode);
    expect(modes).toContain('full');
    expect(modes).toContain('incremental');
    expect(lines.some((l) => l.msg === 'retention applied' && (l.fields.removed as string[]).includes(first))).toBe(true);
    expect(lines.filter((l) => l.level === 'error')).toEqual([]);

    // Chain members stay: every archive left has its parent in the bucket.
    const left = await archives(agent, s3);
    const ids = new Set(left.map((a) => a.uuid));
    for (const a of left) if (a.parentUuid !== null) expect(ids.has(a.parentUuid), `parent of ${a.uuid}`).toBe(true);
    expect(left.length).toBeGreaterThanOrEqual(2);
    expect(left.some((a) => a.parentUuid === null)).toBe(true);
    // keepLast 2 with an incremental on an incremental: the chain's full is kept too (3 kept, not 2).
    await until('a retention run that keeps an ancestor of the two newest', () => lines.some((l) => l.msg === 'retention applied' && (l.fields.kept as number) >= 3));
    expect(left.every((a) => a.hostId === 'sched')).toBe(true);

    // Status: next run in the future, last result, age of the last good backup per disk.
    const client = new AgentClient(agent.controlSocket);
    const [g] = (await client.schedules()) as [ScheduleReport];
    expect(g.name).toBe('nightly');
    expect(Date.parse(g.next!.at)).toBeGreaterThan(Date.now() - 1000);
    expect(g.retention).toEqual({ policy: { keepLast: 2 }, appliedBy: 'agent' });
    const good = g.lastGood[0]!;
    expect(good.disk).toBe('vda');
    expect(good.uuid).not.toBeNull();
    expect(ids.has(good.uuid!) || done(lines).some((l) => l.fields.uuid === good.uuid)).toBe(true);
    const cli = await runCliInProcess(['status', '--json', '--agent', agent.controlSocket]);
    expect(cli.code).toBe(0);
    const json = JSON.parse(cli.stdout) as { schedules: ScheduleReport[] };
    expect(json.schedules[0]!.name).toBe('nightly');
    expect(json.schedules[0]!.lastGood[0]!.disk).toBe('vda');
    const text = await runCliInProcess(['status', '--agent', agent.controlSocket]);
    expect(text.stdout).toMatch(/schedules:\n {2}nightly {2}disks vda\n {4}next run: {5}(full|incremental) at /);
    expect(text.stdout).toMatch(/last good backup:\n {6}vda: \d+s ago \((full|incremental) /);
    s3.destroy();
  }, 40_000);

  it('keeps its state in a 0600 file that survives a restart: a missed run runs once at start', async () => {
    const agent = agents.pop()!;
    await agent.stop();
    const file = join(stateDir(), 'schedules.json');
    expect((await stat(file)).mode & 0o777).toBe(0o600);
    const before = JSON.parse(await readFile(file, 'utf8')) as { groups: Record<string, { slot: number }> };
    expect(before.groups.nightly!.slot).toBeGreaterThan(0);
    // Down for more than one slot.
    await new Promise((r) => setTimeout(r, 1500));
    const { log, lines } = capture();
    const again = await startAgent(parseAgentConfig(config()), { log });
    agents.push(again);
    expect(lines.some((l) => l.msg === 'running a scheduled backup missed while the agent was down')).toBe(true);
    await until('a scheduled run after the restart', () => done(lines).length > 0);
    await again.stop();
    agents.pop();
    const after = JSON.parse(await readFile(file, 'utf8')) as { groups: Record<string, { slot: number }> };
    expect(after.groups.nightly!.slot).toBeGreaterThan(before.groups.nightly!.slot);
    expect((await stat(file)).mode & 0o777).toBe(0o600);
  }, 20_000);

  it('a run due while a manual backup is going waits for it, then runs (never a 409 failure)', async () => {
    const dir = join(tmp.dir, 'overlap');
    const { log, lines } = capture();
    const agent = await startAgent(
      parseAgentConfig({ hostId: 'overlap', stateDir: dir, disks: [{ name: 'vda', path: diskPath }], schedules: [{ name: 'every-second', full: '* * * * * *' }] }),
      // Only the manual backup (a file target) is slow: ~2.5 s for the 1 MiB disk.
      { log, wrapSink: (s, target) => (target.startsWith('file:') ? new SlowSink(s, 400 * 1024) : s) },
    );
    agents.push(agent);
    const client = new AgentClient(agent.controlSocket);
    // Start it between two runs: retry until the agent is free.
    const manual = { uuid: '' };
    await until('a manual backup to start', async () => {
      manual.uuid = await client.startBackup({ mode: 'full', target: `file:${join(tmp.dir, 'manual.cwa')}` }).then((r) => r.uuid, () => '');
      return manual.uuid !== '';
    });
    await until('a scheduled run to wait for the manual backup', () => lines.some((l) => l.msg === 'scheduled backup waits: another backup is running'));
    // Not GET /backups/current: the waiting run replaces it as soon as the manual backup ends.
    const manualDone = (await agent.backups.waitFor(manual.uuid))!;
    expect(manualDone.status).toBe('done');
    const waitedAt = lines.findIndex((l) => l.msg === 'scheduled backup waits: another backup is running');
    await until('the waiting run to finish', () => lines.some((l, i) => i > waitedAt && l.msg === 'scheduled backup done'));
    expect(lines.filter((l) => l.msg === 'scheduled backup failed')).toEqual([]);
    await agent.stop();
    agents.pop();
  }, 30_000);

  /** An agent with a catalogue and one schedule taking a full backup every second. */
  const startCatalogued = async (hostId: string, catalog: Record<string, unknown>, retention: Record<string, number>): Promise<{ agent: Agent; lines: Line[] }> => {
    const { log, lines } = capture();
    const agent = await startAgent(
      parseAgentConfig({
        hostId,
        stateDir: join(tmp.dir, hostId),
        disks: [{ name: 'vda', path: diskPath }],
        catalog,
        restore: { pollIntervalMs: 3_600_000 },
        schedules: [{ name: 'often', full: '* * * * * *', retention }],
      }),
      { log },
    );
    agents.push(agent);
    return { agent, lines };
  };

  /** The agent's scheduler deleted nothing itself, said so, and reports the catalogue as applying retention; then stops it. */
  const expectLeftToCatalogue = async (agent: Agent, lines: Line[]): Promise<void> => {
    expect(lines.some((l) => l.msg === 'retention skipped: the configured catalogue applies its own policy')).toBe(true);
    const [g] = await new AgentClient(agent.controlSocket).schedules();
    expect(g!.retention.appliedBy).toBe('catalogue');
    await agent.stop();
    agents.pop();
  };

  it('with a catalogue URL, retention is left to the catalogue (nothing deleted, and the log says so)', async () => {
    const { agent, lines } = await startCatalogued('catalogued', { url: 'http://127.0.0.1:9' }, { keepLast: 1 });
    await until('two scheduled backups', () => done(lines).length >= 2);
    const s3 = await bucketClient(agent);
    const uuids = done(lines).map((l) => l.fields.uuid as string);
    const ids = new Set((await archives(agent, s3)).map((a) => a.uuid));
    for (const u of uuids) expect(ids.has(u)).toBe(true);
    await expectLeftToCatalogue(agent, lines);
    s3.destroy();
  }, 30_000);

  it('with an embedded catalogue that has a policy, the catalogue applies it after each indexed archive', async () => {
    // The schedule's own policy would keep five: only the catalogue's (keep one) can remove the first archive below.
    const { agent, lines } = await startCatalogued('embcat', { embedded: true, retention: { keepLast: 1 } }, { keepLast: 5 });
    await until('the first scheduled backup', () => done(lines).length > 0);
    const first = done(lines)[0]!.fields.uuid as string;
    const s3 = await bucketClient(agent);
    await until('the catalogue to remove the first archive', async () => !(await archives(agent, s3)).some((a) => a.uuid === first));
    // Keeping five, the schedule's policy could remove the first archive only once a sixth exists.
    expect(done(lines).length).toBeLessThan(6);
    // The catalogue logs the deletion after S3 confirms it, so the line may trail the object's removal.
    await until('the catalogue to log the deletion', () => lines.some((l) => l.msg === 'deleted archive' && l.fields.uuid === first && l.fields.component === 'retention'));
    await expectLeftToCatalogue(agent, lines);
    s3.destroy();
  }, 30_000);
});
