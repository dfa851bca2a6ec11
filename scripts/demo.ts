/**
 * `npm run demo`: the whole cowstream story on one machine, with the embedded
 * defaults (s3rver as the object store, dynalite + the Lambda handlers as the
 * catalogue). Nothing here needs AWS or the Debian test tools.
 *
 *   agent exports a disk over NBD → a "guest" writes through NBD while a full
 *   backup runs (copy-before-write) → more writes → incremental backup with
 *   fleecing → both archives indexed and listed by the catalogue → restores
 *   requested through the catalogue, executed by the agent → byte-identical.
 *
 * Exit code 0 only when both restores equal the disk as it was at the instant
 * each backup started.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startAgent } from '../src/agent/agent.js';
import { parseAgentConfig } from '../src/agent/config.js';
import { AgentClient } from '../src/agent/control-client.js';
import { silentLogger } from '../src/agent/log.js';
import { CatalogClient } from '../src/catalog/client.js';
import { runRestoreViaCatalog } from '../src/cli/commands/restore-via-catalog.js';
import { formatBytes } from '../src/cli/output.js';
import { NbdClient } from '../src/nbd/client.js';
import { readEmbeddedCredentials } from '../src/store/embedded-credentials.js';

const DISK_SIZE = 64 * 1024 * 1024 + 12_345; // deliberately not a cluster multiple
const HOST = 'demo-host';

function sha(buf: Buffer): string {
  return createHash('sha256').update(buf).digest('hex').slice(0, 16);
}

function step(text: string): void {
  console.log(`\n▶ ${text}`);
}

/** A disk image that looks like a real one: text, random data and zero regions. */
function makeImage(size: number): Buffer {
  const img = Buffer.alloc(size);
  const text = Buffer.from('cowstream keeps the archive equal to the disk at backup start. ');
  for (let off = 0; off < size; ) {
    const kind = (off / (1024 * 1024)) % 4 | 0;
    const len = Math.min(1024 * 1024, size - off);
    if (kind === 0) for (let i = 0; i < len; i++) img[off + i] = text[(off + i) % text.length]!;
    else if (kind === 1) randomBytes(len).copy(img, off);
    // kinds 2 and 3 stay zero: holes that the archive records as zero runs
    off += len;
  }
  return img;
}

/** A guest doing random 4 KiB writes through NBD until told to stop. */
async function guestWrites(nbd: NbdClient, stop: { value: boolean }, max: number): Promise<number> {
  let n = 0;
  while (!stop.value && n < max) {
    const offset = Math.floor(Math.random() * ((DISK_SIZE - 4096) / 4096)) * 4096;
    await nbd.write(offset, randomBytes(4096));
    n++;
  }
  return n;
}

async function backup(control: AgentClient, body: Record<string, unknown>, nbd: NbdClient, diskPath: string): Promise<{ uuid: string; snapshot: Buffer; writes: number }> {
  // The agent holds guest writes while it takes the snapshot, so the file as
  // read just before the request is the state the archive must hold.
  const snapshot = await readFile(diskPath);
  const started = await control.startBackup(body);
  const stop = { value: false };
  const writer = guestWrites(nbd, stop, 2000);
  const status = await control.waitForBackup(started.uuid);
  stop.value = true;
  const writes = await writer;
  if (status.status !== 'done') throw new Error(`backup ${started.uuid} ended ${status.status}: ${status.error}`);
  const took = (Date.parse(String(status.endTime)) - Date.parse(String(status.startTime))) / 1000;
  console.log(
    `  ${status.mode} backup ${started.uuid}${started.modeReason ? ` (${started.modeReason})` : ''}\n` +
      `  ${formatBytes(Number(status.transferred))} copied, ${formatBytes(Number(status.zeroBytes))} zero, ${took.toFixed(2)} s, ` +
      `${writes} guest writes landed during the backup (copy-before-write kept the snapshot intact)`,
  );
  return { uuid: started.uuid, snapshot, writes };
}

async function waitIndexed(catalog: CatalogClient, uuid: string): Promise<void> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const rec = await catalog.getArchive(uuid).catch(() => null);
    if (rec) return;
    if (Date.now() > deadline) throw new Error(`archive ${uuid} was not indexed within 10 s`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function demo(): Promise<boolean> {
  const work = await mkdtemp(join(tmpdir(), 'cowstream-demo-'));
  const diskPath = join(work, 'vda.raw');
  const restoreDir = join(work, 'restores');
  await mkdir(restoreDir);
  process.env.COWSTREAM_RESTORE_POLL_MS ??= '200';
  console.log(`cowstream demo — workspace ${work}`);

  step(`creating a ${formatBytes(DISK_SIZE)} disk image and starting the agent (embedded S3 + embedded catalogue)`);
  await writeFile(diskPath, makeImage(DISK_SIZE));
  const agent = await startAgent(
    parseAgentConfig({
      hostId: HOST,
      stateDir: join(work, 'state'),
      disks: [{ name: 'vda', path: diskPath }],
      nbd: { listen: '127.0.0.1:0' },
      catalog: { embedded: true },
      restore: { allowedDirs: [restoreDir] },
    }),
    { log: silentLogger },
  );
  let nbd: NbdClient | undefined;
  try {
    const control = new AgentClient(agent.controlSocket);
    // The embedded services' credentials, generated at first start (0600): the CLI reads them with --state.
    const { catalogToken } = await readEmbeddedCredentials(agent.config.stateDir);
    const catalog = new CatalogClient({ url: agent.catalogUrl!, token: catalogToken });
    console.log(`  NBD export: nbd://${agent.nbdAddress!.host}:${agent.nbdAddress!.port}/vda   control: ${agent.controlSocket}`);
    console.log(`  S3: ${agent.s3?.endpoint} bucket ${agent.s3?.bucket}   catalogue API: ${agent.catalogUrl}`);
    nbd = await NbdClient.connect({ host: agent.nbdAddress!.host, port: agent.nbdAddress!.port }, { exportName: 'vda' });

    step('full backup to S3 while the guest keeps writing over NBD (rate-limited background pass, so the writes race it)');
    const full = await backup(control, { mode: 'full', target: 's3', speed: 48 * 1024 * 1024 }, nbd, diskPath);

    step('incremental backup with fleecing (old data goes to local scratch first), guest still writing');
    const inc = await backup(
      control,
      { mode: 'incremental', target: 's3', speed: 48 * 1024 * 1024, fleecing: { dir: join(work, 'fleece'), maxBytes: 32 * 1024 * 1024 } },
      nbd,
      diskPath,
    );

    step('the catalogue indexed both archives (S3 event → indexer → DynamoDB)');
    await waitIndexed(catalog, full.uuid);
    await waitIndexed(catalog, inc.uuid);
    const listed = await catalog.listArchives({ host: HOST, disk: 'vda' });
    for (const a of listed.items) {
      console.log(
        `  ${a.uuid}  ${a.parentUuid ? 'incremental' : 'full       '}  depth ${a.chainDepth}  stored ${formatBytes(a.bytesStored).padStart(9)}  ` +
          `ratio ${a.compressionRatio.toFixed(2)}  ${a.status}`,
      );
    }

    step('restores requested through the catalogue; the agent claims and executes them');
    let ok = true;
    for (const [name, b] of [['full', full], ['incremental', inc]] as const) {
      const target = join(restoreDir, `${name}.raw`);
      const job = await runRestoreViaCatalog({ ref: b.uuid, host: HOST, to: target, wait: true, catalog: agent.catalogUrl!, catalogToken, json: false, pollMs: 100, timeoutMs: 60_000 });
      const restored = await readFile(target);
      const same = restored.equals(b.snapshot);
      ok &&= same;
      console.log(
        `  ${name.padEnd(11)} job ${job.id} ${job.status}: restored sha256 ${sha(restored)} vs disk at backup start ${sha(b.snapshot)} → ${same ? 'byte-identical ✔' : 'DIFFERENT ✘'}`,
      );
    }
    const now = await readFile(diskPath);
    console.log(`  (the live disk has moved on since: sha256 ${sha(now)})`);
    return ok;
  } finally {
    await nbd?.close().catch(() => undefined);
    await agent.stop();
    await rm(work, { recursive: true, force: true });
  }
}

const ok = await demo();
console.log(ok ? '\ndemo: OK' : '\ndemo: FAILED');
process.exit(ok ? 0 : 1);
