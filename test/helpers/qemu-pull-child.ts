/**
 * A pull-mode backup in its own process, for tests that SIGKILL it mid-run.
 * argv: qmpSocket nbdSocket fleecingDir outDir mode. The archive sink is slow
 * (20 ms per write) so the backup is still reading when the test kills it;
 * prints "snapshot" once the snapshot point is set and "progress" on the
 * first progress report.
 */
import { join } from 'node:path';
import { ZstdPool } from '../../src/codec/zstd-pool.js';
import { FileByteSink } from '../../src/store/file.js';
import { QmpClient } from '../../src/qemu/qmp.js';
import { runPullBackup } from '../../src/qemu/pull-backup.js';

const [qmpSocket, nbdSocket, fleecingDir, outDir, mode] = process.argv.slice(2) as [string, string, string, string, string];
const qmp = await QmpClient.connect(qmpSocket);
const pool = new ZstdPool({ workers: 1 });
let said = false;
await runPullBackup({
  qmp,
  drives: [{ node: 'd0', name: 'vda' }],
  mode: mode === 'incremental' ? 'incremental' : 'full',
  fleecingDir,
  hostId: 'test-host',
  compressor: pool,
  nbdServerSocket: nbdSocket === '-' ? undefined : nbdSocket,
  readChunk: 64 * 1024,
  maxInFlight: 1,
  connections: 1,
  onWarning: () => undefined,
  onSnapshot: () => void process.stdout.write('snapshot\n'),
  onProgress: () => {
    if (!said) process.stdout.write('progress\n');
    said = true;
  },
  openOutput: async (c) => {
    const f = await FileByteSink.create(join(outDir, `${c.uuid}.cwa`));
    return {
      write: async (chunk: Uint8Array) => {
        await new Promise((r) => setTimeout(r, 20));
        await f.write(chunk);
      },
      close: () => f.close(),
      abort: (reason: unknown) => f.abort(reason),
    };
  },
});
process.stdout.write('done\n');
