/**
 * Synthesizes CowstreamStack for a test file: cdk.json's feature flags plus
 * the given context, into a temp cloud-assembly directory. Bundling is real
 * (local esbuild) unless `bundle: false`, which uses CDK's own switch
 * (`aws:cdk:bundling-stacks: []`, what `cdk list` does) for files that only
 * assert non-Lambda resources.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { App, Validations } from 'aws-cdk-lib';
import { Template } from 'aws-cdk-lib/assertions';
import { AwsSolutionsChecks } from 'cdk-nag';
import type { IConstruct } from 'constructs';
import { buildApp } from '../../../infra/app.js';
import { REPO_ROOT } from '../../../infra/catalog-functions.js';
import type { CowstreamStack } from '../../../infra/stack.js';

export interface Synthesized {
  app: App;
  stack: CowstreamStack;
  template: Template;
  outdir: string;
  cleanup(): void;
}

export function cdkJsonContext(): Record<string, unknown> {
  return (JSON.parse(readFileSync(join(REPO_ROOT, 'cdk.json'), 'utf8')) as { context: Record<string, unknown> }).context;
}

export function synthesize(context: Record<string, unknown>, opts: { bundle: boolean }): Synthesized {
  const outdir = mkdtempSync(join(tmpdir(), 'cowstream-cdk-'));
  const app = new App({
    outdir,
    // CDK's built-in CloudFormation schema validation of the whole template
    // takes >10 s on a loaded 2-core box; `cdk synth` in .ci/run keeps it on.
    // These tests assert the properties that matter one by one.
    builtinCloudFormationValidation: false,
    context: {
      ...cdkJsonContext(),
      ...(opts.bundle ? {} : { 'aws:cdk:bundling-stacks': [] }),
      ...context,
    },
  });
  // nag runs explicitly in the tests (validateScope) so a failure shows the findings.
  const { stack } = buildApp(app, { nag: false });
  const template = Template.fromStack(stack);
  return { app, stack, template, outdir, cleanup: () => rmSync(outdir, { recursive: true, force: true }) };
}

export interface NagFinding {
  rule: string;
  severity: string;
  paths: string[];
}

/** AwsSolutions findings that are not acknowledged (should be none). */
export function nagFindings(scope: IConstruct): NagFinding[] {
  const report = new AwsSolutionsChecks().validateScope(scope);
  return report.violations.map((v) => ({
    rule: v.ruleName,
    severity: v.severity ?? 'error',
    paths: v.violatingResources.map((r) => r.constructPath ?? '?'),
  }));
}

/** Every finding, ignoring acknowledgements: to prove each acknowledgement is needed. */
export function rawNagFindings(scope: IConstruct): NagFinding[] {
  const pack = new AwsSolutionsChecks();
  // isAcknowledged is private in cdk-nag; shadow it on this instance only.
  (pack as unknown as { isAcknowledged: () => boolean }).isAcknowledged = () => false;
  return pack.validateScope(scope).violations.map((v) => ({
    rule: v.ruleName,
    severity: v.severity ?? 'error',
    paths: v.violatingResources.map((r) => r.constructPath ?? '?'),
  }));
}

export interface Acknowledgement {
  path: string;
  id: string;
  reason: string;
}

export function acknowledgements(scope: IConstruct): Acknowledgement[] {
  const out: Acknowledgement[] = [];
  for (const c of scope.node.findAll()) {
    for (const m of c.node.metadata) {
      if (m.type !== Validations.ACKNOWLEDGED_RULES_METADATA_KEY) continue;
      for (const [id, reason] of Object.entries(m.data as Record<string, unknown>)) {
        out.push({ path: c.node.path, id: id.replace(/^annotation::/i, ''), reason: String(reason) });
      }
    }
  }
  return out;
}

/** CloudFormation logical id of an L2 construct (its default child) or an L1. */
export function logicalIdOf(stack: CowstreamStack, construct: IConstruct): string {
  const l1 = (construct.node.defaultChild ?? construct) as unknown as { logicalId: string };
  return stack.resolve(l1.logicalId) as string;
}
