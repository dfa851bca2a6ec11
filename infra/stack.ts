/**
 * CowstreamStack: the whole cloud side in one stack — archive
 * bucket, catalogue table, catalogue functions and API, per-host agent
 * roles, schedules and alarms.
 */
import { CfnOutput, Stack, type StackProps } from 'aws-cdk-lib';
import type { Construct, IConstruct } from 'constructs';
import { AgentAccess } from './agent-access.js';
import { Alarms } from './alarms.js';
import { BackupBucket } from './backup-bucket.js';
import { CatalogApi } from './catalog-api.js';
import { CatalogFunctions } from './catalog-functions.js';
import { CatalogTable } from './catalog-table.js';
import { OperatorAccess, callerRolesEnvironment } from './operator-access.js';
import type { CowstreamConfig } from './config.js';
import { acknowledge } from './nag.js';
import { Schedules } from './schedules.js';

export interface CowstreamStackProps extends StackProps {
  config: CowstreamConfig;
  /** Override the handler directory (tests); defaults to `<repo>/lambda`. */
  lambdaDir?: string;
}

export class CowstreamStack extends Stack {
  readonly config: CowstreamConfig;
  readonly backupBucket: BackupBucket;
  readonly catalogTable: CatalogTable;
  readonly functions: CatalogFunctions;
  readonly api: CatalogApi;
  readonly agentAccess: AgentAccess;
  readonly operatorAccess: OperatorAccess;
  readonly alarms: Alarms;

  constructor(scope: Construct, id: string, props: CowstreamStackProps) {
    super(scope, id, {
      description: 'cowstream: block-level backups to S3 — bucket, catalogue, API, agent roles, alarms',
      ...props,
    });
    const { config } = props;
    this.config = config;

    this.backupBucket = new BackupBucket(this, 'BackupBucket', {
      objectLock: config.objectLock,
      kmsKeyArn: config.kmsKeyArn,
    });
    this.catalogTable = new CatalogTable(this, 'CatalogTable');
    this.functions = new CatalogFunctions(this, 'CatalogFunctions', {
      config,
      bucket: this.backupBucket.bucket,
      encryptionKey: this.backupBucket.encryptionKey,
      table: this.catalogTable,
      ...(props.lambdaDir ? { lambdaDir: props.lambdaDir } : {}),
    });
    this.backupBucket.notifyIndexer(this.functions.indexer);
    this.acknowledgeNotificationHandler();

    this.api = new CatalogApi(this, 'CatalogApi', { handler: this.functions.api });
    this.agentAccess = new AgentAccess(this, 'AgentAccess', {
      hosts: config.hosts,
      bucket: this.backupBucket.bucket,
      encryptionKey: this.backupBucket.encryptionKey,
      api: this.api,
    });
    this.operatorAccess = new OperatorAccess(this, 'OperatorAccess', { api: this.api });
    // The API tells hosts from operators by the caller's role id (src/catalog/access.ts).
    this.functions.api.addEnvironment('CALLER_ROLES', callerRolesEnvironment(this, this.operatorAccess.role, this.agentAccess.roles));
    new Schedules(this, 'Schedules', {
      verify: this.functions.verify,
      prune: this.functions.prune,
      freshness: this.functions.freshness,
    });
    this.alarms = new Alarms(this, 'Alarms', {
      hosts: config.hosts,
      freshnessHours: config.freshnessHours,
      alarmEmail: config.alarmEmail,
      indexer: this.functions.indexer,
      indexerDlq: this.functions.indexerDlq,
      scheduled: { verify: this.functions.verify, prune: this.functions.prune, freshness: this.functions.freshness },
    });

    new CfnOutput(this, 'BucketName', { value: this.backupBucket.bucket.bucketName, description: 'store.bucket of every agent' });
    new CfnOutput(this, 'Region', { value: this.region, description: 'store.region of every agent' });
    new CfnOutput(this, 'ApiUrl', { value: this.api.url, description: 'catalog.url of every agent and of the CLI (SigV4-signed)' });
    new CfnOutput(this, 'TableName', { value: this.catalogTable.table.tableName, description: 'catalogue DynamoDB table' });
    new CfnOutput(this, 'AlarmTopicArn', { value: this.alarms.topic.topicArn, description: 'SNS topic of all alarms' });
  }

  /**
   * `addEventNotification` creates CDK's singleton BucketNotificationsHandler
   * custom resource (a Lambda that calls PutBucketNotificationConfiguration
   * at deploy time). Its role is CDK-owned (aws-cdk-lib already scopes its
   * s3:PutBucketNotification to this bucket); only the managed logging
   * policy remains to acknowledge.
   */
  private acknowledgeNotificationHandler(): void {
    const handler: IConstruct | undefined = this.node.children.find((c) => c.node.id.startsWith('BucketNotificationsHandler'));
    if (!handler) throw new Error('BucketNotificationsHandler not found: did aws-cdk-lib rename it?');
    acknowledge(
      handler,
      'AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole]',
      'CDK-managed deploy-time custom resource (BucketNotificationsHandler); its role and managed logging policy are not configurable.',
    );
  }
}
