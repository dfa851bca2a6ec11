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
 * Every step a user would type is run as the real `cowstream` command and
 * printed (`$ cowstream …`); only the guest (an NBD client) and the agent's
 * start are library calls.
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
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { silentLogger } from '../src/agent/log.js';
import { formatBytes } from '../src/cli/output.js';
import { NbdClient } from '../src/nbd/client.js';

const DISK_SIZE = 64 * 1024 * 1024 + 12_345; // deliberately not a cluster multiple
const HOST = 'demo-host';
const CLI = join(import.meta.dirname, '..', 'bin', 'cowstream.js');

/** Runs `cowstream ARGS` as a user would (printing the command and, unless `quiet`, its output). */
async function cowstream(args: string[], env: NodeJS.ProcessEnv, quiet = false): Promise<string> {
  console.log(`  $ cowstream ${args.join(' ')}`);
  try {
    const { stdout } = await promisify(execFile)(process.execPath, [CLI, ...args], { env: { ...process.env, ...env }, maxBuffer: 16 * 1024 * 1024 });
    if (!quiet && stdout.trim() !== '') process.stdout.write(stdout.trimEnd().replace(/^/gm, '    ') + '\n');
    return stdout;
  } catch (err) {
    const e = err as { stdout?: string; stderr?: string; code?: number };
    throw new Error(`cowstream ${args[0]} exited ${e.code}: ${e.stderr || e.stdout}`);
  }
}

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

interface CliStatus {
  status: string;
  uuid: string;
  mode: string;
  modeReason?: string;
  transferred: number;
  zeroBytes: number;
  startTime: string;
  endTime: string | null;
  error: string | null;
}

/**
 * `cowstream backup --detach` answers once the snapshot instant has passed:
 * the guest writes start only then, so the file as read just before is the
 * state the archive must hold. Then `cowstream status` until it is done.
 */
async function backup(args: string[], env: NodeJS.ProcessEnv, nbd: NbdClient, diskPath: string): Promise<{ uuid: string; snapshot: Buffer; writes: number }> {
  const snapshot = await readFile(diskPath);
  const started = JSON.parse(await cowstream(['backup', ...args, '--detach', '--json'], env, true)) as { uuid: string; modeReason?: string };
  const stop = { value: false };
  const writer = guestWrites(nbd, stop, 2000);
  let status: CliStatus;
  for (;;) {
    status = (JSON.parse(await promisify(execFile)(process.execPath, [CLI, 'status', '--json'], { env: { ...process.env, ...env } }).then((r) => r.stdout)) as { backup: CliStatus }).backup;
    if (status.uuid === started.uuid && status.status !== 'active') break;
    await new Promise((r) => setTimeout(r, 200));
  }
  stop.value = true;
  const writes = await writer;
  console.log(`  $ cowstream status   (until backup ${started.uuid} is no longer active)`);
  if (status.status !== 'done') throw new Error(`backup ${started.uuid} ended ${status.status}: ${status.error}`);
  const took = (Date.parse(String(status.endTime)) - Date.parse(String(status.startTime))) / 1000;
  console.log(
    `    ${status.mode} backup ${started.uuid}${started.modeReason ? ` (${started.modeReason})` : ''}\n` +
      `    ${formatBytes(Number(status.transferred))} copied, ${formatBytes(Number(status.zeroBytes))} zero, ${took.toFixed(2)} s, ` +
      `${writes} guest writes landed during the backup (copy-before-write kept the snapshot intact)`,
  );
  return { uuid: started.uuid, snapshot, writes };
}

async function waitIndexed(env: NodeJS.ProcessEnv, uuids: string[]): Promise<void> {
  const deadline = Date.now() + 15_000;
  for (;;) {
    const out = await promisify(execFile)(process.execPath, [CLI, 'list', '--host', HOST, '--json'], { env: { ...process.env, ...env } }).then((r) => r.stdout, () => '{"items":[]}');
    const have = new Set((JSON.parse(out) as { items: Array<{ uuid: string }> }).items.map((a) => a.uuid));
    if (uuids.every((u) => have.has(u))) return;
    if (Date.now() > deadline) throw new Error(`archives ${uuids.join(', ')} were not indexed within 15 s`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** `cowstream export add`, then the whole export read over NBD and compared with the disk at backup start. */
async function instantRestore(b: { uuid: string; snapshot: Buffer }, env: NodeJS.ProcessEnv, addr: { host: string; port: number }): Promise<boolean> {
  const added = JSON.parse(await cowstream(['export', 'add', b.uuid, '--json'], env, true)) as { id: string; exports: { name: string; size: number; uris: string[] }[] };
  const exp = added.exports[0]!;
  console.log(`    ${exp.name}  ${formatBytes(exp.size)}  ${exp.uris.join('  ')}`);
  const client = await NbdClient.connect(addr, { exportName: exp.name });
  const chunks: Buffer[] = [];
  try {
    for (let off = 0; off < exp.size; off += 4 * 1024 * 1024) chunks.push(await client.read(off, Math.min(4 * 1024 * 1024, exp.size - off)));
  } finally {
    await client.close();
  }
  const served = Buffer.concat(chunks);
  const same = served.equals(b.snapshot);
  console.log(`    served sha256 ${sha(served)} vs disk at backup start ${sha(b.snapshot)} → ${same ? 'byte-identical ✔' : 'DIFFERENT ✘'}`);
  await cowstream(['export', 'rm', added.id], env);
  return same;
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
    // What a user sets once: where the agent's control socket is. Everything
    // else (catalogue URL and token, S3 endpoint and keys) the CLI finds
    // through the agent's state directory.
    const env = { COWSTREAM_AGENT_SOCKET: agent.controlSocket };
    console.log(`  NBD export: nbd://${agent.nbdAddress!.host}:${agent.nbdAddress!.port}/vda   control: ${agent.controlSocket}`);
    console.log(`  S3: ${agent.s3?.endpoint} bucket ${agent.s3?.bucket}   catalogue API: ${agent.catalogUrl}`);
    nbd = await NbdClient.connect({ host: agent.nbdAddress!.host, port: agent.nbdAddress!.port }, { exportName: 'vda' });

    step('full backup to S3 while the guest keeps writing over NBD (rate-limited background pass, so the writes race it)');
    const full = await backup(['--speed', '48M'], env, nbd, diskPath);

    step('incremental backup with fleecing (old data goes to local scratch first), guest still writing');
    const inc = await backup(['--incremental', '--speed', '48M', '--fleecing', join(work, 'fleece'), '--fleecing-max', '32M'], env, nbd, diskPath);

    step('the catalogue indexed both archives (S3 event → indexer → DynamoDB); the bucket alone lists them too');
    await waitIndexed(env, [full.uuid, inc.uuid]);
    await cowstream(['list', '--host', HOST, '--disk', 'vda'], env);
    await cowstream(['snapshots'], env);
    await cowstream(['forget', '--keep-last', '1', '--dry-run'], env);

    step('restores requested through the catalogue; the agent claims and executes them');
    let ok = true;
    for (const [name, b] of [['full', full], ['incremental', inc]] as const) {
      const target = join(restoreDir, `${name}.raw`);
      await cowstream(['restore', b.uuid, '--via-catalog', '--host', HOST, '--to', target, '--wait', '--timeout', '60s'], env);
      const restored = await readFile(target);
      const same = restored.equals(b.snapshot);
      ok &&= same;
      console.log(`    ${name}: restored sha256 ${sha(restored)} vs disk at backup start ${sha(b.snapshot)} → ${same ? 'byte-identical ✔' : 'DIFFERENT ✘'}`);
    }

    step('instant restore: the agent serves the incremental (with its chain) over NBD, fetching extents as they are read');
    ok &&= await instantRestore(inc, env, agent.nbdAddress!);

    step('every checksum of the incremental, straight from the bucket');
    await cowstream(['verify', inc.uuid], env);
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
