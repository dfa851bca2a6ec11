/**
 * Store flags shared by the commands that read archives (restore, verify,
 * uploads, snapshots, forget). Kept apart from store.ts so that loading them
 * does not load the embedded S3 server.
 */
import { resolve } from 'node:path';
import type { Command } from 'commander';
import { readKeyFile } from '../../codec/crypto.js';
import type { ArchiveContext } from '../../restore/locate.js';
import { createS3Client, storeConfigFromFlags, type StoreFlags } from '../../store/config.js';

/** Adds --bucket/--prefix/--endpoint/--region (env: COWSTREAM_S3_BUCKET, COWSTREAM_S3_PREFIX, AWS_*). */
export function addStoreOptions(cmd: Command): Command {
  return cmd
    .option('--bucket <name>', 'S3 bucket (default: $COWSTREAM_S3_BUCKET)')
    .option('--prefix <prefix>', 'key prefix inside the bucket (default: $COWSTREAM_S3_PREFIX or none)')
    .option('--endpoint <url>', 'S3 endpoint URL (default: $AWS_ENDPOINT_URL_S3, else AWS)')
    .option('--region <region>', 'AWS region (default: $AWS_REGION / profile)');
}

/** Store + client from flags/env; client is null when nothing is configured. */
export function archiveContextFromFlags(flags: StoreFlags): ArchiveContext {
  const store = storeConfigFromFlags(flags);
  if (store) return { store, client: createS3Client(store) };
  // No bucket, but s3:// URIs still work against the default AWS/env endpoint.
  const endpoint = flags.endpoint;
  const client = createS3Client({ bucket: 'unused', prefix: '', ...(endpoint ? { endpoint } : {}), ...(flags.region ? { region: flags.region } : {}) });
  return { store: null, client };
}

/** Loads a key file (exactly 32 bytes, as `cowstream key create` writes it). */
export async function loadKeyFile(path: string): Promise<Buffer> {
  return readKeyFile(resolve(path));
}
