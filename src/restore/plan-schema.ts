/**
 * Validation of a RestorePlan read from JSON (the catalogue stores plans as
 * `restore-plans/<id>.json`; the agent's poller executes them). Apart from the
 * pure planner so that a local restore does not load zod (docs/startup.md).
 */
import { z } from 'zod';
import { RestoreError } from '../errors.js';
import { CLUSTER_SIZE } from '../format/constants.js';
import type { RestorePlan } from './plan.js';
import { formatZodIssues } from '../zod-issues.js';

const locatorSchema = z.union([
  z.object({ kind: z.literal('s3'), bucket: z.string().min(1), key: z.string().min(1) }),
  z.object({ kind: z.literal('file'), path: z.string().min(1) }),
]);
const nonNeg = z.number().int().nonnegative();
const runSchema = z.tuple([nonNeg, nonNeg]);
const planSchema = z.object({
  version: z.literal(1),
  archiveUuid: z.string().min(1),
  hostId: z.string(),
  chain: z
    .array(z.object({ uuid: z.string().min(1), parentUuid: z.string().nullable(), locator: locatorSchema, size: nonNeg, keyFingerprint: z.string().nullable().optional() }))
    .min(1),
  devices: z.array(
    z.object({
      name: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]*$/).max(128),
      size: nonNeg,
      clusters: nonNeg,
      dataClusters: nonNeg,
      zeroClusters: nonNeg,
      missingClusters: nonNeg,
      zeroRuns: z.array(runSchema),
      missingRuns: z.array(runSchema),
    }),
  ),
  ranges: z.array(
    z.object({
      archive: nonNeg,
      offset: nonNeg,
      length: z.number().int().positive(),
      extents: z.array(z.object({ offset: nonNeg, length: z.number().int().positive(), runs: z.array(z.tuple([nonNeg, nonNeg, nonNeg, z.number().int().positive()])) })).min(1),
    }),
  ),
  totals: z.object({ deviceBytes: nonNeg, dataClusters: nonNeg, zeroClusters: nonNeg, missingClusters: nonNeg, fetchBytes: nonNeg }),
});

/**
 * Validates a plan loaded from JSON (e.g. `restore-plans/<id>.json`): shape,
 * and that every index/offset stays inside the chain, devices and ranges —
 * a plan is untrusted input for the agent.
 */
export function parseRestorePlan(json: unknown): RestorePlan {
  const res = planSchema.safeParse(json);
  if (!res.success) throw new RestoreError(`invalid restore plan: ${formatZodIssues(res.error.issues)}`);
  const plan = res.data as RestorePlan;
  for (const d of plan.devices) {
    if (d.clusters !== Math.ceil(d.size / CLUSTER_SIZE)) throw new RestoreError(`invalid restore plan: device ${d.name} cluster count does not match its size`);
    for (const [s, c] of [...d.zeroRuns, ...d.missingRuns]) {
      if (s + c > d.clusters) throw new RestoreError(`invalid restore plan: run [${s}, +${c}) outside device ${d.name}`);
    }
  }
  for (const r of plan.ranges) {
    const a = plan.chain[r.archive];
    if (!a) throw new RestoreError(`invalid restore plan: range refers to archive #${r.archive}, chain has ${plan.chain.length}`);
    if (r.offset + r.length > a.size) throw new RestoreError(`invalid restore plan: range ${r.offset}+${r.length} beyond archive ${a.uuid}`);
    for (const e of r.extents) {
      if (e.offset < r.offset || e.offset + e.length > r.offset + r.length) throw new RestoreError('invalid restore plan: extent outside its range');
      for (const [pi, , s, c] of e.runs) {
        const d = plan.devices[pi];
        if (!d || s + c > d.clusters) throw new RestoreError(`invalid restore plan: extent run outside device #${pi}`);
      }
    }
  }
  return plan;
}
