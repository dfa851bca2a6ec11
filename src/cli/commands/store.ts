import { resolve } from 'node:path';
import { Option, type Command } from 'commander';
import { UsageError } from '../../errors.js';
import { readKeyFile } from '../../codec/crypto.js';
import { openArchive } from '../../format/reader.js';
import { describeLocator } from '../../restore/chain.js';
import { resolveRef, sourceOpener, type ArchiveContext } from '../../restore/locate.js';
import { createS3Client, normalizePrefix, storeConfigFromFlags, type StoreFlags } from '../../store/config.js';
import { DEFAULT_EMBEDDED_BUCKET, embeddedS3Dir, startEmbeddedS3 } from '../../store/embedded-s3.js';
import { credentialsPath, loadOrCreateEmbeddedCredentials } from '../../store/embedded-credentials.js';
import { abortIncompleteUploads, listIncompleteUploads } from '../../store/uploads.js';
import { formatBytes, parsePositiveInt, printJson } from '../output.js';
import { embeddedS3CredentialsFromState } from '../embedded-auth.js';

/** Adds --bucket/--prefix/--endpoint/--region/--state (env: COWSTREAM_S3_BUCKET, COWSTREAM_S3_PREFIX, AWS_*). */
export function addStoreOptions(cmd: Command): Command {
  return cmd
    .option('--bucket <name>', 'S3 bucket (default: $COWSTREAM_S3_BUCKET)')
    .option('--prefix <prefix>', 'key prefix inside the bucket (default: $COWSTREAM_S3_PREFIX or none)')
    .option('--endpoint <url>', 'S3 endpoint URL (default: $AWS_ENDPOINT_URL_S3, else AWS)')
    .option('--region <region>', 'AWS region (default: $AWS_REGION / profile)')
    .option('--state <dir>', "an embedded store's state directory: sign with the keys in its credentials.json");
}

/** Store flags plus the embedded keys of --state, when given. */
async function withStateCredentials(flags: StoreFlags & { state?: string }): Promise<StoreFlags> {
  const credentials = await embeddedS3CredentialsFromState(flags.state);
  return credentials ? { ...flags, credentials } : flags;
}

/** Store + client from flags/env; client is null when nothing is configured. */
export async function archiveContextFromFlags(rawFlags: StoreFlags & { state?: string }): Promise<ArchiveContext> {
  const flags = await withStateCredentials(rawFlags);
  const store = storeConfigFromFlags(flags);
  if (store) return { store, client: createS3Client(store) };
  // No bucket, but s3:// URIs still work against the default AWS/env endpoint.
  const endpoint = flags.endpoint;
  const client = createS3Client({
    bucket: 'unused',
    prefix: '',
    ...(endpoint ? { endpoint } : {}),
    ...(flags.region ? { region: flags.region } : {}),
    ...(flags.credentials ? { credentials: flags.credentials } : {}),
  });
  return { store: null, client };
}

/** Loads a key file (exactly 32 bytes, as `cowstream key create` writes it). */
export async function loadKeyFile(path: string): Promise<Buffer> {
  return readKeyFile(resolve(path));
}

interface VerifyFlags extends StoreFlags {
  key?: string;
  json?: boolean;
}

async function runVerify(ref: string, o: VerifyFlags): Promise<void> {
  const ctx = await archiveContextFromFlags(o);
  const loc = await resolveRef(ref, ctx);
  const key = o.key ? await loadKeyFile(o.key) : undefined;
  const { ZstdPool } = await import('../../codec/zstd-pool.js');
  const pool = key ? new ZstdPool({}) : undefined;
  try {
    const reader = await openArchive(await sourceOpener(ctx)(loc), { ...(key ? { key } : {}), ...(pool ? { compressor: pool } : {}) });
    try {
      const res = await reader.verify();
      const out = {
        ok: res.ok,
        archive: reader.header.uuid,
        parent: reader.header.parentUuid,
        source: describeLocator(loc),
        extents: res.extentCount,
        extentsChecked: res.extentsChecked,
        bytesChecked: res.bytesChecked,
        plaintextChecked: res.plaintextChecked,
        ...(res.firstBad ? { firstBad: res.firstBad } : {}),
      };
      if (o.json) printJson(out);
      else {
        process.stdout.write(
          `${res.ok ? 'OK' : 'CORRUPT'} archive ${out.archive} (${out.source}): ${res.extentsChecked}/${res.extentCount} extents, ` +
            `${formatBytes(res.bytesChecked)} checked, ${res.plaintextChecked ? 'stored + plaintext checksums' : 'stored checksums only (pass --key for plaintext)'}\n`,
        );
        if (res.firstBad) process.stdout.write(`  first bad extent: seq ${res.firstBad.seq} at offset ${res.firstBad.offset}: ${res.firstBad.message}\n`);
      }
      if (!res.ok) process.exitCode = 1;
    } finally {
      await reader.close();
    }
  } finally {
    await pool?.close();
    ctx.client?.destroy();
  }
}

export function registerStoreCommands(program: Command): void {
  addStoreOptions(
    program
      .command('verify <ref>')
      .description('check every stored checksum of an archive (plaintext checksums too with --key); ref = UUID, s3://bucket/key, key or .cwa file')
      .option('--key <file>', 'key file: also decrypt/decompress and check plaintext checksums')
      .option('--json', 'print the result as JSON'),
  ).action(async (ref: string, o: VerifyFlags) => runVerify(ref, o));

  const uploads = program.command('uploads').description('incomplete multipart uploads under the archive prefix');
  addStoreOptions(uploads.command('list').description('list incomplete multipart uploads').option('--json', 'print JSON')).action(
    async (o: StoreFlags & { json?: boolean }) => {
      const store = storeConfigFromFlags(await withStateCredentials(o));
      if (!store) throw new UsageError('uploads list needs a bucket: pass --bucket (or set COWSTREAM_S3_BUCKET)');
      const client = createS3Client(store);
      try {
        const list = await listIncompleteUploads(client, store.bucket, normalizePrefix(store.prefix) ? `${normalizePrefix(store.prefix)}/` : '');
        if (o.json) printJson({ bucket: store.bucket, prefix: store.prefix, uploads: list });
        else if (list.length === 0) process.stdout.write(`no incomplete uploads in s3://${store.bucket}/${store.prefix}\n`);
        else for (const u of list) process.stdout.write(`${u.key}  ${u.uploadId}  ${u.initiated ?? ''}\n`);
      } finally {
        client.destroy();
      }
    },
  );
  addStoreOptions(
    uploads
      .command('abort')
      .description('abort incomplete multipart uploads (all, or those older than --older-than seconds)')
      .option('--older-than <seconds>', 'only uploads initiated at least this many seconds ago')
      .option('--json', 'print JSON'),
  ).action(async (o: StoreFlags & { json?: boolean; olderThan?: string }) => {
    const store = storeConfigFromFlags(await withStateCredentials(o));
    if (!store) throw new UsageError('uploads abort needs a bucket: pass --bucket (or set COWSTREAM_S3_BUCKET)');
    const olderThan = o.olderThan !== undefined ? parsePositiveInt(o.olderThan, '--older-than') : undefined;
    const client = createS3Client(store);
    try {
      const res = await abortIncompleteUploads(client, store.bucket, normalizePrefix(store.prefix) ? `${normalizePrefix(store.prefix)}/` : '', {
        ...(olderThan ? { olderThanSeconds: olderThan } : {}),
      });
      if (o.json) printJson({ bucket: store.bucket, ...res });
      else {
        process.stdout.write(`aborted ${res.aborted.length} upload(s)\n`);
        for (const f of res.failed) process.stdout.write(`  failed: ${f.upload.key} ${f.upload.uploadId}: ${f.error}\n`);
      }
      if (res.failed.length > 0) process.exitCode = 1;
    } finally {
      client.destroy();
    }
  });

  const s3 = program.command('s3').description('the embedded S3-compatible server (s3rver)');
  s3.command('serve')
    .description('run the embedded S3 server in the foreground (loopback only; SigV4 with the keys in <state>/credentials.json)')
    .requiredOption('--state <dir>', 'state directory: credentials.json (created 0600 on first start) and objects under s3/')
    .option('--dir <dir>', 'directory holding the objects (default <state>/s3)')
    .option('--port <port>', 'TCP port (default: a free one)')
    .option('--bucket <name>', 'bucket to create', DEFAULT_EMBEDDED_BUCKET)
    .addOption(new Option('--host <addr>', 'bind address').default('127.0.0.1').hideHelp())
    .option('--json', 'print the endpoint as one JSON line')
    .action(async (o: { state: string; dir?: string; port?: string; bucket: string; host: string; json?: boolean }) => {
      const port = o.port !== undefined ? (o.port === '0' ? 0 : parsePositiveInt(o.port, '--port', 65535)) : 0;
      const state = resolve(o.state);
      const creds = await loadOrCreateEmbeddedCredentials(state);
      const server = await startEmbeddedS3({ dir: o.dir !== undefined ? resolve(o.dir) : embeddedS3Dir(state), port, bucket: o.bucket, host: o.host, credentials: creds.s3 });
      const info = { endpoint: server.endpoint, bucket: server.bucket, dir: server.dir, credentials: credentialsPath(state) };
      if (o.json) process.stdout.write(JSON.stringify(info) + '\n');
      else
        process.stdout.write(
          `embedded S3 listening on ${server.endpoint}, bucket "${server.bucket}", data in ${server.dir}\n` +
            `keys in ${info.credentials}; use: cowstream ... --state ${state} --endpoint ${server.endpoint} --bucket ${server.bucket}\n`,
        );
      await new Promise<void>((done) => {
        const stop = (): void => {
          process.off('SIGINT', stop);
          process.off('SIGTERM', stop);
          void server.close().then(done, done);
        };
        process.on('SIGINT', stop);
        process.on('SIGTERM', stop);
      });
    });
}

