import { randomUUID } from 'node:crypto';
import { startDynalite, type RunningDynalite } from '../../../src/catalog/dynalite.js';
import { createDocumentClient, ensureCatalogTable } from '../../../src/catalog/table.js';
import { CatalogRepository } from '../../../src/catalog/repository.js';
import type { ArchiveRecord } from '../../../src/catalog/records.js';

export const TEST_CREDENTIALS = { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' };

export interface TestCatalog {
  dynalite: RunningDynalite;
  repo: CatalogRepository;
  tableName: string;
  close(): Promise<void>;
}

/** A fresh in-memory dynalite with the catalogue table (real DynamoDB protocol, no mocks). */
export async function startTestCatalog(): Promise<TestCatalog> {
  const dynalite = await startDynalite();
  const { client, doc } = createDocumentClient({ endpoint: dynalite.endpoint, region: 'us-east-1', credentials: TEST_CREDENTIALS });
  const tableName = `catalog-${randomUUID().slice(0, 8)}`;
  await ensureCatalogTable(client, tableName);
  return {
    dynalite,
    repo: new CatalogRepository(doc, tableName),
    tableName,
    async close() {
      client.destroy();
      await dynalite.close();
    },
  };
}

export function archiveRecord(over: Partial<ArchiveRecord> & { hostId: string; createdAt: string }): ArchiveRecord {
  const uuid = over.uuid ?? randomUUID();
  return {
    uuid,
    devices: [{ name: 'vda', size: 1 << 20 }],
    parentUuid: null,
    chainDepth: 0,
    bytesStored: 1000,
    zeroBytes: 0,
    dataBytes: 2000,
    compressionRatio: 2,
    status: 'INDEXED',
    bucket: 'b',
    key: `archives/${over.hostId}/${uuid}.cwa`,
    etag: 'e1',
    sequencer: '01',
    indexedAt: new Date().toISOString(),
    ...over,
  };
}
