/**
 * Context variants of CowstreamStack: Object Lock, SSE-KMS, retention, no
 * hosts, no alarm e-mail. Lambda bundling is switched off here (CDK's
 * `aws:cdk:bundling-stacks: []`); stack.test.ts covers the bundles.
 */
import { Match } from 'aws-cdk-lib/assertions';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { IConstruct } from 'constructs';
import { logicalIdOf, nagFindings, synthesize, type Synthesized } from './synth-helper.js';

type Json = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

const KEY_ARN = 'arn:aws:kms:eu-central-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab';
const list = <T>(v: T | T[] | undefined): T[] => (v === undefined ? [] : Array.isArray(v) ? v : [v]);

function bucketProps(s: Synthesized): Json {
  const id = logicalIdOf(s.stack, s.stack.backupBucket.bucket);
  return (s.template.toJSON().Resources as Json)[id].Properties;
}

function roleStatements(s: Synthesized, role: IConstruct): Json[] {
  const roleId = logicalIdOf(s.stack, role);
  const out: Json[] = [];
  for (const r of Object.values(s.template.toJSON().Resources as Json)) {
    if (r.Type === 'AWS::IAM::Policy' && (r.Properties.Roles as Json[]).some((x) => x.Ref === roleId)) {
      out.push(...r.Properties.PolicyDocument.Statement);
    }
  }
  return out;
}

describe('governance lock + KMS + retention, one host, no e-mail', () => {
  let s: Synthesized;
  beforeAll(() => {
    s = synthesize(
      {
        hosts: ['pve1'],
        objectLock: 'governance:30',
        kmsKey: KEY_ARN,
        retention: 'keepLast=3,keepDaily=14',
        pruneDryRun: 'true',
      },
      { bundle: false },
    );
  }, 120_000);
  afterAll(() => s?.cleanup());

  it('enables Object Lock with a GOVERNANCE default retention of 30 days', () => {
    const p = bucketProps(s);
    expect(p.ObjectLockEnabled).toBe(true);
    expect(p.ObjectLockConfiguration).toEqual({
      ObjectLockEnabled: 'Enabled',
      Rule: { DefaultRetention: { Mode: 'GOVERNANCE', Days: 30 } },
    });
    expect(p.VersioningConfiguration).toEqual({ Status: 'Enabled' });
  });

  it('encrypts with the given KMS key and an S3 bucket key', () => {
    expect(bucketProps(s).BucketEncryption.ServerSideEncryptionConfiguration).toEqual([
      { BucketKeyEnabled: true, ServerSideEncryptionByDefault: { SSEAlgorithm: 'aws:kms', KMSMasterKeyID: KEY_ARN } },
    ]);
  });

  it('lets the agent use the key only through S3', () => {
    const st = roleStatements(s, s.stack.agentAccess.roles.get('pve1')!).find((x) => list<string>(x.Action).some((a) => a.startsWith('kms:')));
    expect(st).toBeDefined();
    expect(list<string>(st!.Action).sort()).toEqual(['kms:Decrypt', 'kms:GenerateDataKey']);
    expect(st!.Resource).toBe(KEY_ARN);
    expect(JSON.stringify(st!.Condition)).toContain('kms:ViaService');
  });

  it('gives readers Decrypt and the restore-plan writer GenerateDataKey, deleters nothing', () => {
    const kmsActions = (fn: keyof typeof s.stack.functions.all): string[] =>
      roleStatements(s, s.stack.functions.all[fn].role!)
        .flatMap((x) => list<string>(x.Action))
        .filter((a) => a.startsWith('kms:'))
        .sort();
    expect(kmsActions('indexer')).toEqual(['kms:Decrypt']);
    expect(kmsActions('verify')).toEqual(['kms:Decrypt']);
    expect(kmsActions('api')).toEqual(expect.arrayContaining(['kms:Decrypt', 'kms:GenerateDataKey']));
    expect(kmsActions('prune')).toEqual([]);
    expect(kmsActions('freshness')).toEqual([]);
  });

  it('passes the retention policy and dry-run flag to prune', () => {
    const fnId = logicalIdOf(s.stack, s.stack.functions.prune);
    const env = (s.template.toJSON().Resources as Json)[fnId].Properties.Environment.Variables;
    expect(JSON.parse(env.RETENTION)).toEqual({ keepLast: 3, keepDaily: 14 });
    expect(env.DRY_RUN).toBe('true');
  });

  it('creates no e-mail subscription without alarmEmail', () => {
    s.template.resourceCountIs('AWS::SNS::Subscription', 0);
    s.template.resourceCountIs('AWS::SNS::Topic', 1);
  });

  it('passes cdk-nag AwsSolutions with these options too', () => {
    expect(nagFindings(s.app)).toEqual([]);
  });
});

describe('compliance lock, no hosts', () => {
  let s: Synthesized;
  beforeAll(() => {
    s = synthesize({ objectLock: 'compliance:365', freshnessHours: '48' }, { bundle: false });
  }, 120_000);
  afterAll(() => s?.cleanup());

  it('enables Object Lock in COMPLIANCE mode', () => {
    expect(bucketProps(s).ObjectLockConfiguration).toEqual({
      ObjectLockEnabled: 'Enabled',
      Rule: { DefaultRetention: { Mode: 'COMPLIANCE', Days: 365 } },
    });
  });

  it('has no agent roles and no freshness alarms without hosts, but keeps the other alarms', () => {
    expect(s.stack.agentAccess.roles.size).toBe(0);
    const outputs = Object.keys(s.template.toJSON().Outputs as Json);
    expect(outputs.filter((o) => o.startsWith('AgentRoleArn'))).toEqual([]);
    expect(outputs).toEqual(expect.arrayContaining(['BucketName', 'ApiUrl', 'Region']));
    s.template.resourcePropertiesCountIs('AWS::CloudWatch::Alarm', { MetricName: 'ArchivesLastCreatedAgeHours' }, 0);
    s.template.hasResourceProperties('AWS::CloudWatch::Alarm', { MetricName: 'Errors', Namespace: 'AWS/Lambda' });
    s.template.hasResourceProperties('AWS::CloudWatch::Alarm', { MetricName: 'ApproximateNumberOfMessagesVisible' });
  });

  it('still serves the API with IAM auth on every route', () => {
    s.template.allResourcesProperties('AWS::ApiGatewayV2::Route', { AuthorizationType: 'AWS_IAM' });
    s.template.hasResourceProperties('AWS::ApiGatewayV2::Route', { RouteKey: Match.stringLikeRegexp('^GET /archives$') });
  });
});
