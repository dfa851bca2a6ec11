import { spawn } from 'node:child_process';
import { constants as fsc } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { ConflictError, CowstreamError, describeError } from '../errors.js';

/** `flock --conflict-exit-code`: tells "held by someone else" apart from a failure of the tool. */
const FLOCK_BUSY = 75;

/**
 * One agent per state directory. Two agents on the same stateDir would
 * corrupt each other's dirty bitmaps: the loser of a start-up race would
 * record a clean shutdown the winner never made, hiding a later crash and
 * so losing dirty bits.
 *
 * The lock is an flock(2) on `<stateDir>/agent.lock`, so the kernel provides
 * the mutual exclusion and drops the lock when its holder dies (SIGKILL
 * included): there is no stale lock to take over, hence no takeover race.
 * The file itself is never removed (unlinking a locked file would let a
 * second agent lock a new inode under the same name); it holds the owner's
 * pid for the error message only. Node has no flock binding, so util-linux
 * `flock` locks our descriptor: a lock belongs to the open file
 * description, which the child shares and we keep after it exits.
 */
export async function lockStateDir(stateDir: string): Promise<() => Promise<void>> {
  const path = join(stateDir, 'agent.lock');
  let fh: FileHandle;
  try {
    fh = await open(path, fsc.O_RDWR | fsc.O_CREAT | fsc.O_NOFOLLOW, 0o600);
  } catch (err) {
    throw new CowstreamError(`cannot open the state directory lock ${path}: ${describeError(err)}`, { cause: err });
  }
  try {
    if (!(await flockExclusive(fh.fd))) {
      const owner = (await fh.readFile('utf8').catch(() => '')).trim();
      if (owner === String(process.pid)) throw new ConflictError(`this process already runs an agent on state directory ${stateDir}`);
      throw new ConflictError(`another agent${/^\d+$/.test(owner) ? ` (pid ${owner})` : ''} is using state directory ${stateDir}`);
    }
    await fh.truncate(0);
    await fh.write(`${process.pid}\n`, 0);
  } catch (err) {
    await fh.close().catch(() => undefined);
    throw err;
  }
  let released = false;
  return async () => {
    if (released) return;
    released = true;
    await fh.truncate(0).catch(() => undefined);
    await fh.close(); // closing the last descriptor of the description releases the flock
  };
}

/** flock(fd, LOCK_EX | LOCK_NB) on our open file description; false when another holder has it. */
function flockExclusive(fd: number): Promise<boolean> {
  return new Promise((resolve, reject) => {
    const child = spawn('flock', ['--exclusive', '--nonblock', '--conflict-exit-code', String(FLOCK_BUSY), '3'], {
      stdio: ['ignore', 'ignore', 'pipe', fd],
    });
    let stderr = '';
    child.stderr?.setEncoding('utf8');
    child.stderr?.on('data', (d: string) => (stderr += d));
    child.on('error', (err) => reject(new CowstreamError(`cannot lock the state directory: running util-linux "flock" failed: ${describeError(err)}`, { cause: err })));
    child.on('close', (code) => {
      if (code === 0) resolve(true);
      else if (code === FLOCK_BUSY) resolve(false);
      else reject(new CowstreamError(`cannot lock the state directory: flock exited with ${code}: ${stderr.trim()}`));
    });
  });
}
