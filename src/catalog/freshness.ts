/**
 * Freshness: the age of each host's newest usable archive, published as the
 * CloudWatch metric `ArchivesLastCreatedAgeHours` (dimension HostId) so an
 * alarm fires when a host stops backing up. A host with no usable archive
 * publishes nothing; the alarm treats missing data as breaching.
 */
import { PutMetricDataCommand, type CloudWatchClient, type MetricDatum } from '@aws-sdk/client-cloudwatch';
import type { CatalogRepository } from './repository.js';

export const FRESHNESS_METRIC = 'ArchivesLastCreatedAgeHours';
export const FRESHNESS_DIMENSION = 'HostId';
export const DEFAULT_METRIC_NAMESPACE = 'Cowstream';

export interface HostFreshness {
  hostId: string;
  newestArchiveAt: string | null;
  ageHours: number | null;
}

/** Pages scanned per host looking past REJECTED archives; bounds the cost of a host that uploads garbage. */
const MAX_PAGES = 5;

export async function computeFreshness(repo: CatalogRepository, extraHosts: string[] = [], now = Date.now()): Promise<HostFreshness[]> {
  const hosts = new Set([...(await repo.listHosts()).map((h) => h.hostId), ...extraHosts]);
  const out: HostFreshness[] = [];
  for (const hostId of [...hosts].sort()) {
    let newest: string | null = null;
    let cursor: string | undefined;
    for (let page = 0; page < MAX_PAGES && newest === null; page++) {
      const r = await repo.listArchives({ hostId, limit: 20, cursor });
      newest = r.items.find((a) => a.status !== 'REJECTED' && a.status !== 'CORRUPT')?.createdAt ?? null;
      cursor = r.cursor;
      if (!cursor) break;
    }
    out.push({
      hostId,
      newestArchiveAt: newest,
      ageHours: newest === null ? null : Math.max(0, Math.round(((now - Date.parse(newest)) / 3_600_000) * 100) / 100),
    });
  }
  return out;
}

export async function publishFreshness(cw: CloudWatchClient, namespace: string, items: HostFreshness[], now = new Date()): Promise<number> {
  const data: MetricDatum[] = items
    .filter((i) => i.ageHours !== null)
    .map((i) => ({ MetricName: FRESHNESS_METRIC, Dimensions: [{ Name: FRESHNESS_DIMENSION, Value: i.hostId }], Timestamp: now, Unit: 'None', Value: i.ageHours! }));
  // PutMetricData accepts up to 1000 data points per call; stay far below.
  for (let i = 0; i < data.length; i += 500) {
    await cw.send(new PutMetricDataCommand({ Namespace: namespace, MetricData: data.slice(i, i + 500) }));
  }
  return data.length;
}
