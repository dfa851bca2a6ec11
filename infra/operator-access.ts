/**
 * The operator role: what the CLI of an administrator assumes to use the
 * catalogue (`role_arn = <OperatorRoleArn output>` in an AWS profile). It
 * may invoke every catalogue route; lambda/api.ts lets it read everything,
 * request and cancel restores and exports and delete archive records, but not claim or
 * report on restore or export jobs (that is a host agent's work). It gets no direct
 * S3 or DynamoDB access: everything goes through the API.
 *
 * The API function learns the role ids of this role and of every host role
 * from CALLER_ROLES (callerRolesEnvironment) and refuses any other caller,
 * so an IAM identity that happens to be allowed execute-api:Invoke (an
 * administrator's own user, say) still has to assume this role.
 *
 * Trust: like the agent roles, the account root principal (identities of
 * this account that are themselves allowed sts:AssumeRole on it).
 */
import { CfnOutput, Stack } from 'aws-cdk-lib';
import * as iam from 'aws-cdk-lib/aws-iam';
import { Construct } from 'constructs';
import type { CallerRoles } from '../src/catalog/access.js';
import { CATALOG_ROUTES, type CatalogApi } from './catalog-api.js';
import { acknowledgeWildcards } from './nag.js';

export interface OperatorAccessProps {
  api: CatalogApi;
}

export class OperatorAccess extends Construct {
  readonly role: iam.Role;

  constructor(scope: Construct, id: string, props: OperatorAccessProps) {
    super(scope, id);
    this.role = new iam.Role(this, 'Operator', {
      assumedBy: new iam.AccountRootPrincipal(),
      description: 'cowstream operator: reads the catalogue, requests and cancels restores and exports, deletes archives',
    });
    const invoke = new iam.PolicyStatement({
      sid: 'InvokeCatalogue',
      actions: ['execute-api:Invoke'],
      resources: CATALOG_ROUTES.map((r) => props.api.invokeArn(r.method, r.path.replace(/\{[^}]+\}/g, '*'))),
    });
    this.role.addToPolicy(invoke);
    acknowledgeWildcards(this.role, invoke, 'Archive, restore and host ids are chosen at run time; the wildcards only fill the {id} segments of the catalogue routes.');
    new CfnOutput(scope, 'OperatorRoleArn', {
      value: this.role.roleArn,
      description: 'IAM role for operators (role_arn of the AWS profile the CLI uses for the catalogue)',
    });
  }
}

/** CALLER_ROLES for the API function: role ids (tokens until deploy) of the operator and of each host role. */
export function callerRolesEnvironment(scope: Construct, operator: iam.Role, hosts: ReadonlyMap<string, iam.Role>): string {
  const value: CallerRoles = {
    operators: [operator.roleId],
    hosts: [...hosts].map(([hostId, role]) => ({ roleId: role.roleId, hostId })),
  };
  return Stack.of(scope).toJsonString(value);
}
