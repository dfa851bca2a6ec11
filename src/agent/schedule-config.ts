/**
 * The agent config's `schedules[]` (docs/agent.md "Schedules"): per group of
 * disks, cron expressions for full and incremental backups, a jitter, the
 * backup options a POST /backups request takes (the same schema, so the two
 * never drift apart) and a retention policy (the same schema as `forget` and
 * the prune Lambda).
 */
import { Cron } from 'croner';
import { z } from 'zod';
import { describeError } from '../errors.js';
import { retentionPolicySchema, type RetentionPolicy } from '../catalog/retention.js';
import { backupRequestSchema, type BackupRequest } from './backup-request.js';
import type { ScheduleSpec } from './scheduler.js';
import { DEVICE_NAME_PATTERN, DEVICE_NAME_RULE } from '../names.js';


function validTimezone(tz: string): boolean {
  try {
    new Intl.DateTimeFormat('en-US', { timeZone: tz });
    return true;
  } catch {
    return false;
  }
}

/** A cron expression croner accepts (5 fields, or 6 with seconds first). */
const cronField = z.string().superRefine((expr, ctx) => {
  try {
    new Cron(expr, { paused: true, timezone: 'UTC' });
  } catch (err) {
    ctx.addIssue({ code: 'custom', message: `invalid cron expression "${expr}": ${describeError(err)}` });
  }
});

export const scheduleGroupSchema = backupRequestSchema
  .omit({ mode: true, disks: true })
  .extend({
    name: z.string().regex(DEVICE_NAME_PATTERN, `schedule name must be ${DEVICE_NAME_RULE}`),
    /** File disks, or drives of one qemu entry (checked against the config below); omitted = the agent's default selection. */
    disks: backupRequestSchema.shape.disks,
    full: cronField.optional(),
    incremental: cronField.optional(),
    /** Upper bound of a random delay added to each run (spreads a fleet with the same schedule). */
    jitterSeconds: z.number().int().min(0).max(86_400).optional(),
    /** IANA zone the cron expressions are read in (default UTC). */
    timezone: z.string().refine(validTimezone, 'unknown time zone (expected an IANA name such as "Europe/Paris")').optional(),
    retention: retentionPolicySchema.optional(),
  })
  .superRefine((g, ctx) => {
    if (g.full === undefined && g.incremental === undefined) ctx.addIssue({ code: 'custom', path: ['full'], message: 'a schedule needs "full" or "incremental" (a cron expression)' });
    // Nobody reads a "-" stream at 3 a.m.: a scheduled backup writes to the store or a file.
    if (g.target?.kind === 'stream') ctx.addIssue({ code: 'custom', path: ['target'], message: 'a scheduled backup cannot write to "-" (no reader); use "s3" or "file:/abs/path.cwa"' });
    // A file target is one path: the next run would overwrite (or collide with) the last archive.
    if (g.target?.kind === 'file') ctx.addIssue({ code: 'custom', path: ['target'], message: 'a scheduled backup writes to the store ("s3"); a file target would be the same path at every run' });
  });

export type ScheduleGroupInput = z.output<typeof scheduleGroupSchema>;

/** One validated group: what the Scheduler needs, the request it sends, and its retention. */
export interface AgentSchedule extends ScheduleSpec {
  /** POST /backups body less `mode` (and `disks`, which is ScheduleSpec.disks). */
  request: Omit<BackupRequest, 'mode' | 'disks'>;
  retention?: RetentionPolicy;
}

export function toAgentSchedule(g: ScheduleGroupInput): AgentSchedule {
  const { name, disks, full, incremental, jitterSeconds, timezone, retention, ...request } = g;
  return {
    name,
    disks: disks ?? [],
    ...(full !== undefined ? { full } : {}),
    ...(incremental !== undefined ? { incremental } : {}),
    ...(jitterSeconds !== undefined ? { jitterSeconds } : {}),
    ...(timezone !== undefined ? { timezone } : {}),
    ...(retention !== undefined ? { retention } : {}),
    request,
  };
}

/**
 * The selection rule of POST /backups (BackupManager.selectDisks) checked at
 * config time, so a schedule that could never run fails at start, not at
 * its first slot: known names, file disks or drives of ONE qemu entry.
 * Returns [path, message] of the first problem, or null.
 */
export function scheduleSelectionIssue(names: readonly string[] | undefined, fileDisks: readonly string[], qemuEntries: readonly (readonly string[])[]): [Array<string | number>, string] | null {
  if (!names) {
    if (fileDisks.length > 0 || qemuEntries.length === 1) return null;
    return [['disks'], `this agent has no file disks and ${qemuEntries.length} qemu entries; name the drives to back up (a backup covers the drives of one qemu entry)`];
  }
  const known = [...fileDisks, ...qemuEntries.flat()];
  const entries = new Set<number>();
  let files = 0;
  for (const [i, n] of names.entries()) {
    if (fileDisks.includes(n)) files++;
    else {
      const e = qemuEntries.findIndex((drives) => drives.includes(n));
      if (e < 0) return [['disks', i], `unknown disk "${n}" (known: ${known.join(', ')})`];
      entries.add(e);
    }
  }
  if (files > 0 && entries.size > 0) return [['disks'], 'cannot mix file disks and QEMU drives in one schedule: they have no common snapshot point; make one schedule for each'];
  if (entries.size > 1) return [['disks'], 'the drives belong to more than one qemu entry; one backup covers the drives of one QEMU process'];
  return null;
}
