/**
 * An OpenArchiveExports for agent tests built from the restore engine: the
 * archive (with its chain, from the agent's bucket) is restored into a temp
 * directory and each device is served read-only from memory (test disks are small). It exercises
 * everything of POST /exports except lazy fetching (src/serve), and counts
 * the sets it opened and closed so tests can see that removal closes them.
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Compressor } from '../../src/codec/types.js';
import { MemoryDevice } from '../../src/device/memory-device.js';
import { buildRestorePlan, sourceOpener } from '../../src/restore/locate.js';
import { restoreArchive } from '../../src/restore/engine.js';
import type { OpenArchiveExports, ServedArchive } from '../../src/agent/archive-exports.js';

export interface RestoringExports {
  open: OpenArchiveExports;
  opened: number;
  closed: number;
  /** Each call's options (refs, cache sizes) as the agent passed them. */
  calls: Array<Parameters<OpenArchiveExports>[0]>;
}

export function restoringExports(compressor: Compressor): RestoringExports {
  const state: RestoringExports = {
    opened: 0,
    closed: 0,
    calls: [],
    open: async (opts): Promise<ServedArchive> => {
      state.calls.push(opts);
      const plan = await buildRestorePlan(opts.ref, opts.context, opts.devices ? { devices: opts.devices } : {});
      const dir = await mkdtemp(join(tmpdir(), 'cowstream-served-'));
      try {
        await restoreArchive({ plan, target: dir + '/', openSource: sourceOpener(opts.context), compressor, ...(opts.key ? { key: opts.key } : {}) });
        // Held in memory, and still readable after close(): only the agent's own
        // revocation can make a removed export fail its clients.
        const devices = await Promise.all(plan.devices.map(async (d) => ({ name: d.name, size: d.size, device: new MemoryDevice(await readFile(join(dir, `${d.name}.raw`)), { readOnly: true }) })));
        await rm(dir, { recursive: true, force: true });
        state.opened++;
        return {
          archive: { uuid: plan.archiveUuid, host: plan.hostId, created: '', chainDepth: plan.chain.length - 1 },
          exports: devices,
          stats: () => ({ restoredBytes: plan.totals.deviceBytes }),
          close: async () => {
            state.closed++;
          },
        };
      } catch (err) {
        await rm(dir, { recursive: true, force: true });
        throw err;
      }
    },
  };
  return state;
}
