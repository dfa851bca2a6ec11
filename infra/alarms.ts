/**
 * CloudWatch alarms → one SNS topic (e-mailed to `alarmEmail` when given):
 *  - indexer errors (an archive that could not be indexed is invisible to restores);
 *  - indexer DLQ depth (async S3 events that failed after retries);
 *  - errors of the scheduled functions (verify, prune, freshness);
 *  - per host: no new archive for N hours (metric from lambda/freshness.ts).
 */
import { Duration } from 'aws-cdk-lib';
import * as cloudwatch from 'aws-cdk-lib/aws-cloudwatch';
import * as actions from 'aws-cdk-lib/aws-cloudwatch-actions';
import type * as lambda from 'aws-cdk-lib/aws-lambda';
import * as sns from 'aws-cdk-lib/aws-sns';
import * as subs from 'aws-cdk-lib/aws-sns-subscriptions';
import type * as sqs from 'aws-cdk-lib/aws-sqs';
import { Construct } from 'constructs';
import { hostOutputSuffix } from './config.js';
import { FRESHNESS_DIMENSION, FRESHNESS_METRIC, METRIC_NAMESPACE } from './layout.js';

export interface AlarmsProps {
  hosts: string[];
  freshnessHours: number;
  alarmEmail: string | null;
  indexer: lambda.IFunction;
  indexerDlq: sqs.IQueue;
  scheduled: Record<string, lambda.IFunction>;
}

export class Alarms extends Construct {
  readonly topic: sns.Topic;
  readonly indexerErrors: cloudwatch.Alarm;
  readonly dlqDepth: cloudwatch.Alarm;
  readonly functionErrors = new Map<string, cloudwatch.Alarm>();
  readonly freshness = new Map<string, cloudwatch.Alarm>();

  constructor(scope: Construct, id: string, props: AlarmsProps) {
    super(scope, id);
    this.topic = new sns.Topic(this, 'Topic', { displayName: 'cowstream alarms', enforceSSL: true });
    if (props.alarmEmail) this.topic.addSubscription(new subs.EmailSubscription(props.alarmEmail));
    const notify = new actions.SnsAction(this.topic);
    const wire = (alarm: cloudwatch.Alarm): cloudwatch.Alarm => {
      alarm.addAlarmAction(notify);
      alarm.addOkAction(notify);
      return alarm;
    };

    this.indexerErrors = wire(
      new cloudwatch.Alarm(this, 'IndexerErrors', {
        alarmDescription: 'cowstream indexer failed; new archives may be missing from the catalogue',
        metric: props.indexer.metricErrors({ period: Duration.minutes(5), statistic: cloudwatch.Stats.SUM }),
        threshold: 1,
        evaluationPeriods: 1,
        comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
        treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
      }),
    );

    this.dlqDepth = wire(
      new cloudwatch.Alarm(this, 'IndexerDlqDepth', {
        alarmDescription: 'S3 events the indexer gave up on are waiting in the DLQ (re-drive or re-index)',
        metric: props.indexerDlq.metricApproximateNumberOfMessagesVisible({
          period: Duration.minutes(5),
          statistic: cloudwatch.Stats.MAXIMUM,
        }),
        threshold: 1,
        evaluationPeriods: 1,
        comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
        treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
      }),
    );

    for (const [name, fn] of Object.entries(props.scheduled)) {
      const cap = name[0]!.toUpperCase() + name.slice(1);
      this.functionErrors.set(
        name,
        wire(
          new cloudwatch.Alarm(this, `${cap}Errors`, {
            alarmDescription: `cowstream ${name} function failed`,
            metric: fn.metricErrors({ period: Duration.hours(1), statistic: cloudwatch.Stats.SUM }),
            threshold: 1,
            evaluationPeriods: 1,
            comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
          }),
        ),
      );
    }

    for (const host of props.hosts) {
      const metric = new cloudwatch.Metric({
        namespace: METRIC_NAMESPACE,
        metricName: FRESHNESS_METRIC,
        dimensionsMap: { [FRESHNESS_DIMENSION]: host },
        // Minimum over the hour: alarm only if even the freshest reading is too old.
        statistic: cloudwatch.Stats.MINIMUM,
        period: Duration.hours(1),
      });
      this.freshness.set(
        host,
        wire(
          new cloudwatch.Alarm(this, `Freshness${hostOutputSuffix(host)}`, {
            alarmDescription: `cowstream: no new archive from host "${host}" for more than ${props.freshnessHours} hours`,
            metric,
            threshold: props.freshnessHours,
            evaluationPeriods: 1,
            comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
            // No data = the host never backed up, or the freshness check
            // itself stopped: both must page someone.
            treatMissingData: cloudwatch.TreatMissingData.BREACHING,
          }),
        ),
      );
    }
  }
}
