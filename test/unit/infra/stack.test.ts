/**
 * CowstreamStack with two hosts and an alarm e-mail, Lambdas bundled for
 * real from lambda/*.ts by local esbuild. Synthesized once for the file;
 * every test asserts one property (no whole-template snapshot).
 */
import { execFile } from 'node:child_process';
import { existsSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import { App, Stack } from 'aws-cdk-lib';
import { Match } from 'aws-cdk-lib/assertions';
import * as s3 from 'aws-cdk-lib/aws-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CATALOG_ROUTES } from '../../../infra/catalog-api.js';
import { apiRoutes } from '../../../src/catalog/api.js';
import { FUNCTION_NAMES, lambdaEntry } from '../../../infra/catalog-functions.js';
import { catalogTableDefinition } from '../../../src/catalog/table.js';
import type { IConstruct } from 'constructs';
import { acknowledgements, logicalIdOf, nagFindings, rawNagFindings, synthesize, type Synthesized } from './synth-helper.js';

type Json = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any
type Resources = Record<string, Json>;

const execFileAsync = promisify(execFile);

let s: Synthesized;
let resources: Resources;

beforeAll(() => {
  s = synthesize({ hosts: 'pve1,pve-2', alarmEmail: 'ops@example.com' }, { bundle: true });
  resources = s.template.toJSON().Resources as Resources;
}, 180_000);

afterAll(() => s?.cleanup());

function ofType(type: string): [string, Json][] {
  return Object.entries(resources).filter(([, r]) => r.Type === type);
}

const logicalId = (construct: IConstruct): string => logicalIdOf(s.stack, construct);

const backupBucketId = (): string => logicalId(s.stack.backupBucket.bucket);
const logsBucketId = (): string => logicalId(s.stack.backupBucket.accessLogs);

/** All Allow statements of the policies attached to a role. */
function statementsOfRole(roleId: string): Json[] {
  const out: Json[] = [];
  for (const [, p] of ofType('AWS::IAM::Policy')) {
    const roles = (p.Properties.Roles as Json[]).map((r) => r.Ref);
    if (roles.includes(roleId)) out.push(...(p.Properties.PolicyDocument.Statement as Json[]));
  }
  for (const pol of (resources[roleId]!.Properties.Policies ?? []) as Json[]) out.push(...pol.PolicyDocument.Statement);
  return out;
}

const list = <T>(v: T | T[] | undefined): T[] => (v === undefined ? [] : Array.isArray(v) ? v : [v]);
const flat = (v: unknown): string => JSON.stringify(v);

describe('BackupBucket', () => {
  it('blocks all public access on both buckets', () => {
    for (const id of [backupBucketId(), logsBucketId()]) {
      expect(resources[id]!.Properties.PublicAccessBlockConfiguration).toEqual({
        BlockPublicAcls: true,
        BlockPublicPolicy: true,
        IgnorePublicAcls: true,
        RestrictPublicBuckets: true,
      });
    }
  });

  it('denies every non-TLS request in the bucket policies', () => {
    for (const id of [backupBucketId(), logsBucketId()]) {
      s.template.hasResourceProperties('AWS::S3::BucketPolicy', {
        Bucket: { Ref: id },
        PolicyDocument: {
          Statement: Match.arrayWith([
            Match.objectLike({
              Effect: 'Deny',
              Action: 's3:*',
              Principal: { AWS: '*' },
              Condition: { Bool: { 'aws:SecureTransport': 'false' } },
              Resource: Match.arrayWith([{ 'Fn::GetAtt': [id, 'Arn'] }]),
            }),
          ]),
        },
      });
    }
  });

  it('encrypts with SSE-S3 by default and is versioned without Object Lock', () => {
    const p = resources[backupBucketId()]!.Properties;
    expect(p.BucketEncryption.ServerSideEncryptionConfiguration).toEqual([
      { ServerSideEncryptionByDefault: { SSEAlgorithm: 'AES256' } },
    ]);
    expect(p.VersioningConfiguration).toEqual({ Status: 'Enabled' });
    expect(p.ObjectLockEnabled).toBeUndefined();
    expect(p.ObjectLockConfiguration).toBeUndefined();
  });

  it('has the lifecycle rules: abort multipart after 3 days, IA transition, noncurrent expiry', () => {
    const rules = resources[backupBucketId()]!.Properties.LifecycleConfiguration.Rules as Json[];
    const byId = new Map(rules.map((r) => [r.Id, r]));
    expect(byId.get('abort-incomplete-multipart-uploads')).toMatchObject({
      Status: 'Enabled',
      AbortIncompleteMultipartUpload: { DaysAfterInitiation: 3 },
    });
    expect(byId.get('abort-incomplete-multipart-uploads')!.Prefix).toBeUndefined();
    expect(byId.get('archives-to-infrequent-access')).toMatchObject({
      Status: 'Enabled',
      Prefix: 'archives/',
      Transitions: [{ StorageClass: 'STANDARD_IA', TransitionInDays: 30 }],
    });
    expect(byId.get('expire-noncurrent-versions')).toMatchObject({
      Status: 'Enabled',
      NoncurrentVersionExpiration: { NoncurrentDays: 30 },
    });
    // Nothing ever expires *current* archives: only prune deletes backups.
    for (const r of rules) {
      expect(r.ExpirationInDays).toBeUndefined();
      expect(r.ExpirationDate).toBeUndefined();
    }
  });

  it('writes server access logs to the log bucket', () => {
    expect(resources[backupBucketId()]!.Properties.LoggingConfiguration).toEqual({
      DestinationBucketName: { Ref: logsBucketId() },
      LogFilePrefix: 'backup-bucket/',
    });
  });

  it('retains the bucket and the log bucket on stack deletion', () => {
    for (const id of [backupBucketId(), logsBucketId()]) {
      expect(resources[id]!.DeletionPolicy).toBe('Retain');
      expect(resources[id]!.UpdateReplacePolicy).toBe('Retain');
    }
  });

  it('sends ObjectCreated and ObjectRemoved under archives/ (only) to the indexer', () => {
    const [[, n]] = ofType('Custom::S3BucketNotifications') as [[string, Json]];
    expect(n.Properties.BucketName).toEqual({ Ref: backupBucketId() });
    const configs = n.Properties.NotificationConfiguration.LambdaFunctionConfigurations as Json[];
    expect(configs.flatMap((c) => c.Events as string[]).sort()).toEqual(['s3:ObjectCreated:*', 's3:ObjectRemoved:*']);
    const indexerId = logicalId(s.stack.functions.indexer);
    for (const c of configs) {
      expect(c.LambdaFunctionArn).toEqual({ 'Fn::GetAtt': [indexerId, 'Arn'] });
      expect(c.Filter).toEqual({ Key: { FilterRules: [{ Name: 'prefix', Value: 'archives/' }] } });
    }
    expect(n.Properties.NotificationConfiguration.QueueConfigurations).toBeUndefined();
    expect(n.Properties.NotificationConfiguration.TopicConfigurations).toBeUndefined();
  });
});

describe('CatalogTable', () => {
  it('is on-demand with PITR and deletion protection, retained', () => {
    const [[, t], ...rest] = ofType('AWS::DynamoDB::Table') as [string, Json][] as [[string, Json]];
    expect(rest).toHaveLength(0);
    expect(t.Properties.BillingMode).toBe('PAY_PER_REQUEST');
    expect(t.Properties.PointInTimeRecoverySpecification).toEqual({ PointInTimeRecoveryEnabled: true });
    expect(t.Properties.DeletionProtectionEnabled).toBe(true);
    expect(t.DeletionPolicy).toBe('Retain');
    expect(t.UpdateReplacePolicy).toBe('Retain');
  });

  it('matches the catalogue key design exactly (src/catalog/table.ts)', () => {
    const def = catalogTableDefinition();
    const [[, t]] = ofType('AWS::DynamoDB::Table') as [[string, Json]];
    expect(t.Properties.KeySchema).toEqual([
      { AttributeName: def.partitionKey, KeyType: 'HASH' },
      { AttributeName: def.sortKey, KeyType: 'RANGE' },
    ]);
    const gsis = (t.Properties.GlobalSecondaryIndexes as Json[]).map((g) => ({
      indexName: g.IndexName,
      partitionKey: g.KeySchema[0].AttributeName,
      sortKey: g.KeySchema[1].AttributeName,
      projection: g.Projection.ProjectionType,
    }));
    expect(gsis).toEqual(def.globalSecondaryIndexes.map((g) => ({ ...g, projection: 'ALL' })));
    for (const a of t.Properties.AttributeDefinitions as Json[]) expect(a.AttributeType).toBe('S');
  });
});

describe('CatalogFunctions', () => {
  const fnProps = (name: (typeof FUNCTION_NAMES)[number]): Json => resources[logicalId(s.stack.functions.all[name])]!.Properties;

  it.each(FUNCTION_NAMES)('%s runs Node 24 on arm64 with a log group that has a retention', (name) => {
    const p = fnProps(name);
    expect(p.Runtime).toBe('nodejs24.x');
    expect(p.Architectures).toEqual(['arm64']);
    expect(p.Handler).toBe('index.handler');
    const lgId = p.LoggingConfig.LogGroup.Ref as string;
    expect(resources[lgId]!.Type).toBe('AWS::Logs::LogGroup');
    expect(resources[lgId]!.Properties.RetentionInDays).toBe(30);
    expect(p.Timeout).toBeGreaterThanOrEqual(10);
    expect(p.Timeout).toBeLessThanOrEqual(900);
    expect(p.MemorySize).toBeGreaterThanOrEqual(256);
  });

  const bundlePath = (name: (typeof FUNCTION_NAMES)[number]): string => {
    const key = s.stack.resolve((fnProps(name).Code as Json).S3Key) as string;
    return join(s.outdir, `asset.${key.replace(/\.zip$/, '')}`, 'index.mjs');
  };

  it.each(FUNCTION_NAMES)('%s is bundled from lambda/<name>.ts by local esbuild into the assembly', (name) => {
    expect(existsSync(lambdaEntry(name))).toBe(true);
    expect(statSync(bundlePath(name)).size).toBeGreaterThan(100);
  });

  it('produces ESM bundles that load in plain Node and export the handler', async () => {
    // A separate node process: vitest would push 1 MB bundles through its
    // transform pipeline. Loading proves the require() shim for CommonJS deps works.
    const paths = FUNCTION_NAMES.map((n) => pathToFileURL(bundlePath(n)).href);
    const script = `const out = {}; for (const p of ${JSON.stringify(paths)}) out[p] = typeof (await import(p)).handler; console.log(JSON.stringify(out));`;
    const { stdout } = await execFileAsync(process.execPath, ['--input-type=module', '-e', script], {
      env: { PATH: process.env.PATH ?? '', AWS_REGION: 'us-east-1' },
      timeout: 60_000,
    });
    expect(Object.values(JSON.parse(stdout) as Record<string, string>)).toEqual(FUNCTION_NAMES.map(() => 'function'));
  });

  it('passes the table and bucket to every function that needs them', () => {
    for (const name of ['indexer', 'api', 'verify', 'prune'] as const) {
      const env = fnProps(name).Environment.Variables as Json;
      expect(env.TABLE_NAME).toEqual({ Ref: logicalId(s.stack.catalogTable.table) });
      expect(env.BUCKET).toEqual({ Ref: backupBucketId() });
      // Every function that reads archive indexes caps them below what its memory can plan.
      expect(env.COWSTREAM_MAX_INDEX_ENTRIES, name).toBe(String(256 * 1024));
    }
    const fresh = fnProps('freshness').Environment.Variables as Json;
    expect(fresh).toMatchObject({ HOSTS: 'pve1,pve-2', METRIC_NAMESPACE: 'Cowstream' });
    expect(fnProps('prune').Environment.Variables).toMatchObject({ RETENTION: '{}', DRY_RUN: 'false' });
    expect(fnProps('verify').Environment.Variables).toMatchObject({ VERIFY_BYTE_BUDGET: String(1024 ** 3) });
  });

  it('sends failed async indexer invocations to an encrypted SQS DLQ', () => {
    const dlqId = logicalId(s.stack.functions.indexerDlq);
    const q = resources[dlqId]!;
    expect(q.Type).toBe('AWS::SQS::Queue');
    expect(q.Properties.SqsManagedSseEnabled).toBe(true);
    s.template.hasResourceProperties('AWS::Lambda::EventInvokeConfig', {
      FunctionName: { Ref: logicalId(s.stack.functions.indexer) },
      MaximumRetryAttempts: 2,
      DestinationConfig: { OnFailure: { Destination: { 'Fn::GetAtt': [dlqId, 'Arn'] } } },
    });
  });
});

describe('IAM', () => {
  const agentRoleIds = (): string[] => [...s.stack.agentAccess.roles.values()].map((r) => logicalId(r));

  it('never allows a wildcard action', () => {
    const offenders: string[] = [];
    for (const [id, p] of ofType('AWS::IAM::Policy')) {
      for (const st of p.Properties.PolicyDocument.Statement as Json[]) {
        if (st.Effect !== 'Allow') continue;
        for (const a of list<string>(st.Action)) if (a.includes('*')) offenders.push(`${id}: ${a}`);
      }
    }
    expect(offenders).toEqual([]);
  });

  it('creates one agent role per host, trusted by this account only', () => {
    expect([...s.stack.agentAccess.roles.keys()]).toEqual(['pve1', 'pve-2']);
    for (const id of agentRoleIds()) {
      const trust = resources[id]!.Properties.AssumeRolePolicyDocument.Statement as Json[];
      expect(trust).toHaveLength(1);
      expect(flat(trust[0]!.Principal)).toContain(':root');
      expect(flat(trust[0]!.Principal)).toContain('AWS::AccountId');
      expect(resources[id]!.Properties.ManagedPolicyArns).toBeUndefined();
    }
  });

  it('confines every agent write to archives/<own host>/ and grants no delete', () => {
    for (const [host, role] of s.stack.agentAccess.roles) {
      const statements = statementsOfRole(logicalId(role));
      expect(statements.length).toBeGreaterThan(0);
      for (const st of statements) {
        expect(st.Effect).toBe('Allow');
        const actions = list<string>(st.Action);
        for (const a of actions) expect(a).not.toMatch(/^s3:Delete|^s3:PutBucket|^s3:PutObject(Acl|Retention|LegalHold|Tagging)|^iam:|^dynamodb:/);
        const writes = actions.filter((a) => ['s3:PutObject', 's3:AbortMultipartUpload', 's3:ListMultipartUploadParts'].includes(a));
        if (writes.length > 0) {
          const res = list(st.Resource).map(flat);
          expect(res).toHaveLength(1);
          expect(res[0]).toContain(`"/archives/${host}/*"`);
        }
      }
      const all = statements.flatMap((st) => list<string>(st.Action));
      expect(all).toEqual(expect.arrayContaining(['s3:PutObject', 's3:AbortMultipartUpload', 's3:ListMultipartUploadParts', 's3:GetObject', 's3:ListBucket']));
    }
  });

  it('conditions the agent ListBucket on the archive/plan prefixes', () => {
    for (const role of s.stack.agentAccess.roles.values()) {
      const st = statementsOfRole(logicalId(role)).find((x) => list(x.Action).includes('s3:ListBucket'))!;
      expect(st.Condition).toEqual({ StringLike: { 's3:prefix': ['archives/*', 'restore-plans/*'] } });
    }
  });

  it('lets an agent invoke only the agent routes, and only its own host listing', () => {
    for (const [host, role] of s.stack.agentAccess.roles) {
      const invoke = statementsOfRole(logicalId(role)).filter((x) => list(x.Action).includes('execute-api:Invoke'));
      expect(invoke).toHaveLength(1);
      const tails = list(invoke[0]!.Resource).map((r) => {
        const parts = (r as Json)['Fn::Join'][1] as unknown[];
        return parts[parts.length - 1] as string;
      });
      expect(tails.sort()).toEqual(
        [
          `/*/GET/hosts/${host}/restores`, '/*/GET/restores/*', '/*/POST/restores/*/claim', '/*/POST/restores/*/complete', '/*/POST/restores/*/progress',
          `/*/GET/hosts/${host}/exports`, '/*/GET/exports/*', '/*/POST/exports/*/claim', '/*/POST/exports/*/complete', '/*/POST/exports/*/progress',
        ].sort(),
      );
    }
  });

  it('creates an operator role, trusted by this account only, that may invoke every catalogue route and nothing else', () => {
    const id = logicalId(s.stack.operatorAccess.role);
    const trust = resources[id]!.Properties.AssumeRolePolicyDocument.Statement as Json[];
    expect(trust).toHaveLength(1);
    expect(flat(trust[0]!.Principal)).toContain(':root');
    const statements = statementsOfRole(id);
    expect(statements.flatMap((st) => list<string>(st.Action))).toEqual(['execute-api:Invoke']);
    const tails = list(statements[0]!.Resource).map((r) => {
      const parts = (r as Json)['Fn::Join'][1] as unknown[];
      return parts[parts.length - 1] as string;
    });
    expect(tails.sort()).toEqual(CATALOG_ROUTES.map((r) => `/*/${r.method}${r.path.replace(/\{[^}]+\}/g, '*')}`).sort());
  });

  it('tells the API function the role id of every host role and of the operator role (CALLER_ROLES)', () => {
    const env = resources[logicalId(s.stack.functions.api)]!.Properties.Environment.Variables as Json;
    const text = flat(env.CALLER_ROLES);
    expect(text).toContain(flat({ 'Fn::GetAtt': [logicalId(s.stack.operatorAccess.role), 'RoleId'] }));
    for (const [host, role] of s.stack.agentAccess.roles) {
      expect(text).toContain(flat({ 'Fn::GetAtt': [logicalId(role), 'RoleId'] }));
      expect(text).toContain(`\\"hostId\\":\\"${host}\\"`);
    }
    for (const name of ['indexer', 'verify', 'prune', 'freshness'] as const) {
      expect(resources[logicalId(s.stack.functions.all[name])]!.Properties.Environment.Variables.CALLER_ROLES).toBeUndefined();
    }
  });

  it('gives no other principal s3:DeleteObject than the api and prune functions', () => {
    const deleters = new Set<string>();
    for (const [, p] of ofType('AWS::IAM::Policy')) {
      for (const st of p.Properties.PolicyDocument.Statement as Json[]) {
        if (list<string>(st.Action).some((a) => a.startsWith('s3:Delete'))) {
          for (const r of p.Properties.Roles as Json[]) deleters.add(r.Ref);
        }
      }
    }
    const f = s.stack.functions;
    expect([...deleters].sort()).toEqual([logicalId(f.api.role!), logicalId(f.prune.role!)].sort());
  });

  it('lets the readers (indexer, verify, api) list the bucket so a missing key is a 404, not a 403', () => {
    const f = s.stack.functions;
    for (const fn of [f.indexer, f.verify, f.api]) {
      const st = statementsOfRole(logicalId(fn.role!)).filter((x) => list(x.Action).includes('s3:ListBucket'));
      expect(st.map((x) => x.Resource)).toEqual([{ 'Fn::GetAtt': [backupBucketId(), 'Arn'] }]);
    }
    for (const fn of [f.prune, f.freshness]) {
      expect(statementsOfRole(logicalId(fn.role!)).some((x) => list(x.Action).includes('s3:ListBucket'))).toBe(false);
    }
  });

  it('scopes DynamoDB access to the table and its named indexes (no index/*)', () => {
    for (const [, p] of ofType('AWS::IAM::Policy')) {
      for (const st of p.Properties.PolicyDocument.Statement as Json[]) {
        if (!list<string>(st.Action).some((a) => a.startsWith('dynamodb:'))) continue;
        const res = list(st.Resource).map(flat);
        expect(res.some((r) => r.includes('*'))).toBe(false);
        expect(res).toHaveLength(1 + catalogTableDefinition().globalSecondaryIndexes.length);
      }
    }
  });

  it('gives functions no managed policies (each writes only to its own log group)', () => {
    for (const fn of Object.values(s.stack.functions.all)) {
      const roleId = logicalId(fn.role!);
      expect(resources[roleId]!.Properties.ManagedPolicyArns).toBeUndefined();
      const logs = statementsOfRole(roleId).filter((x) => list<string>(x.Action).some((a) => a.startsWith('logs:')));
      expect(logs).toHaveLength(1);
      expect(logs[0]!.Resource).toEqual({ 'Fn::GetAtt': [logicalId(fn.logGroup), 'Arn'] });
    }
  });
});

describe('CatalogApi', () => {
  it('has exactly the catalogue routes, each with AWS_IAM authorization', () => {
    const routes = ofType('AWS::ApiGatewayV2::Route').map(([, r]) => r.Properties);
    expect(routes.map((r) => r.RouteKey).sort()).toEqual(CATALOG_ROUTES.map((r) => `${r.method} ${r.path}`).sort());
    for (const r of routes) expect(r.AuthorizationType).toBe('AWS_IAM');
  });

  it('deploys every route the API function answers, and no other', () => {
    const id = '01234567-89ab-4def-8123-456789abcdef';
    const deployed = CATALOG_ROUTES.map((r) => ({ method: String(r.method), path: r.path.replace(/\{[^}]+\}/g, id) }));
    for (const r of apiRoutes()) {
      expect(deployed.some((d) => d.method === r.method && r.pattern.test(d.path)), `${r.method} ${r.pattern}`).toBe(true);
    }
    for (const d of deployed) expect(apiRoutes().some((r) => r.method === d.method && r.pattern.test(d.path)), `${d.method} ${d.path}`).toBe(true);
  });

  it('uses one Lambda proxy integration with payload format 2.0', () => {
    const integrations = ofType('AWS::ApiGatewayV2::Integration');
    expect(integrations).toHaveLength(1);
    expect(integrations[0]![1].Properties).toMatchObject({ IntegrationType: 'AWS_PROXY', PayloadFormatVersion: '2.0' });
  });

  it('has an auto-deployed $default stage with access logs and throttling', () => {
    s.template.hasResourceProperties('AWS::ApiGatewayV2::Stage', {
      StageName: '$default',
      AutoDeploy: true,
      AccessLogSettings: { DestinationArn: Match.anyValue(), Format: Match.stringLikeRegexp('requestId') },
      DefaultRouteSettings: { ThrottlingRateLimit: 50, ThrottlingBurstLimit: 100 },
    });
  });
});

describe('Schedules', () => {
  it('runs verify, prune and the freshness check on EventBridge schedules', () => {
    const f = s.stack.functions;
    const targets = new Map<string, string>();
    for (const [, r] of ofType('AWS::Events::Rule')) {
      expect(r.Properties.State).toBe('ENABLED');
      for (const t of r.Properties.Targets as Json[]) targets.set(t.Arn['Fn::GetAtt'][0], r.Properties.ScheduleExpression);
    }
    expect(targets.get(logicalId(f.verify))).toMatch(/^cron\(/);
    expect(targets.get(logicalId(f.prune))).toMatch(/^cron\(/);
    expect(targets.get(logicalId(f.freshness))).toBe('rate(15 minutes)');
  });
});

describe('Alarms', () => {
  const alarms = (): Json[] => ofType('AWS::CloudWatch::Alarm').map(([, a]) => a.Properties);
  const topicRef = (): Json => ({ Ref: logicalId(s.stack.alarms.topic) });

  it('alarms on indexer errors', () => {
    const a = alarms().find((x) => x.MetricName === 'Errors' && flat(x.Dimensions).includes(logicalId(s.stack.functions.indexer)));
    expect(a).toMatchObject({ Namespace: 'AWS/Lambda', Statistic: 'Sum', Threshold: 1 });
    expect(a!.AlarmActions).toEqual([topicRef()]);
  });

  it('alarms on DLQ depth', () => {
    const a = alarms().find((x) => x.MetricName === 'ApproximateNumberOfMessagesVisible');
    expect(a).toMatchObject({ Namespace: 'AWS/SQS', Threshold: 1 });
    expect(flat(a!.Dimensions)).toContain(logicalId(s.stack.functions.indexerDlq));
    expect(a!.AlarmActions).toEqual([topicRef()]);
  });

  it('has a freshness alarm per host on the metric lambda/freshness.ts publishes', () => {
    for (const host of ['pve1', 'pve-2']) {
      const a = alarms().find((x) => x.MetricName === 'ArchivesLastCreatedAgeHours' && flat(x.Dimensions).includes(`"${host}"`));
      expect(a).toMatchObject({
        Namespace: 'Cowstream',
        Dimensions: [{ Name: 'HostId', Value: host }],
        Threshold: 26,
        ComparisonOperator: 'GreaterThanThreshold',
        TreatMissingData: 'breaching',
        Period: 3600,
      });
      expect(a!.AlarmActions).toEqual([topicRef()]);
    }
  });

  it('e-mails the alarm topic to alarmEmail', () => {
    s.template.hasResourceProperties('AWS::SNS::Subscription', {
      Protocol: 'email',
      Endpoint: 'ops@example.com',
      TopicArn: topicRef(),
    });
  });
});

describe('outputs', () => {
  it('exports bucket name, region, API URL and one role ARN per host', () => {
    const outputs = s.template.toJSON().Outputs as Json;
    expect(outputs.BucketName.Value).toEqual({ Ref: backupBucketId() });
    expect(outputs.Region.Value).toEqual({ Ref: 'AWS::Region' });
    expect(flat(outputs.ApiUrl.Value)).toContain(logicalId(s.stack.api.httpApi));
    for (const [host, role] of s.stack.agentAccess.roles) {
      const key = `AgentRoleArn${host.replace(/[^A-Za-z0-9]/g, '')}`;
      expect(outputs[key].Value).toEqual({ 'Fn::GetAtt': [logicalId(role), 'Arn'] });
      expect(outputs[key].Description).toContain(`"${host}"`);
    }
    expect(outputs.OperatorRoleArn.Value).toEqual({ 'Fn::GetAtt': [logicalId(s.stack.operatorAccess.role), 'Arn'] });
  });
});

describe('cdk-nag AwsSolutions', () => {
  it('has zero unacknowledged findings (errors or warnings)', () => {
    expect(nagFindings(s.app)).toEqual([]);
  });

  it('acknowledges only findings that really occur, each with a reason', () => {
    const raw = rawNagFindings(s.app);
    const acks = acknowledgements(s.app);
    expect(acks.length).toBeGreaterThan(0);
    for (const ack of acks) {
      expect(ack.reason.length, `${ack.id} at ${ack.path}`).toBeGreaterThanOrEqual(40);
      const hit = raw.some((f) => f.rule === ack.id && f.paths.some((p) => p === ack.path || p.startsWith(`${ack.path}/`)));
      expect(hit, `stale acknowledgement ${ack.id} at ${ack.path}`).toBe(true);
    }
  });

  it('does flag a non-compliant resource (the checker is live)', () => {
    const app = new App();
    const stack = new Stack(app, 'Bad');
    new s3.Bucket(stack, 'Open');
    const rules = nagFindings(app).map((f) => f.rule);
    expect(rules).toEqual(expect.arrayContaining(['AwsSolutions-S1', 'AwsSolutions-S10']));
  });
});
