/**
 * Lambda (scheduled): publishes ArchivesLastCreatedAgeHours per host
 * (namespace METRIC_NAMESPACE, default Cowstream) for the freshness alarm.
 * HOSTS (comma list) adds hosts that may not have indexed anything yet.
 */
import { CloudWatchClient } from '@aws-sdk/client-cloudwatch';
import { DEFAULT_METRIC_NAMESPACE, computeFreshness, publishFreshness, type HostFreshness } from '../src/catalog/freshness.js';
import { createLogger } from '../src/catalog/log.js';
import { catalogRuntimeFromEnv } from '../src/catalog/runtime.js';

const logger = createLogger('cowstream-freshness');
let cw: CloudWatchClient | undefined;

export const handler = async (): Promise<{ hosts: HostFreshness[]; published: number }> => {
  const rt = catalogRuntimeFromEnv();
  cw ??= new CloudWatchClient({ ...(process.env.CLOUDWATCH_ENDPOINT ? { endpoint: process.env.CLOUDWATCH_ENDPOINT } : {}) });
  const extra = (process.env.HOSTS ?? '').split(',').map((h) => h.trim()).filter(Boolean);
  const hosts = await computeFreshness(rt.repo, extra);
  const published = await publishFreshness(cw, process.env.METRIC_NAMESPACE || DEFAULT_METRIC_NAMESPACE, hosts);
  for (const h of hosts) if (h.ageHours === null) logger.warn('host has no usable archive', { hostId: h.hostId });
  return { hosts, published };
};
