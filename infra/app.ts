/**
 * Builds the CDK app from context: validates the context (InfraConfigError
 * on anything bad), creates CowstreamStack and registers cdk-nag's
 * AwsSolutions pack as a synthesis validation plugin, so any unacknowledged
 * finding fails `cdk synth`/`cdk deploy`.
 */
import { App, Validations, type Environment } from 'aws-cdk-lib';
import { AwsSolutionsChecks } from 'cdk-nag';
import { CowstreamError } from '../src/errors.js';
import { parseCowstreamConfig, type CowstreamConfig } from './config.js';
import { CowstreamStack } from './stack.js';

/**
 * Env-agnostic unless the CLI resolved an account and region (it sets
 * CDK_DEFAULT_* from the caller's credentials). Nothing in the stack needs
 * a lookup, so synthesis works offline without credentials.
 */
export function stackEnvironment(env: NodeJS.ProcessEnv = process.env): Environment | undefined {
  const account = env.CDK_DEFAULT_ACCOUNT;
  const region = env.CDK_DEFAULT_REGION;
  return account && region ? { account, region } : undefined;
}

export interface BuiltApp {
  app: App;
  stack: CowstreamStack;
  config: CowstreamConfig;
}

export function buildApp(app: App, options: { nag?: boolean; lambdaDir?: string } = {}): BuiltApp {
  const config = parseCowstreamConfig((key) => app.node.tryGetContext(key));
  const env = stackEnvironment();
  const stack = new CowstreamStack(app, config.stackName, {
    config,
    ...(env ? { env } : {}),
    ...(options.lambdaDir ? { lambdaDir: options.lambdaDir } : {}),
  });
  if (options.nag !== false) Validations.of(app).addPlugins(new AwsSolutionsChecks(app));
  return { app, stack, config };
}

/**
 * What cdk/app.ts runs: build and synthesize; a bad context value becomes
 * one line on stderr and exit code 2 (usage error) instead of a stack trace.
 */
export function synthesizeForCli(app: App, stderr: Pick<NodeJS.WriteStream, 'write'> = process.stderr): number {
  try {
    buildApp(app).app.synth();
    return 0;
  } catch (err) {
    if (err instanceof CowstreamError) {
      stderr.write(`cowstream: ${err.message}\n`);
      return 2;
    }
    throw err;
  }
}
