/**
 * The state directory lock under real contention: many agent processes
 * start at the same instant, with and without a stale lock (its holder
 * SIGKILLed, or a lock file naming a dead pid). At every instant at most
 * one process may hold it, and exactly one of the contenders gets it.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { access, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { lockStateDir } from '../../src/agent/state-lock.js';
import { ConflictError } from '../../src/errors.js';
import { REPO_ROOT, makeTempDir } from '../helpers/agent-process.js';

let tmp: { dir: string; cleanup(): Promise<void> } | null = null;
const children: ChildProcess[] = [];

afterEach(async () => {
  for (const c of children.splice(0)) if (c.exitCode === null) c.kill('SIGKILL');
  await tmp?.cleanup();
  tmp = null;
});

/**
 * A contender process, driven by lines on stdin: "go" tries the lock and
 * prints LOCKED or BUSY (keeping what it got), "release" lets it go and
 * prints RELEASED. One write to every stdin starts all attempts within
 * a millisecond or so.
 */
const CONTENDER = `
import { createInterface } from 'node:readline';
import { lockStateDir } from ${JSON.stringify(join(REPO_ROOT, 'src/agent/state-lock.ts'))};
const state = process.argv.at(-1);
let unlock = null;
for await (const line of createInterface({ input: process.stdin })) {
  if (line === 'go') {
    try { unlock = await lockStateDir(state); console.log('LOCKED'); }
    catch (err) { console.log(err.name === 'ConflictError' ? 'BUSY' : 'ERROR ' + err.message); }
  } else if (line === 'release') {
    await unlock?.(); unlock = null; console.log('RELEASED');
  }
}
`;

interface Contender {
  child: ChildProcess;
  next(): Promise<string>;
  send(line: string): void;
}

function contender(state: string): Contender {
  const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', CONTENDER, '--', state], { cwd: REPO_ROOT, stdio: ['pipe', 'pipe', 'inherit'] });
  children.push(child);
  const lines: string[] = [];
  const waiters: ((l: string) => void)[] = [];
  let buf = '';
  child.stdout!.setEncoding('utf8');
  child.stdout!.on('data', (d: string) => {
    buf += d;
    for (let i = buf.indexOf('\n'); i >= 0; i = buf.indexOf('\n')) {
      const l = buf.slice(0, i);
      buf = buf.slice(i + 1);
      const w = waiters.shift();
      if (w) w(l);
      else lines.push(l);
    }
  });
  child.on('exit', () => {
    for (const w of waiters.splice(0)) w('EXITED');
  });
  return {
    child,
    next: () => (lines.length > 0 ? Promise.resolve(lines.shift()!) : new Promise((r) => waiters.push(r))),
    send: (line) => child.stdin!.write(`${line}\n`),
  };
}

/** Rounds of simultaneous attempts; `before` prepares each round (e.g. plants a stale lock). Returns LOCKED counts per round. */
async function rounds(n: number, procs: Contender[], before: () => Promise<void>): Promise<number[]> {
  const counts: number[] = [];
  for (let r = 0; r < n; r++) {
    await before();
    for (const p of procs) p.send('go');
    const answers = await Promise.all(procs.map((p) => p.next()));
    for (const a of answers) expect(a).toMatch(/^(LOCKED|BUSY)$/);
    counts.push(answers.filter((a) => a === 'LOCKED').length);
    for (const p of procs) p.send('release');
    await Promise.all(procs.map((p) => p.next()));
  }
  return counts;
}

async function deadPid(): Promise<number> {
  const dead = spawn(process.execPath, ['-e', '0']);
  await new Promise((r) => dead.on('exit', r));
  return dead.pid!;
}

describe('state directory lock', () => {
  it('exactly one of 6 simultaneous starts wins, over and over, without and with a stale lock', async () => {
    tmp = await makeTempDir();
    const dir = tmp.dir;
    const procs = Array.from({ length: 6 }, () => contender(dir));
    const lock = join(dir, 'agent.lock');
    const fresh = await rounds(8, procs, () => rm(lock, { force: true }));
    const pid = await deadPid();
    const stale = await rounds(8, procs, () => writeFile(lock, `${pid}\n`));
    expect({ fresh, stale }).toEqual({ fresh: Array(8).fill(1), stale: Array(8).fill(1) });
  }, 120_000);

  it('exactly one of 6 simultaneous starts takes over from a holder that was SIGKILLed', async () => {
    tmp = await makeTempDir();
    const dir = tmp.dir;
    const holder = contender(dir);
    holder.send('go');
    expect(await holder.next()).toBe('LOCKED');
    expect((await readFile(join(dir, 'agent.lock'), 'utf8')).trim()).toBe(String(holder.child.pid));
    const procs = Array.from({ length: 6 }, () => contender(dir));
    procs[0]!.send('go');
    expect(await procs[0]!.next()).toBe('BUSY'); // loaded, and the live holder is respected
    holder.child.kill('SIGKILL');
    await new Promise((r) => holder.child.on('exit', r));
    expect(await rounds(4, procs, async () => undefined)).toEqual([1, 1, 1, 1]);
  }, 120_000);

  it('in one process: a second lock is refused, release lets the next one in, the file stays 0600', async () => {
    tmp = await makeTempDir();
    const results = await Promise.allSettled(Array.from({ length: 20 }, () => lockStateDir(tmp!.dir)));
    const won = results.filter((r) => r.status === 'fulfilled') as PromiseFulfilledResult<() => Promise<void>>[];
    expect(won).toHaveLength(1);
    for (const r of results) if (r.status === 'rejected') expect(r.reason).toBeInstanceOf(ConflictError);
    await expect(lockStateDir(tmp.dir)).rejects.toThrow(/this process already runs an agent/);
    await won[0]!.value();
    const again = await lockStateDir(tmp.dir);
    const { stat } = await import('node:fs/promises');
    expect((await stat(join(tmp.dir, 'agent.lock'))).mode & 0o777).toBe(0o600);
    await again();
    await access(join(tmp.dir, 'agent.lock')); // never unlinked
  });
});
