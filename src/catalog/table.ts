/**
 * The catalogue's single DynamoDB table. `catalogTableDefinition()` is the
 * one description of the key schema; the CDK `CatalogTable` construct and
 * `ensureCatalogTable()` (dynalite, tests) both follow it so the embedded
 * catalogue and AWS never drift apart.
 */
import {
  CreateTableCommand,
  DescribeTableCommand,
  DynamoDBClient,
  ResourceNotFoundException,
  type CreateTableCommandInput,
} from '@aws-sdk/client-dynamodb';
import { DynamoDBDocumentClient } from '@aws-sdk/lib-dynamodb';
import { CatalogError } from '../errors.js';

export interface IndexDefinition {
  indexName: string;
  partitionKey: string;
  sortKey: string;
}

export interface CatalogTableDefinition {
  partitionKey: string;
  sortKey: string;
  /** Every GSI projects ALL attributes; every key attribute is a string. */
  globalSecondaryIndexes: IndexDefinition[];
}

export const GSI = {
  /** HOST#<host> → archives newest first; HOSTRESTORES#<host>#<STATUS> → jobs; HOSTS → host list. */
  byHost: 'gsi1',
  /** ARCHIVES → all archives newest first; HOSTDISK#<host>#<disk> → per-disk index items. */
  byDisk: 'gsi2',
  /** PARENT#<uuid> → children of an archive. */
  byParent: 'gsi3',
  /** VERIFY → verify queue, least recently verified first (sparse). */
  verifyQueue: 'gsi4',
} as const;

/** The table's key schema, shared with the CDK construct. */
export function catalogTableDefinition(): CatalogTableDefinition {
  return {
    partitionKey: 'pk',
    sortKey: 'sk',
    globalSecondaryIndexes: [1, 2, 3, 4].map((n) => ({
      indexName: `gsi${n}`,
      partitionKey: `gsi${n}pk`,
      sortKey: `gsi${n}sk`,
    })),
  };
}

/** The CreateTable request for the definition above (on-demand billing). */
export function createTableInput(tableName: string): CreateTableCommandInput {
  const def = catalogTableDefinition();
  const attrs = new Set<string>([def.partitionKey, def.sortKey]);
  for (const g of def.globalSecondaryIndexes) {
    attrs.add(g.partitionKey);
    attrs.add(g.sortKey);
  }
  return {
    TableName: tableName,
    BillingMode: 'PAY_PER_REQUEST',
    AttributeDefinitions: [...attrs].map((name) => ({ AttributeName: name, AttributeType: 'S' })),
    KeySchema: [
      { AttributeName: def.partitionKey, KeyType: 'HASH' },
      { AttributeName: def.sortKey, KeyType: 'RANGE' },
    ],
    GlobalSecondaryIndexes: def.globalSecondaryIndexes.map((g) => ({
      IndexName: g.indexName,
      KeySchema: [
        { AttributeName: g.partitionKey, KeyType: 'HASH' },
        { AttributeName: g.sortKey, KeyType: 'RANGE' },
      ],
      Projection: { ProjectionType: 'ALL' },
    })),
  };
}

/** Creates the table if missing and waits until it is ACTIVE (dynalite, tests, embedded). */
export async function ensureCatalogTable(client: DynamoDBClient, tableName: string, timeoutMs = 30_000): Promise<void> {
  try {
    await client.send(new DescribeTableCommand({ TableName: tableName }));
  } catch (err) {
    if (!(err instanceof ResourceNotFoundException) && (err as Error)?.name !== 'ResourceNotFoundException') {
      throw new CatalogError(`cannot describe table ${tableName}`, { cause: err });
    }
    try {
      await client.send(new CreateTableCommand(createTableInput(tableName)));
    } catch (e) {
      if ((e as Error)?.name !== 'ResourceInUseException') throw new CatalogError(`cannot create table ${tableName}`, { cause: e });
    }
  }
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const d = await client.send(new DescribeTableCommand({ TableName: tableName }));
    const gsisActive = (d.Table?.GlobalSecondaryIndexes ?? []).every((g) => g.IndexStatus === undefined || g.IndexStatus === 'ACTIVE');
    if (d.Table?.TableStatus === 'ACTIVE' && gsisActive) return;
    if (Date.now() > deadline) throw new CatalogError(`table ${tableName} not ACTIVE after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

export interface DynamoConfig {
  region?: string;
  endpoint?: string;
  credentials?: { accessKeyId: string; secretAccessKey: string };
}

/** A document client that drops undefined attributes (optional record fields). */
export function createDocumentClient(config: DynamoConfig = {}): { client: DynamoDBClient; doc: DynamoDBDocumentClient } {
  const client = new DynamoDBClient({
    region: config.region ?? process.env.AWS_REGION ?? 'us-east-1',
    ...(config.endpoint ? { endpoint: config.endpoint } : {}),
    ...(config.credentials ? { credentials: config.credentials } : {}),
  });
  const doc = DynamoDBDocumentClient.from(client, { marshallOptions: { removeUndefinedValues: true } });
  return { client, doc };
}
