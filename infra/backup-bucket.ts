/**
 * The archive bucket: private, TLS-only, encrypted, versioned, optionally
 * Object-Locked, with lifecycle rules that keep costs bounded, and
 * ObjectCreated/ObjectRemoved notifications for `archives/` to the indexer.
 * The bucket (and its access-log bucket) are RETAINed: `cdk destroy` must
 * never delete backups.
 */
import { Duration, RemovalPolicy } from 'aws-cdk-lib';
import * as kms from 'aws-cdk-lib/aws-kms';
import type * as lambda from 'aws-cdk-lib/aws-lambda';
import * as s3 from 'aws-cdk-lib/aws-s3';
import * as s3n from 'aws-cdk-lib/aws-s3-notifications';
import { Construct } from 'constructs';
import type { ObjectLockConfig } from './config.js';
import { ARCHIVES_PREFIX } from './layout.js';

export interface BackupBucketProps {
  objectLock: ObjectLockConfig | null;
  /** SSE-KMS with this key when given, SSE-S3 otherwise. */
  kmsKeyArn: string | null;
  /** Days before archives move to STANDARD_IA (30 is S3's minimum for IA). */
  infrequentAccessAfterDays?: number;
  /** Days a replaced/deleted (noncurrent) version is kept before expiry. */
  noncurrentVersionDays?: number;
}

export class BackupBucket extends Construct {
  readonly bucket: s3.Bucket;
  readonly accessLogs: s3.Bucket;
  readonly encryptionKey: kms.IKey | undefined;

  constructor(scope: Construct, id: string, props: BackupBucketProps) {
    super(scope, id);

    // Server access logs are the audit trail of who read/wrote which archive
    // (cdk-nag AwsSolutions-S1; nag accepts the destination bucket itself
    // without logging). Log delivery only supports SSE-S3 targets.
    this.accessLogs = new s3.Bucket(this, 'AccessLogs', {
      blockPublicAccess: s3.BlockPublicAccess.BLOCK_ALL,
      enforceSSL: true,
      encryption: s3.BucketEncryption.S3_MANAGED,
      // objectOwnership left to CDK: with @aws-cdk/aws-s3:serverAccessLogsUseBucketPolicy
      // (cdk.json) log delivery is granted by bucket policy and ACLs stay
      // disabled; without the flag CDK needs ObjectWriter + the log-delivery ACL.
      removalPolicy: RemovalPolicy.RETAIN,
      lifecycleRules: [{ id: 'expire-access-logs', expiration: Duration.days(365) }],
    });
    this.encryptionKey = props.kmsKeyArn ? kms.Key.fromKeyArn(this, 'Key', props.kmsKeyArn) : undefined;
    const encryption = this.encryptionKey
      ? { encryption: s3.BucketEncryption.KMS, encryptionKey: this.encryptionKey, bucketKeyEnabled: true }
      : { encryption: s3.BucketEncryption.S3_MANAGED };

    const lock = props.objectLock
      ? {
          objectLockEnabled: true,
          objectLockDefaultRetention:
            props.objectLock.mode === 'COMPLIANCE'
              ? s3.ObjectLockRetention.compliance(Duration.days(props.objectLock.days))
              : s3.ObjectLockRetention.governance(Duration.days(props.objectLock.days)),
        }
      : {};

    this.bucket = new s3.Bucket(this, 'Bucket', {
      blockPublicAccess: s3.BlockPublicAccess.BLOCK_ALL,
      enforceSSL: true,
      ...encryption,
      versioned: true,
      ...lock,
      objectOwnership: s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
      removalPolicy: RemovalPolicy.RETAIN,
      serverAccessLogsBucket: this.accessLogs,
      serverAccessLogsPrefix: 'backup-bucket/',
      lifecycleRules: [
        {
          // A killed agent leaves parts behind that are billed but invisible;
          // an archive upload never legitimately takes 3 days.
          id: 'abort-incomplete-multipart-uploads',
          abortIncompleteMultipartUploadAfter: Duration.days(3),
        },
        {
          id: 'archives-to-infrequent-access',
          prefix: ARCHIVES_PREFIX,
          transitions: [
            {
              storageClass: s3.StorageClass.INFREQUENT_ACCESS,
              transitionAfter: Duration.days(props.infrequentAccessAfterDays ?? 30),
            },
          ],
        },
        {
          // Prune deletes create delete markers in a versioned bucket; the
          // old version stays restorable this long, then is expired (Object
          // Lock, when on, still holds locked versions until retain-until).
          id: 'expire-noncurrent-versions',
          noncurrentVersionExpiration: Duration.days(props.noncurrentVersionDays ?? 30),
        },
        { id: 'remove-expired-delete-markers', expiredObjectDeleteMarker: true },
      ],
    });
  }

  /** ObjectCreated/ObjectRemoved under `archives/` → the indexer. */
  notifyIndexer(indexer: lambda.IFunction): void {
    const dest = new s3n.LambdaDestination(indexer);
    const filter: s3.NotificationKeyFilter = { prefix: ARCHIVES_PREFIX };
    this.bucket.addEventNotification(s3.EventType.OBJECT_CREATED, dest, filter);
    this.bucket.addEventNotification(s3.EventType.OBJECT_REMOVED, dest, filter);
  }
}
