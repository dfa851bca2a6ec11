/**
 * CDK entry point (`"app": "npx tsx cdk/app.ts"` in cdk.json). Context keys:
 * hosts, objectLock, kmsKey, retention, alarmEmail, freshnessHours,
 * verifyByteBudget, pruneDryRun, stackName — see docs/deploy-aws.md.
 */
import { App } from 'aws-cdk-lib';
import { synthesizeForCli } from '../infra/app.js';

const code = synthesizeForCli(new App());
// Don't reset a failure exit code that CDK's validation report may have set.
if (code !== 0) process.exitCode = code;
