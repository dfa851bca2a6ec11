/**
 * The S3 key layout shared by the agent, the catalogue and the IAM policies.
 * Archives of host H live under `archives/H/`; restore plans written by the
 * catalogue API under `restore-plans/<restoreId>.json`. The names come from
 * the code that writes them, so the policies cannot drift from it.
 */
import { RESTORE_PLAN_PREFIX } from '../src/catalog/api.js';
import { DEFAULT_METRIC_NAMESPACE, FRESHNESS_DIMENSION, FRESHNESS_METRIC } from '../src/catalog/freshness.js';

export const ARCHIVES_PREFIX = 'archives/';
export const RESTORE_PLANS_PREFIX = RESTORE_PLAN_PREFIX;

/** The prefix a host's agent may write to. */
export function hostArchivePrefix(host: string): string {
  return `${ARCHIVES_PREFIX}${host}/`;
}

/** CloudWatch namespace/metric/dimension published by lambda/freshness.ts (src/catalog/freshness.ts). */
export const METRIC_NAMESPACE = DEFAULT_METRIC_NAMESPACE;
export { FRESHNESS_DIMENSION, FRESHNESS_METRIC };
