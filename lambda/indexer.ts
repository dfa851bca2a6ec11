/**
 * Lambda: S3 ObjectCreated/ObjectRemoved on archives/ → catalogue records.
 * Thin wrapper over src/catalog/indexer.ts. Throwing makes Lambda retry the
 * (idempotent) batch and finally route it to the DLQ.
 */
import type { S3Event } from 'aws-lambda';
import { Indexer, type IndexResult } from '../src/catalog/indexer.js';
import { createLogger } from '../src/catalog/log.js';
import { catalogRuntimeFromEnv } from '../src/catalog/runtime.js';

const logger = createLogger('cowstream-indexer');
let indexer: Indexer | undefined;

export const handler = async (event: S3Event): Promise<{ results: IndexResult[] }> => {
  indexer ??= new Indexer({ ...catalogRuntimeFromEnv(), logger });
  return { results: await indexer.handleEvent(event) };
};
