/**
 * Real peers for the Lambda handlers (lambda/*.ts): s3rver and dynalite,
 * wired only through the environment the stack sets, like in AWS. The
 * handlers cache their clients per module, so one set of peers per test file.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { S3Client } from '@aws-sdk/client-s3';
import type { APIGatewayProxyEventV2, S3Event } from 'aws-lambda';
import { startEmbeddedS3, type EmbeddedS3 } from '../../src/store/embedded-s3.js';
import { startDynalite, type RunningDynalite } from '../../src/catalog/dynalite.js';
import { createDocumentClient, ensureCatalogTable } from '../../src/catalog/table.js';
import { CatalogRepository } from '../../src/catalog/repository.js';

export interface LambdaPeers {
  s3: EmbeddedS3;
  dyn: RunningDynalite;
  repo: CatalogRepository;
  s3Client: S3Client;
  /** Every S3 notification s3rver emitted, in order (splice them off to feed a handler). */
  events: S3Event[];
  close(): Promise<void>;
}

/** Starts the peers and sets the handlers' environment (plus `env`); close() restores the environment. */
export async function startLambdaPeers(env: Record<string, string> = {}): Promise<LambdaPeers> {
  const dir = mkdtempSync(join(tmpdir(), 'cowstream-lambdas-'));
  const s3 = await startEmbeddedS3({ dir: join(dir, 's3') });
  const events: S3Event[] = [];
  s3.onEvent((e) => events.push(e as unknown as S3Event));
  const dyn = await startDynalite();
  const vars: Record<string, string> = {
    TABLE_NAME: 'catalog',
    BUCKET: s3.bucket,
    DYNAMODB_ENDPOINT: dyn.endpoint,
    S3_ENDPOINT: s3.endpoint,
    AWS_REGION: 'us-east-1',
    AWS_ACCESS_KEY_ID: s3.credentials.accessKeyId,
    AWS_SECRET_ACCESS_KEY: s3.credentials.secretAccessKey,
    LOG_LEVEL: 'ERROR',
    ...env,
  };
  const saved = Object.fromEntries(Object.keys(vars).map((k) => [k, process.env[k]]));
  Object.assign(process.env, vars);
  const { client, doc } = createDocumentClient({ endpoint: dyn.endpoint, credentials: s3.credentials });
  await ensureCatalogTable(client, 'catalog');
  const repo = new CatalogRepository(doc, 'catalog');
  const s3Client = new S3Client({ endpoint: s3.endpoint, region: 'us-east-1', forcePathStyle: true, credentials: s3.credentials });
  return {
    s3,
    dyn,
    repo,
    s3Client,
    events,
    async close() {
      s3Client.destroy();
      client.destroy();
      await dyn.close();
      await s3.close();
      for (const [k, v] of Object.entries(saved)) {
        if (v === undefined) delete process.env[k];
        else process.env[k] = v;
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** The IAM authorizer context API Gateway adds for a SigV4-signed caller (payload 2.0). */
export interface IamCaller {
  userArn: string;
  userId: string;
}

/** A payload 2.0 event of a named stage ("prod"), as API Gateway sends it. */
export function apiEvent(method: string, path: string, body?: unknown, caller?: IamCaller): APIGatewayProxyEventV2 {
  const [rawPath, rawQuery = ''] = path.split('?');
  const requestContext = {
    http: { method, path: rawPath, protocol: 'HTTP/1.1', sourceIp: '1.2.3.4', userAgent: 't' },
    stage: 'prod',
    ...(caller ? { authorizer: { iam: { accountId: '123456789012', callerId: caller.userId, userArn: caller.userArn, userId: caller.userId, accessKey: 'ASIAEXAMPLE' } } } : {}),
  };
  return {
    version: '2.0',
    routeKey: '$default',
    rawPath: `/prod${rawPath}`,
    rawQueryString: rawQuery,
    headers: {},
    queryStringParameters: Object.fromEntries(new URLSearchParams(rawQuery)),
    requestContext: requestContext as unknown as APIGatewayProxyEventV2['requestContext'],
    ...(body !== undefined ? { body: Buffer.from(JSON.stringify(body)).toString('base64'), isBase64Encoded: true } : { isBase64Encoded: false }),
  };
}
