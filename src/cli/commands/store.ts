import { resolve } from 'node:path';
import { Option, type Command } from 'commander';
import { UsageError } from '../../errors.js';
import { openArchive } from '../../format/reader.js';
import { describeLocator } from '../../restore/chain.js';
import { resolveRef, sourceOpener } from '../../restore/locate.js';
import { DEFAULT_EMBEDDED_BUCKET, normalizePrefix, storeConfigFromFlags, type StoreFlags } from '../../store/config.js';
import { parsePositiveInt, printJson } from '../output.js';
import { describeVerifyReport, verifyReport } from '../verify-report.js';
import { withProgress } from '../progress.js';
import { untilInterrupted } from '../signals.js';
import { addStoreOptions, archiveContextFromFlags, loadKeyFile, withStateCredentials } from './store-options.js';

/** The S3 client of a command that always talks to S3 (loaded on demand). */
async function s3ClientFor(store: NonNullable<ReturnType<typeof storeConfigFromFlags>>): Promise<import('@aws-sdk/client-s3').S3Client> {
  return (await import('../../store/s3-client.js')).createS3Client(store);
}

interface VerifyFlags extends StoreFlags {
  key?: string;
  json?: boolean;
  progress?: boolean;
}

async function runVerify(ref: string, o: VerifyFlags): Promise<void> {
  const ctx = await archiveContextFromFlags(o);
  const loc = await resolveRef(ref, ctx);
  const key = o.key ? await loadKeyFile(o.key) : undefined;
  const { ZstdPool } = await import('../../codec/zstd-pool.js');
  // Always a compressor: an unencrypted archive's plaintext checksums need no key (verify-report.ts).
  const pool = new ZstdPool({});
  try {
    const reader = await openArchive(await sourceOpener(ctx)(loc), { ...(key ? { key } : {}), compressor: pool });
    try {
      const report = await withProgress('verify', o, (onProgress) => verifyReport(reader, describeLocator(loc), onProgress));
      if (o.json) printJson(report);
      else process.stdout.write(describeVerifyReport(report));
      if (!report.ok) process.exitCode = 1;
    } finally {
      await reader.close();
    }
  } finally {
    await pool.close();
    ctx.close();
  }
}

export function registerStoreCommands(program: Command): void {
  addStoreOptions(
    program
      .command('verify <ref>')
      .description('check every stored checksum of an archive (plaintext checksums too with --key); ref = UUID, s3://bucket/key, key or .cwa file')
      .option('--key <file>', 'key file: also decrypt/decompress and check plaintext checksums')
      .option('--progress', 'show a progress bar on stderr even when it is not a terminal')
      .option('--json', 'print the result as JSON'),
  ).action(async (ref: string, o: VerifyFlags) => runVerify(ref, o));

  const uploads = program.command('uploads').description('incomplete multipart uploads under the archive prefix');
  addStoreOptions(uploads.command('list').description('list incomplete multipart uploads').option('--json', 'print JSON')).action(
    async (o: StoreFlags & { json?: boolean }) => {
      const store = storeConfigFromFlags(await withStateCredentials(o));
      if (!store) throw new UsageError('uploads list needs a bucket: pass --bucket (or set COWSTREAM_S3_BUCKET)');
      const client = await s3ClientFor(store);
      const { listIncompleteUploads } = await import('../../store/uploads.js');
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
    const client = await s3ClientFor(store);
    const { abortIncompleteUploads } = await import('../../store/uploads.js');
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
      const { startEmbeddedS3, embeddedS3Dir } = await import('../../store/embedded-s3.js');
      const { credentialsPath, loadOrCreateEmbeddedCredentials } = await import('../../store/embedded-credentials.js');
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
      await untilInterrupted();
      await server.close().catch(() => undefined);
    });
}

