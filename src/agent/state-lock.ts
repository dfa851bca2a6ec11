import { open, readFile, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { ConflictError } from '../errors.js';

/**
 * One agent per state directory. Two agents on the same stateDir would
 * corrupt each other's dirty bitmaps: the loser of a start-up race would
 * record a clean shutdown the winner never made, hiding a later crash and
 * so losing dirty bits. The lock file holds the owner's pid; a lock whose
 * pid is gone (SIGKILL) is taken over.
 */
export async function lockStateDir(stateDir: string): Promise<() => Promise<void>> {
  const path = join(stateDir, 'agent.lock');
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const fh = await open(path, 'wx', 0o600);
      await fh.writeFile(`${process.pid}\n`);
      await fh.close();
      return async () => {
        // Only remove our own lock.
        const owner = await readFile(path, 'utf8').catch(() => '');
        if (Number(owner.trim()) === process.pid) await unlink(path).catch(() => undefined);
      };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    const pid = Number((await readFile(path, 'utf8').catch(() => '')).trim());
    if (Number.isInteger(pid) && pid > 0 && pid !== process.pid && isAlive(pid)) {
      throw new ConflictError(`another agent (pid ${pid}) is using state directory ${stateDir}`);
    }
    if (pid === process.pid) throw new ConflictError(`this process already runs an agent on state directory ${stateDir}`);
    await unlink(path).catch(() => undefined); // stale: its owner is gone
  }
  throw new ConflictError(`cannot lock state directory ${stateDir}`);
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}
