/**
 * Lambda: the catalogue HTTP API (API Gateway HTTP API, payload 2.0,
 * IAM authorization). Thin wrapper over src/catalog/api.ts. CALLER_ROLES
 * (set by the stack) maps the per-host roles and the operator role to what
 * each may do (src/catalog/access.ts); without it the API refuses to run.
 * RESTORE_LEASE_SECONDS overrides the restore job lease (default 300).
 */
import type { APIGatewayProxyEventV2, APIGatewayProxyStructuredResultV2 } from 'aws-lambda';
import { iamCallerResolver, parseCallerRoles } from '../src/catalog/access.js';
import { createApiHandler, type ApiHandler } from '../src/catalog/api.js';
import { createLogger } from '../src/catalog/log.js';
import { DEFAULT_RESTORE_LEASE_MS } from '../src/catalog/repository.js';
import { createPlanBuilder } from '../src/catalog/restore-plan.js';
import { catalogRuntimeFromEnv, intEnv, requireEnv } from '../src/catalog/runtime.js';

const logger = createLogger('cowstream-api');
let api: ApiHandler | undefined;

export const handler = async (event: APIGatewayProxyEventV2): Promise<APIGatewayProxyStructuredResultV2> => {
  if (!api) {
    const rt = catalogRuntimeFromEnv();
    const resolveCaller = iamCallerResolver(parseCallerRoles(process.env.CALLER_ROLES));
    const leaseSeconds = intEnv(process.env, 'RESTORE_LEASE_SECONDS', DEFAULT_RESTORE_LEASE_MS / 1000);
    api = createApiHandler({
      ...rt,
      bucket: requireEnv(process.env, 'BUCKET'),
      buildPlan: createPlanBuilder(rt.repo, rt.s3),
      logger,
      resolveCaller,
      restoreLeaseMs: Math.max(1, leaseSeconds) * 1000,
    });
  }
  return api(event);
};
