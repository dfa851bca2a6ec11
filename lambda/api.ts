/**
 * Lambda: the catalogue HTTP API (API Gateway HTTP API, payload 2.0,
 * IAM authorization). Thin wrapper over src/catalog/api.ts.
 */
import type { APIGatewayProxyEventV2, APIGatewayProxyStructuredResultV2 } from 'aws-lambda';
import { createApiHandler, type ApiHandler } from '../src/catalog/api.js';
import { createLogger } from '../src/catalog/log.js';
import { createPlanBuilder } from '../src/catalog/restore-plan.js';
import { catalogRuntimeFromEnv, requireEnv } from '../src/catalog/runtime.js';

const logger = createLogger('cowstream-api');
let api: ApiHandler | undefined;

export const handler = async (event: APIGatewayProxyEventV2): Promise<APIGatewayProxyStructuredResultV2> => {
  if (!api) {
    const rt = catalogRuntimeFromEnv();
    api = createApiHandler({ ...rt, bucket: requireEnv(process.env, 'BUCKET'), buildPlan: createPlanBuilder(rt.repo, rt.s3), logger });
  }
  return api(event);
};
