/**
 * One IAM role per backup host. The role is what an agent's AWS profile
 * assumes (`role_arn = <output>`), so a compromised host can:
 *  - write archives only under its own prefix `archives/<host>/` (PutObject;
 *    multipart: CreateMultipartUpload/UploadPart/CompleteMultipartUpload are
 *    all authorised as s3:PutObject, plus AbortMultipartUpload and
 *    ListMultipartUploadParts);
 *  - read archives and restore plans for restores (GetObject) and list them;
 *  - never delete or overwrite history: no s3:DeleteObject(Version), and the
 *    bucket is versioned (an overwrite only adds a version; Object Lock,
 *    when enabled, also stops version deletion);
 *  - call only the agent routes of the catalogue API, and act only on its own
 *    host's restore jobs (IAM here, the caller's role id in lambda/api.ts).
 *
 * Trust: the account root principal, i.e. any IAM identity of this account
 * that is itself allowed sts:AssumeRole on the role (an on-prem host's IAM
 * user or IAM Roles Anywhere profile, an EC2 instance role...). Nothing is
 * trusted outside the account. Narrow it per site if a host has a fixed
 * principal.
 */
import { CfnOutput } from 'aws-cdk-lib';
import * as iam from 'aws-cdk-lib/aws-iam';
import type * as kms from 'aws-cdk-lib/aws-kms';
import type * as s3 from 'aws-cdk-lib/aws-s3';
import { Construct } from 'constructs';
import type { CatalogApi } from './catalog-api.js';
import { hostOutputSuffix } from './config.js';
import { ARCHIVES_PREFIX, RESTORE_PLANS_PREFIX, hostArchivePrefix } from './layout.js';
import { acknowledgeWildcards } from './nag.js';

export interface AgentAccessProps {
  hosts: string[];
  bucket: s3.IBucket;
  encryptionKey: kms.IKey | undefined;
  api: CatalogApi;
}

/** S3 actions an agent may use on its own prefix. */
export const AGENT_WRITE_ACTIONS = ['s3:PutObject', 's3:AbortMultipartUpload', 's3:ListMultipartUploadParts'];

export class AgentAccess extends Construct {
  readonly roles = new Map<string, iam.Role>();

  constructor(scope: Construct, id: string, props: AgentAccessProps) {
    super(scope, id);
    for (const host of props.hosts) {
      const role = this.makeRole(host, props);
      this.roles.set(host, role);
      new CfnOutput(scope, `AgentRoleArn${hostOutputSuffix(host)}`, {
        value: role.roleArn,
        description: `IAM role for the agent of host "${host}" (role_arn of its AWS profile)`,
      });
    }
  }

  private makeRole(host: string, props: AgentAccessProps): iam.Role {
    const { bucket, encryptionKey, api } = props;
    const role = new iam.Role(this, `Host-${host}`, {
      assumedBy: new iam.AccountRootPrincipal(),
      description: `cowstream agent of host ${host}`.slice(0, 1000),
    });

    const write = new iam.PolicyStatement({
      sid: 'WriteOwnArchives',
      actions: AGENT_WRITE_ACTIONS,
      resources: [bucket.arnForObjects(`${hostArchivePrefix(host)}*`)],
    });
    const read = new iam.PolicyStatement({
      sid: 'ReadForRestores',
      actions: ['s3:GetObject'],
      // Any host's archives: restoring a VM onto another host is a normal
      // migration path; the catalogue and allowedDirs decide what is written.
      resources: [bucket.arnForObjects(`${ARCHIVES_PREFIX}*`), bucket.arnForObjects(`${RESTORE_PLANS_PREFIX}*`)],
    });
    const list = new iam.PolicyStatement({
      sid: 'ListArchivesAndPlans',
      actions: ['s3:ListBucket'],
      resources: [bucket.bucketArn],
      conditions: { StringLike: { 's3:prefix': [`${ARCHIVES_PREFIX}*`, `${RESTORE_PLANS_PREFIX}*`] } },
    });
    // IAM sees method + path only: which host a restore id belongs to can't
    // be conditioned on, so IAM lets every agent role reach /restores/* and /exports/*;
    // lambda/api.ts then maps the caller's role id (CALLER_ROLES) to its host
    // and answers 403 to another host's jobs (src/catalog/access.ts). The
    // host-scoped listing is pinned to this host here as well.
    const invoke = new iam.PolicyStatement({
      sid: 'InvokeAgentRoutes',
      actions: ['execute-api:Invoke'],
      resources: [
        api.invokeArn('GET', `/hosts/${host}/restores`),
        api.invokeArn('GET', '/restores/*'),
        api.invokeArn('POST', '/restores/*/claim'),
        api.invokeArn('POST', '/restores/*/progress'),
        api.invokeArn('POST', '/restores/*/complete'),
        // Export jobs: the same claim / report / complete cycle (src/agent/export-jobs.ts).
        api.invokeArn('GET', `/hosts/${host}/exports`),
        api.invokeArn('GET', '/exports/*'),
        api.invokeArn('POST', '/exports/*/claim'),
        api.invokeArn('POST', '/exports/*/progress'),
        api.invokeArn('POST', '/exports/*/complete'),
      ],
    });
    const statements = [write, read, list, invoke];
    if (encryptionKey) {
      statements.push(
        new iam.PolicyStatement({
          sid: 'UseBucketKey',
          // GenerateDataKey for uploads; Decrypt for multipart completion and restores.
          actions: ['kms:GenerateDataKey', 'kms:Decrypt'],
          resources: [encryptionKey.keyArn],
          conditions: { StringEquals: { 'kms:ViaService': `s3.${bucket.stack.region}.${bucket.stack.urlSuffix}` } },
        }),
      );
    }
    for (const s of statements) role.addToPolicy(s);

    acknowledgeWildcards(role, write, `Archive object names (UUIDs) are chosen at backup time; the wildcard is confined to this host's own prefix ${hostArchivePrefix(host)}.`);
    acknowledgeWildcards(role, read, 'Restores read archives (of any host, for migrations) and restore plans whose names are UUIDs created at run time; read-only.');
    acknowledgeWildcards(role, invoke, 'Restore ids are UUIDs created at run time; the wildcard only spans the agent routes GET /restores/{id} and POST /restores/{id}/claim|progress|complete.');
    return role;
  }
}
