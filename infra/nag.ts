/**
 * cdk-nag v3 acknowledgements (`Validations.of(x).acknowledge`). Every
 * acknowledgement names one rule or one finding and carries a reason; there
 * are no blanket, stack-wide suppressions. IAM5 (wildcard) findings are
 * acknowledged per resource string, computed the same way cdk-nag flattens
 * CloudFormation references, so a new, unreviewed wildcard still fails.
 */
import { Stack, Validations } from 'aws-cdk-lib';
import type { PolicyStatement } from 'aws-cdk-lib/aws-iam';
import type { IConstruct } from 'constructs';

export interface NagAcknowledgement {
  id: string;
  reason: string;
}

/** Acknowledges rule `id` (e.g. `AwsSolutions-S1`) on `scope` and its children. */
export function acknowledge(scope: IConstruct, id: string, reason: string): void {
  if (reason.trim().length < 20) throw new Error(`nag acknowledgement ${id} needs a real reason`);
  Validations.of(scope).acknowledge({ id, reason });
}

/**
 * Mirrors cdk-nag's flattenCfnReference: `{Fn::GetAtt:[L,'Arn']}` → `<L.Arn>`,
 * `{Ref:X}` → `<X>`, `Fn::Join` joined, `${x}` → `<x>`.
 */
export function flattenCfnReference(node: unknown): string {
  if (node === undefined) return '';
  if (typeof node === 'string') return node.replace(/\$\{/g, '<').replace(/}/g, '>');
  if (typeof node === 'object' && node !== null) {
    const o = node as Record<string, unknown>;
    if (o['Fn::Join']) {
      const [delim, items] = o['Fn::Join'] as [string, unknown[]];
      return items.map(flattenCfnReference).join(delim);
    }
    if (o['Fn::Sub']) return flattenCfnReference(o['Fn::Sub']);
    if (o['Fn::GetAtt']) {
      const [res, attr] = o['Fn::GetAtt'] as [unknown, unknown];
      return `<${flattenCfnReference(res)}.${flattenCfnReference(attr)}>`;
    }
    if (o['Fn::ImportValue']) return flattenCfnReference(o['Fn::ImportValue']);
    if (o['Ref']) return `<${flattenCfnReference(o['Ref'])}>`;
  }
  return JSON.stringify(node);
}

/**
 * Acknowledges the AwsSolutions-IAM5 findings that `statement` produces
 * (each wildcard action and each wildcard resource) on `principalScope`
 * (the role whose policy holds the statement).
 */
export function acknowledgeWildcards(principalScope: IConstruct, statement: PolicyStatement, reason: string): void {
  const stack = Stack.of(principalScope);
  const json = stack.resolve(statement.toStatementJson()) as { Action?: unknown; Resource?: unknown };
  const list = (v: unknown): unknown[] => (v === undefined ? [] : Array.isArray(v) ? v : [v]);
  for (const action of list(json.Action)) {
    if (typeof action === 'string' && action.includes('*')) acknowledge(principalScope, `AwsSolutions-IAM5[Action::${action}]`, reason);
  }
  for (const resource of list(json.Resource)) {
    const flat = flattenCfnReference(resource);
    if (flat.includes('*')) acknowledge(principalScope, `AwsSolutions-IAM5[Resource::${flat}]`, reason);
  }
}
