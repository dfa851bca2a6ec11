/**
 * The catalogue's Lambda functions: indexer, api, verify, prune
 * and freshness, each a NodejsFunction over `lambda/<name>.ts`, bundled by
 * the locally installed esbuild (never Docker), Node 22 on arm64.
 *
 * Each function gets its own role with hand-written, least-privilege
 * statements instead of `grant*()` helpers: DynamoDB indexes are named one
 * by one (no `index/*`), S3 access is per prefix and per action, and logs go
 * to the function's own log group (no AWSLambdaBasicExecutionRole, which
 * would allow writing to every log group in the account).
 */
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Duration, RemovalPolicy, Stack } from 'aws-cdk-lib';
import * as iam from 'aws-cdk-lib/aws-iam';
import type * as kms from 'aws-cdk-lib/aws-kms';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import * as destinations from 'aws-cdk-lib/aws-lambda-destinations';
import * as nodejs from 'aws-cdk-lib/aws-lambda-nodejs';
import * as logs from 'aws-cdk-lib/aws-logs';
import type * as s3 from 'aws-cdk-lib/aws-s3';
import * as sqs from 'aws-cdk-lib/aws-sqs';
import { Construct } from 'constructs';
import type { CowstreamConfig } from './config.js';
import type { CatalogTable } from './catalog-table.js';
import { ARCHIVES_PREFIX, METRIC_NAMESPACE, RESTORE_PLANS_PREFIX } from './layout.js';
import { acknowledge, acknowledgeWildcards } from './nag.js';
import { MAX_INDEX_ENTRIES_ENV } from '../src/format/limits.js';

/** Index entries a Lambda reads at most (the CLI and agents default to 1 Mi). */
const LAMBDA_MAX_INDEX_ENTRIES = 256 * 1024;

/** Repository root (this file lives in `<root>/infra/`). */
export const REPO_ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');

export const FUNCTION_NAMES = ['indexer', 'api', 'verify', 'prune', 'freshness'] as const;
export type FunctionName = (typeof FUNCTION_NAMES)[number];

export const LAMBDA_DIR = join(REPO_ROOT, 'lambda');

export function lambdaEntry(name: FunctionName, dir: string = LAMBDA_DIR): string {
  return join(dir, `${name}.ts`);
}

export const LAMBDA_RUNTIME = lambda.Runtime.NODEJS_24_X;
export const LAMBDA_ARCHITECTURE = lambda.Architecture.ARM_64;

interface FunctionSpec {
  description: string;
  memorySize: number;
  timeout: Duration;
  environment: Record<string, string>;
}

export interface CatalogFunctionsProps {
  config: CowstreamConfig;
  bucket: s3.IBucket;
  encryptionKey: kms.IKey | undefined;
  table: CatalogTable;
  /** Directory holding `<name>.ts` handlers; defaults to `<repo>/lambda`. */
  lambdaDir?: string;
}

const DDB_READ = ['dynamodb:GetItem', 'dynamodb:BatchGetItem', 'dynamodb:Query'];
const DDB_WRITE = [
  'dynamodb:PutItem',
  'dynamodb:UpdateItem',
  'dynamodb:DeleteItem',
  'dynamodb:BatchWriteItem',
  'dynamodb:ConditionCheckItem',
];

export class CatalogFunctions extends Construct {
  readonly indexer: nodejs.NodejsFunction;
  readonly api: nodejs.NodejsFunction;
  readonly verify: nodejs.NodejsFunction;
  readonly prune: nodejs.NodejsFunction;
  readonly freshness: nodejs.NodejsFunction;
  /** Async invocations of the indexer that failed after retries land here. */
  readonly indexerDlq: sqs.Queue;
  readonly all: Record<FunctionName, nodejs.NodejsFunction>;

  private readonly props: CatalogFunctionsProps;

  constructor(scope: Construct, id: string, props: CatalogFunctionsProps) {
    super(scope, id);
    this.props = props;
    const { config, bucket, table } = props;
    const base = {
      TABLE_NAME: table.table.tableName,
      BUCKET: bucket.bucketName,
      LOG_LEVEL: 'INFO',
      // A forged index must not exhaust a 512 MB function: planning costs ~450 B per index
      // entry, so 256 Ki entries stay near 120 MB (docs/security.md, "bounded memory").
      [MAX_INDEX_ENTRIES_ENV]: String(LAMBDA_MAX_INDEX_ENTRIES),
    };

    this.indexerDlq = new sqs.Queue(this, 'IndexerDlq', {
      encryption: sqs.QueueEncryption.SQS_MANAGED,
      enforceSSL: true,
      retentionPeriod: Duration.days(14),
    });
    acknowledge(
      this.indexerDlq,
      'AwsSolutions-SQS3',
      'This queue is itself the dead-letter destination of the indexer; a DLQ of a DLQ would never be read.',
    );

    this.indexer = this.makeFunction('indexer', {
      description: 'cowstream: indexes archives on S3 ObjectCreated/ObjectRemoved under archives/',
      memorySize: 512,
      timeout: Duration.seconds(60),
      environment: base,
    }, {
      onFailure: new destinations.SqsDestination(this.indexerDlq),
      retryAttempts: 2,
      maxEventAge: Duration.hours(6),
    });
    this.allowS3(this.indexer, ['s3:GetObject'], [`${ARCHIVES_PREFIX}*`], 'reads header/footer/trailer of any archive with ranged GETs');
    this.allowNotFound(this.indexer);
    this.allowTable(this.indexer, [...DDB_READ, ...DDB_WRITE]);

    this.api = this.makeFunction('api', {
      description: 'cowstream: catalogue HTTP API (archives, restores, hosts)',
      memorySize: 512,
      // API Gateway HTTP APIs give up after 30 s.
      timeout: Duration.seconds(29),
      environment: base,
    });
    this.allowS3(this.api, ['s3:GetObject'], [`${ARCHIVES_PREFIX}*`], 'reads archive indexes of any host to plan restores');
    this.allowS3(this.api, ['s3:DeleteObject'], [`${ARCHIVES_PREFIX}*`], 'DELETE /archives/{id} deletes the archive object of any host');
    this.allowS3(this.api, ['s3:GetObject', 's3:PutObject'], [`${RESTORE_PLANS_PREFIX}*`], 'writes and reads restore-plans/<restoreId>.json');
    this.allowNotFound(this.api);
    this.allowTable(this.api, [...DDB_READ, ...DDB_WRITE]);

    this.verify = this.makeFunction('verify', {
      description: 'cowstream: scheduled checksum verification of stored archives',
      memorySize: 1024,
      timeout: Duration.minutes(15),
      environment: { ...base, VERIFY_BYTE_BUDGET: String(config.verifyByteBudget) },
    });
    this.allowS3(this.verify, ['s3:GetObject'], [`${ARCHIVES_PREFIX}*`], 'reads extents of any archive to check stored checksums');
    this.allowNotFound(this.verify);
    this.allowTable(this.verify, [...DDB_READ, ...DDB_WRITE]);

    this.prune = this.makeFunction('prune', {
      description: 'cowstream: scheduled, chain-aware retention (prune)',
      memorySize: 512,
      timeout: Duration.minutes(5),
      environment: { ...base, RETENTION: JSON.stringify(config.retention), DRY_RUN: String(config.pruneDryRun) },
    });
    this.allowS3(this.prune, ['s3:DeleteObject'], [`${ARCHIVES_PREFIX}*`], 'deletes archives of any host that the retention policy no longer keeps');
    this.allowTable(this.prune, [...DDB_READ, ...DDB_WRITE]);

    this.freshness = this.makeFunction('freshness', {
      description: 'cowstream: publishes hours since the newest archive of each host',
      memorySize: 256,
      timeout: Duration.seconds(60),
      environment: {
        TABLE_NAME: table.table.tableName,
        HOSTS: config.hosts.join(','),
        METRIC_NAMESPACE,
        LOG_LEVEL: 'INFO',
      },
    });
    this.allowTable(this.freshness, DDB_READ);
    const putMetric = new iam.PolicyStatement({
      actions: ['cloudwatch:PutMetricData'],
      resources: ['*'],
      conditions: { StringEquals: { 'cloudwatch:namespace': METRIC_NAMESPACE } },
    });
    this.freshness.addToRolePolicy(putMetric);
    acknowledgeWildcards(
      this.freshness.role!,
      putMetric,
      'cloudwatch:PutMetricData supports no resource-level permissions; it is confined to the Cowstream namespace by the cloudwatch:namespace condition.',
    );

    this.all = { indexer: this.indexer, api: this.api, verify: this.verify, prune: this.prune, freshness: this.freshness };
  }

  private makeFunction(name: FunctionName, spec: FunctionSpec, async?: lambda.EventInvokeConfigOptions): nodejs.NodejsFunction {
    const entry = lambdaEntry(name, this.props.lambdaDir);
    if (!existsSync(entry)) throw new Error(`Lambda entry ${entry} does not exist`);
    const cap = name[0]!.toUpperCase() + name.slice(1);
    const logGroup = new logs.LogGroup(this, `${cap}Logs`, {
      retention: logs.RetentionDays.ONE_MONTH,
      removalPolicy: RemovalPolicy.DESTROY,
    });
    const role = new iam.Role(this, `${cap}Role`, {
      assumedBy: new iam.ServicePrincipal('lambda.amazonaws.com'),
      description: `cowstream ${name} function`,
    });
    // Only its own log group (the function's logging config points there).
    role.addToPolicy(
      new iam.PolicyStatement({
        actions: ['logs:CreateLogStream', 'logs:PutLogEvents'],
        resources: [logGroup.logGroupArn],
      }),
    );
    return new nodejs.NodejsFunction(this, cap, {
      entry,
      handler: 'handler',
      runtime: LAMBDA_RUNTIME,
      architecture: LAMBDA_ARCHITECTURE,
      role,
      logGroup,
      loggingFormat: lambda.LoggingFormat.JSON,
      description: spec.description,
      memorySize: spec.memorySize,
      timeout: spec.timeout,
      environment: { ...spec.environment, NODE_OPTIONS: '--enable-source-maps' },
      projectRoot: REPO_ROOT,
      depsLockFilePath: join(REPO_ROOT, 'package-lock.json'),
      bundling: {
        // Synthesis must work offline on a CI box without Docker.
        forceDockerBundling: false,
        format: nodejs.OutputFormat.ESM,
        target: 'node24',
        minify: true,
        sourceMap: true,
        sourcesContent: false,
        // Pin the SDK version we test against instead of the runtime's copy.
        bundleAwsSDK: true,
        mainFields: ['module', 'main'],
        // CommonJS dependencies inside an ESM bundle still call require().
        banner: "import { createRequire as __cowstreamCreateRequire } from 'node:module'; const require = __cowstreamCreateRequire(import.meta.url);",
      },
      ...(async ?? {}),
    });
  }

  /**
   * s3:ListBucket on the bucket (not conditioned on a prefix): without it S3
   * answers a GET/HEAD of a missing key with 403 instead of 404, and the
   * indexer/verify treat "object gone" (StoreNotFoundError) differently from
   * "access denied" — a create-then-delete race must not end in the DLQ.
   */
  private allowNotFound(fn: lambda.Function): void {
    fn.addToRolePolicy(new iam.PolicyStatement({ actions: ['s3:ListBucket'], resources: [this.props.bucket.bucketArn] }));
  }

  private allowTable(fn: lambda.Function, actions: string[]): void {
    fn.addToRolePolicy(new iam.PolicyStatement({ actions, resources: this.props.table.resourceArns() }));
  }

  /**
   * Object-level S3 access under `prefixes` (each ends with `*`, which is
   * what makes them IAM5 findings; the reason says why that scope is needed).
   */
  private allowS3(fn: lambda.Function, actions: string[], prefixes: string[], why: string): void {
    const { bucket, encryptionKey } = this.props;
    const statement = new iam.PolicyStatement({ actions, resources: prefixes.map((p) => bucket.arnForObjects(p)) });
    fn.addToRolePolicy(statement);
    acknowledgeWildcards(fn.role!, statement, `Object keys are archive/restore UUIDs not known at deploy time; the ${fn.node.id} function ${why}.`);
    // SSE-KMS: reading needs Decrypt, writing GenerateDataKey; deleting needs no key access.
    const touchesData = actions.some((a) => a === 's3:GetObject' || a === 's3:PutObject');
    if (encryptionKey && touchesData) {
      const kmsActions = actions.includes('s3:PutObject') ? ['kms:Decrypt', 'kms:GenerateDataKey'] : ['kms:Decrypt'];
      fn.addToRolePolicy(
        new iam.PolicyStatement({
          actions: kmsActions,
          resources: [encryptionKey.keyArn],
          conditions: { StringEquals: { 'kms:ViaService': `s3.${Stack.of(this).region}.${Stack.of(this).urlSuffix}` } },
        }),
      );
    }
  }
}
