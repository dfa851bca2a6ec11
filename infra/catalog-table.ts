/**
 * The catalogue's single DynamoDB table. Keys and GSIs come from
 * `catalogTableDefinition()` (src/catalog/table.ts), the same definition the
 * embedded catalogue creates in dynalite, so AWS and local never drift.
 */
import { RemovalPolicy } from 'aws-cdk-lib';
import * as dynamodb from 'aws-cdk-lib/aws-dynamodb';
import { Construct } from 'constructs';
import { catalogTableDefinition } from '../src/catalog/table.js';

export class CatalogTable extends Construct {
  readonly table: dynamodb.Table;
  /** Index names, for IAM statements that name each index instead of `index/*`. */
  readonly indexNames: string[];

  constructor(scope: Construct, id: string) {
    super(scope, id);
    const def = catalogTableDefinition();
    this.table = new dynamodb.Table(this, 'Table', {
      partitionKey: { name: def.partitionKey, type: dynamodb.AttributeType.STRING },
      sortKey: { name: def.sortKey, type: dynamodb.AttributeType.STRING },
      billingMode: dynamodb.BillingMode.PAY_PER_REQUEST,
      pointInTimeRecoverySpecification: { pointInTimeRecoveryEnabled: true },
      deletionProtection: true,
      // The catalogue can be rebuilt by re-indexing the bucket, but restore
      // jobs and verify history can't: keep it when the stack goes away.
      removalPolicy: RemovalPolicy.RETAIN,
    });
    for (const gsi of def.globalSecondaryIndexes) {
      this.table.addGlobalSecondaryIndex({
        indexName: gsi.indexName,
        partitionKey: { name: gsi.partitionKey, type: dynamodb.AttributeType.STRING },
        sortKey: { name: gsi.sortKey, type: dynamodb.AttributeType.STRING },
        projectionType: dynamodb.ProjectionType.ALL,
      });
    }
    this.indexNames = def.globalSecondaryIndexes.map((g) => g.indexName);
  }

  /** ARNs of the table and each named index (no `index/*` wildcard). */
  resourceArns(): string[] {
    return [this.table.tableArn, ...this.indexNames.map((n) => `${this.table.tableArn}/index/${n}`)];
  }
}
