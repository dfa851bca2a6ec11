/**
 * Ownership of the QEMU objects a pull-mode backup creates, so a later run
 * can tell a crashed backup's leftovers from a running one's.
 *
 * QEMU node names are at most 31 characters, too short for the archive
 * uuid, so every node, job and export of a run is named
 * `cowstream-<tag>-<role><drive>` with tag = the last 8 hex digits of the
 * run's uuid. Before it creates anything, the run writes
 * `<fleecingDir>/cowstream-<uuid>.run` (0600) with its pid and the pid's
 * start time (so a reused pid does not look alive); its fleecing files are
 * `<fleecingDir>/cowstream-<uuid>-<i>.fleece`. A later run finds the
 * fleecing file through the leftover file node's filename (QEMU reports it),
 * reads the record beside it and cleans up only when that process is gone.
 */
import { readFileSync } from 'node:fs';
import { lstat, open, readFile, unlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { COWSTREAM_NODE_PREFIX } from './graph.js';

export interface RunRecord {
  uuid: string;
  pid: number;
  /** /proc/<pid>/stat start time (clock ticks since boot), null where /proc is missing. */
  pidStart: string | null;
  /** Unix socket of an NBD server this run started in QEMU (stopped by recovery). */
  nbdSocket: string | null;
}

const UUID = '[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}';
const FLEECE_RE = new RegExp(`^cowstream-(${UUID})-(\\d{1,3})\\.fleece$`);
const TAG_RE = new RegExp(`^${COWSTREAM_NODE_PREFIX}([0-9a-f]{8})-`);

/** The node-name tag of a run (last 8 hex digits of its uuid). */
export function runTag(uuid: string): string {
  return uuid.replace(/-/g, '').slice(-8).toLowerCase();
}

/** Tag of a cowstream node / job / export id, or null when it is not ours. */
export function tagOf(id: string): string | null {
  return TAG_RE.exec(id)?.[1] ?? null;
}

export function fleecePath(dir: string, uuid: string, drive: number): string {
  return join(dir, `cowstream-${uuid}-${drive}.fleece`);
}

export function recordPath(dir: string, uuid: string): string {
  return join(dir, `cowstream-${uuid}.run`);
}

/** The run uuid and directory of a fleecing file path, or null when the name is not ours. */
export function parseFleecePath(path: string): { uuid: string; dir: string } | null {
  const m = FLEECE_RE.exec(basename(path));
  return m ? { uuid: m[1] as string, dir: dirname(path) } : null;
}

export function processStart(pid: number): string | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Field 22 (starttime); fields are counted after the ")" that ends comm, which may hold spaces.
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19] ?? null;
  } catch {
    return null;
  }
}

/** Writes the run's record; fails if one exists (uuid collision or a second run of the same uuid). */
export async function writeRecord(dir: string, r: RunRecord): Promise<void> {
  const fh = await open(recordPath(dir, r.uuid), 'wx', 0o600);
  try {
    await fh.writeFile(JSON.stringify(r) + '\n');
  } finally {
    await fh.close();
  }
}

/** The record of a run, or null when missing, unreadable, or not a regular file of ours (a planted file is ignored). */
export async function readRecord(dir: string, uuid: string): Promise<RunRecord | null> {
  try {
    const st = await lstat(recordPath(dir, uuid));
    if (!st.isFile() || (typeof process.getuid === 'function' && st.uid !== process.getuid())) return null;
    const v = JSON.parse(await readFile(recordPath(dir, uuid), 'utf8')) as Partial<RunRecord>;
    if (typeof v.pid !== 'number' || !Number.isInteger(v.pid) || v.pid <= 0) return null;
    return { uuid, pid: v.pid, pidStart: typeof v.pidStart === 'string' ? v.pidStart : null, nbdSocket: typeof v.nbdSocket === 'string' ? v.nbdSocket : null };
  } catch {
    return null;
  }
}

export async function removeRecord(dir: string, uuid: string): Promise<void> {
  await unlink(recordPath(dir, uuid)).catch(() => undefined);
}

/** Is the process that wrote the record still running? */
export function ownerAlive(r: RunRecord): boolean {
  if (r.pid === process.pid) return true;
  try {
    process.kill(r.pid, 0);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ESRCH') return false;
  }
  const start = processStart(r.pid);
  // Alive, and the same process unless its start time says the pid was reused.
  return r.pidStart === null || start === null || start === r.pidStart;
}
