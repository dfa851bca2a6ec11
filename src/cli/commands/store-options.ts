/**
 * Store flags shared by the commands that read archives (restore, verify,
 * uploads, snapshots, forget). Kept apart from store.ts, and the S3 client is
 * built on first use, so a local command loads neither the S3 SDK nor the
 * embedded server (docs/startup.md).
 */
import { resolve } from 'node:path';
import type { Command } from 'commander';
import { readKeyFile } from '../../codec/crypto.js';
import type { ArchiveContext } from '../../restore/locate.js';
import { storeConfigFromFlags, type StoreFlags } from '../../store/config.js';
import { embeddedS3CredentialsFromState } from '../embedded-auth.js';
import { storeFlagsWithState } from '../state-defaults.js';

/** Adds --bucket/--prefix/--endpoint/--region (env: COWSTREAM_S3_BUCKET, COWSTREAM_S3_PREFIX, AWS_*). */
export function addStoreOptions(cmd: Command): Command {
  return cmd
    .option('--bucket <name>', 'S3 bucket (default: $COWSTREAM_S3_BUCKET)')
    .option('--prefix <prefix>', 'key prefix inside the bucket (default: $COWSTREAM_S3_PREFIX or none)')
    .option('--endpoint <url>', 'S3 endpoint URL (default: $AWS_ENDPOINT_URL_S3, else AWS)')
    .option('--region <region>', 'AWS region (default: $AWS_REGION / profile)')
    .option('--state <dir>', "an agent's state directory: its endpoints.json gives the embedded store's endpoint/bucket/prefix, its credentials.json the keys (default: the local agent's, for its loopback store)");
}

/** Store flags completed from the state directory (state-defaults.ts), plus its embedded keys. */
export async function withStateCredentials(rawFlags: StoreFlags & { state?: string }): Promise<StoreFlags> {
  const flags = await storeFlagsWithState(rawFlags);
  const credentials = await embeddedS3CredentialsFromState(flags.state);
  return credentials ? { ...flags, credentials } : flags;
}

/** An ArchiveContext of the CLI: its S3 client is built on first use, and close() destroys it. */
export interface CliArchiveContext extends ArchiveContext {
  close(): void;
}

/**
 * Store + client from flags/env. The client (and the S3 SDK) is loaded only
 * when a ref needs S3: a local .cwa never loads it.
 */
export async function archiveContextFromFlags(rawFlags: StoreFlags & { state?: string }): Promise<CliArchiveContext> {
  const flags = await withStateCredentials(rawFlags);
  const store = storeConfigFromFlags(flags);
  // No bucket, but s3:// URIs still work against the default AWS/env endpoint.
  const endpoint = flags.endpoint;
  const config = store ?? {
    bucket: 'unused',
    prefix: '',
    ...(endpoint ? { endpoint } : {}),
    ...(flags.region ? { region: flags.region } : {}),
    ...(flags.credentials ? { credentials: flags.credentials } : {}),
  };
  const ctx: CliArchiveContext = {
    store,
    client: null,
    connect: async () => (await import('../../store/s3-client.js')).createS3Client(config),
    close: () => ctx.client?.destroy(),
  };
  return ctx;
}

/** Loads a key file (exactly 32 bytes, as `cowstream key create` writes it). */
export async function loadKeyFile(path: string): Promise<Buffer> {
  return readKeyFile(resolve(path));
}
