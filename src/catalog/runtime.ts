/**
 * Clients and configuration of the Lambda handlers, from the environment
 * the CDK stack sets (TABLE_NAME, BUCKET, ...). Optional *_ENDPOINT
 * variables point the same handlers at dynalite / s3rver for local runs.
 */
import { S3Client } from '@aws-sdk/client-s3';
import { ConfigError } from '../errors.js';
import { s3RequestHandler } from '../store/config.js';
import { createDocumentClient } from './table.js';
import { CatalogRepository } from './repository.js';

export interface CatalogRuntime {
  repo: CatalogRepository;
  s3: S3Client;
  bucket: string;
  tableName: string;
  /** ARCHIVE_PREFIX: the store prefix archives live under (the stack's layout uses none). */
  prefix: string;
}

export function requireEnv(env: NodeJS.ProcessEnv, name: string): string {
  const v = env[name];
  if (!v) throw new ConfigError(`environment variable ${name} is required`);
  return v;
}

export function catalogRuntimeFromEnv(env: NodeJS.ProcessEnv = process.env): CatalogRuntime {
  const tableName = requireEnv(env, 'TABLE_NAME');
  const bucket = env.BUCKET ?? '';
  const region = env.AWS_REGION ?? 'us-east-1';
  const { doc } = createDocumentClient({ region, ...(env.DYNAMODB_ENDPOINT ? { endpoint: env.DYNAMODB_ENDPOINT } : {}) });
  const s3 = new S3Client({
    region,
    requestHandler: s3RequestHandler(undefined),
    ...(env.S3_ENDPOINT ? { endpoint: env.S3_ENDPOINT, forcePathStyle: true } : {}),
  });
  return { repo: new CatalogRepository(doc, tableName), s3, bucket, tableName, prefix: env.ARCHIVE_PREFIX ?? '' };
}

/** Parses a non-negative integer env var with a default. */
export function intEnv(env: NodeJS.ProcessEnv, name: string, dflt: number): number {
  const v = env[name];
  if (v === undefined || v === '') return dflt;
  if (!/^\d+$/.test(v)) throw new ConfigError(`environment variable ${name} must be a non-negative integer, got "${v}"`);
  return Number(v);
}
