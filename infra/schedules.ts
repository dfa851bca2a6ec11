/**
 * EventBridge schedules: verify (daily), prune (daily, after verify) and the
 * freshness check (every 15 minutes, so every 1-hour alarm period gets
 * several data points even if one run is late).
 */
import { Duration } from 'aws-cdk-lib';
import * as events from 'aws-cdk-lib/aws-events';
import * as targets from 'aws-cdk-lib/aws-events-targets';
import type * as lambda from 'aws-cdk-lib/aws-lambda';
import { Construct } from 'constructs';

export interface SchedulesProps {
  verify: lambda.IFunction;
  prune: lambda.IFunction;
  freshness: lambda.IFunction;
}

export class Schedules extends Construct {
  readonly verifyRule: events.Rule;
  readonly pruneRule: events.Rule;
  readonly freshnessRule: events.Rule;

  constructor(scope: Construct, id: string, props: SchedulesProps) {
    super(scope, id);
    const target = (fn: lambda.IFunction): targets.LambdaFunction =>
      new targets.LambdaFunction(fn, { retryAttempts: 2, maxEventAge: Duration.hours(1) });

    this.verifyRule = new events.Rule(this, 'Verify', {
      description: 'cowstream: verify the least-recently-verified archives (byte budget per run)',
      schedule: events.Schedule.cron({ minute: '15', hour: '2' }),
      targets: [target(props.verify)],
    });
    // After verify, so a prune never races the day's verification of an archive it deletes.
    this.pruneRule = new events.Rule(this, 'Prune', {
      description: 'cowstream: apply the retention policy (chain-aware)',
      schedule: events.Schedule.cron({ minute: '45', hour: '3' }),
      targets: [target(props.prune)],
    });
    this.freshnessRule = new events.Rule(this, 'Freshness', {
      description: 'cowstream: publish hours since each host\'s newest archive',
      schedule: events.Schedule.rate(Duration.minutes(15)),
      targets: [target(props.freshness)],
    });
  }
}
