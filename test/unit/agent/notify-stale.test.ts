/**
 * Stale disks under a fake clock: disk.stale fires once per stale episode
 * (not at every check), the episode ends when a good backup arrives and a
 * later one fires again; a disk never backed up is stale once the agent has
 * been up for staleAfter; a restart in the middle of an episode does not
 * send it again (the 0600 state file).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { StaleWatcher, STALE_STATE_FILE, type DiskLastGood, type StaleInfo } from '../../../src/agent/notify-stale.js';
import { FakeClock } from '../../helpers/fake-clock.js';
import { captureLog } from '../../helpers/capture-log.js';
import { makeTempDir } from '../../helpers/agent-process.js';

const HOUR = 3_600_000;
const T0 = Date.parse('2026-06-01T00:00:00Z');

let tmp: { dir: string; cleanup(): Promise<void> };
beforeAll(async () => {
  tmp = await makeTempDir('cowstream-stale-');
});
afterAll(async () => tmp?.cleanup());

function watcher(stateDir: string, clock: FakeClock, disks: DiskLastGood[], fired: StaleInfo[]): StaleWatcher {
  return new StaleWatcher({ staleAfterMs: HOUR, stateDir, disks: async () => disks.map((d) => ({ ...d })), onStale: (i) => void fired.push(i), clock, log: captureLog().log });
}

describe('StaleWatcher', () => {
  it('fires once per episode, clears on a good backup, fires again for a new episode', async () => {
    const clock = new FakeClock(T0);
    const disks: DiskLastGood[] = [{ disk: 'vda', lastGood: { uuid: 'a1', time: new Date(T0 - 30 * 60_000).toISOString() } }];
    const fired: StaleInfo[] = [];
    const w = watcher(join(tmp.dir), clock, disks, fired);
    await w.start();
    expect(w.checkIntervalMs).toBe(5 * 60_000); // a tenth of staleAfter, at most 5 min
    expect(fired).toEqual([]); // 30 min old: fresh
    await clock.advance(29 * 60_000);
    expect(fired).toEqual([]);
    // Past an hour: stale, reported once however many checks follow.
    await clock.advance(10 * 60_000);
    expect(fired).toHaveLength(1);
    expect(fired[0]).toMatchObject({ disk: 'vda', lastGood: { uuid: 'a1' }, staleAfterSeconds: 3600 });
    expect(fired[0]!.ageSeconds).toBeGreaterThan(3600);
    await clock.advance(5 * HOUR);
    expect(fired).toHaveLength(1);
    await w.check(); // the episode is on disk once the check that opened it is over
    expect((await stat(join(tmp.dir, STALE_STATE_FILE))).mode & 0o777).toBe(0o600);

    // A good backup ends the episode (checked at once, as after a backup)...
    disks[0]!.lastGood = { uuid: 'a2', time: new Date(clock.now()).toISOString() };
    await w.check();
    expect(JSON.parse(await readFile(join(tmp.dir, STALE_STATE_FILE), 'utf8'))).toEqual({ episodes: {} });
    await clock.advance(30 * 60_000);
    expect(fired).toHaveLength(1);
    // ...and the next time it gets too old is a new episode.
    await clock.advance(40 * 60_000);
    expect(fired).toHaveLength(2);
    expect(fired[1]).toMatchObject({ disk: 'vda', lastGood: { uuid: 'a2' } });
    await clock.advance(3 * HOUR);
    expect(fired).toHaveLength(2);
    await w.stop();
  });

  it('a disk never backed up is stale after staleAfter of uptime; a restart mid-episode does not resend', async () => {
    const dir = join(tmp.dir, 'restart');
    await (await import('node:fs/promises')).mkdir(dir);
    const clock = new FakeClock(T0);
    const disks: DiskLastGood[] = [
      { disk: 'vda', lastGood: null },
      { disk: 'vdb', lastGood: { uuid: 'b1', time: new Date(T0 - 2 * HOUR).toISOString() } },
    ];
    const fired: StaleInfo[] = [];
    const w1 = watcher(dir, clock, disks, fired);
    await w1.start();
    expect(fired.map((f) => f.disk)).toEqual(['vdb']); // vda: just started, not yet
    await clock.advance(HOUR + 7 * 60_000);
    expect(fired.map((f) => f.disk)).toEqual(['vdb', 'vda']);
    expect(fired[1]).toMatchObject({ lastGood: null, ageSeconds: null });
    await w1.stop();

    // The agent restarts: both episodes are still open and were reported already.
    const again: StaleInfo[] = [];
    const w2 = watcher(dir, clock, disks, again);
    await w2.start();
    await clock.advance(3 * HOUR);
    expect(again).toEqual([]);
    await w2.stop();
  });
});
