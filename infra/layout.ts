/**
 * The S3 key layout shared by the agent, the catalogue and the IAM policies.
 * Archives of host H live under `archives/H/`; restore plans written by the
 * catalogue API under `restore-plans/<restoreId>.json` (issue 5).
 */
export const ARCHIVES_PREFIX = 'archives/';
export const RESTORE_PLANS_PREFIX = 'restore-plans/';

/** The prefix a host's agent may write to. */
export function hostArchivePrefix(host: string): string {
  return `${ARCHIVES_PREFIX}${host}/`;
}

/** CloudWatch namespace/metric/dimension published by lambda/freshness.ts (CATALOG-API.md). */
export const METRIC_NAMESPACE = 'Cowstream';
export const FRESHNESS_METRIC = 'ArchivesLastCreatedAgeHours';
export const FRESHNESS_DIMENSION = 'HostId';
