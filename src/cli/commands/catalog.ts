/**
 * Catalogue commands: `list`, `show <id>` (HTTP client of the catalogue API,
 * SigV4-signed for AWS URLs) and `catalog serve` (the embedded catalogue
 * with its own embedded S3 server).
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Command } from 'commander';
import { ConfigError, UsageError, describeError } from '../../errors.js';
import { parseRetentionConfig, type RetentionConfig } from '../../catalog/retention.js';
import { CatalogClient } from '../../catalog/client.js';
import { diskNameSchema, hostIdSchema, uuidSchema, type ArchiveRecord } from '../../catalog/records.js';
import { formatBytes, parsePositiveInt, printJson } from '../output.js';
import { resolveCatalogToken, type EmbeddedAuthFlags } from '../embedded-auth.js';
import { catalogUrlWithState } from '../state-defaults.js';
import { untilInterrupted } from '../signals.js';

export interface CatalogFlags extends EmbeddedAuthFlags {
  catalog?: string;
  json?: boolean;
}

export async function catalogClient(o: CatalogFlags): Promise<CatalogClient> {
  const { url, state } = await catalogUrlWithState(o);
  if (!url) throw new UsageError('no catalogue: give --catalog <url>, set COWSTREAM_CATALOG_URL, or --state <dir> of an agent with the embedded catalogue');
  const token = await resolveCatalogToken({ ...o, ...(state !== undefined ? { state } : {}) }, url);
  return new CatalogClient({ url, ...(token !== undefined ? { token } : {}) });
}

/** --retention JSON / --retention-file F → the validated policy (errors name the flag and the field). */
async function retentionFlag(o: { retention?: string; retentionFile?: string }): Promise<RetentionConfig | undefined> {
  if (o.retention !== undefined && o.retentionFile !== undefined) throw new UsageError('give --retention or --retention-file, not both');
  const flag = o.retention !== undefined ? '--retention' : '--retention-file';
  let text = o.retention;
  if (o.retentionFile !== undefined) {
    try {
      text = await readFile(o.retentionFile, 'utf8');
    } catch (err) {
      throw new UsageError(`--retention-file: cannot read ${o.retentionFile}: ${describeError(err)}`, { cause: err });
    }
  }
  if (text === undefined) return undefined;
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new UsageError(`${flag} is not valid JSON (e.g. '{"keepLast":7,"keepDaily":14}'): ${describeError(err)}`, { cause: err });
  }
  try {
    return parseRetentionConfig(raw);
  } catch (err) {
    throw new UsageError(`${flag}: ${err instanceof ConfigError ? err.message : describeError(err)}`, { cause: err });
  }
}

/** --catalog-token / --state: how the CLI authenticates to an embedded catalogue. */
export function addCatalogAuthOptions(cmd: Command): Command {
  return cmd
    .option('--catalog-token <token>', 'bearer token of an embedded catalogue (default $COWSTREAM_CATALOG_TOKEN, else read from --state)')
    .option('--state <dir>', "an agent's state directory: its endpoints.json gives the catalogue URL, its credentials.json the token (default: the local agent's)");
}

function short(uuid: string | null): string {
  return uuid === null ? '-' : uuid.slice(0, 8);
}

function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  return rows.map((r) => r.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd()).join('\n') + '\n';
}

function archiveRow(a: ArchiveRecord): string[] {
  return [
    a.uuid,
    a.hostId,
    a.createdAt.replace('T', ' ').replace(/\.\d+Z$/, 'Z'),
    short(a.parentUuid),
    String(a.chainDepth),
    a.devices.map((d) => `${d.name}:${formatBytes(d.size)}`).join(',') || '-',
    formatBytes(a.bytesStored),
    a.compressionRatio > 0 ? `${a.compressionRatio.toFixed(2)}x` : '-',
    a.status,
  ];
}

const HEAD = ['UUID', 'HOST', 'CREATED', 'PARENT', 'DEPTH', 'DEVICES', 'STORED', 'RATIO', 'STATUS'];

export function registerCatalogCommands(program: Command): void {
  addCatalogAuthOptions(program
    .command('list')
    .description('list archives in the catalogue, newest first')
    .option('--host <id>', 'only this host')
    .option('--disk <name>', 'only archives containing this disk (needs --host)')
    .option('--limit <n>', 'page size (1-500, default 50)')
    .option('--cursor <c>', 'continue from a previous page')
    .option('--all', 'follow every page')
    .option('--include-deleted', 'also list DELETED archives')
    .option('--catalog <url>', 'catalogue URL (default $COWSTREAM_CATALOG_URL, else the embedded catalogue of --state)')
    .option('--json', 'print JSON'))
    .action(async (o: CatalogFlags & { host?: string; disk?: string; limit?: string; cursor?: string; all?: boolean; includeDeleted?: boolean }) => {
      if (o.host !== undefined && !hostIdSchema.safeParse(o.host).success) throw new UsageError(`--host "${o.host}" is not a valid host id`);
      if (o.disk !== undefined && !diskNameSchema.safeParse(o.disk).success) throw new UsageError(`--disk "${o.disk}" is not a valid disk name`);
      if (o.disk !== undefined && o.host === undefined) throw new UsageError('--disk needs --host');
      const limit = o.limit !== undefined ? parsePositiveInt(o.limit, '--limit', 500) : undefined;
      const client = await catalogClient(o);
      const items: ArchiveRecord[] = [];
      let cursor = o.cursor;
      let pages = 0;
      do {
        const page = await client.listArchives({ host: o.host, disk: o.disk, limit, cursor, includeDeleted: o.includeDeleted });
        items.push(...page.items);
        cursor = page.cursor;
        pages++;
      } while (o.all && cursor && pages < 10_000);
      if (o.json) {
        printJson({ items, ...(cursor ? { cursor } : {}) });
        return;
      }
      if (items.length === 0) process.stdout.write('no archives\n');
      else process.stdout.write(table([HEAD, ...items.map(archiveRow)]));
      if (cursor) process.stdout.write(`more: --cursor ${cursor}\n`);
    });

  addCatalogAuthOptions(program
    .command('show <id>')
    .description('show one archive of the catalogue and its incremental chain')
    .option('--catalog <url>', 'catalogue URL (default $COWSTREAM_CATALOG_URL, else the embedded catalogue of --state)')
    .option('--json', 'print JSON'))
    .action(async (id: string, o: CatalogFlags) => {
      if (!uuidSchema.safeParse(id).success) throw new UsageError(`"${id}" is not an archive UUID`);
      const client = await catalogClient(o);
      const archive = await client.getArchive(id);
      let chain: ArchiveRecord[] = [];
      let chainError: string | undefined;
      try {
        chain = (await client.getChain(id)).items;
      } catch (err) {
        chainError = (err as Error).message;
      }
      if (o.json) {
        printJson({ archive, chain, ...(chainError ? { chainError } : {}) });
        return;
      }
      const lines = [
        ['uuid', archive.uuid],
        ['host', archive.hostId],
        ['created', archive.createdAt],
        ['status', archive.status + (archive.reason ? ` (${archive.reason})` : '')],
        ['parent', archive.parentUuid ?? '- (full archive)'],
        ['chain depth', String(archive.chainDepth)],
        ['devices', archive.devices.map((d) => `${d.name} (${formatBytes(d.size)})`).join(', ') || '-'],
        ['stored', formatBytes(archive.bytesStored)],
        ['data / zero', `${formatBytes(archive.dataBytes)} / ${formatBytes(archive.zeroBytes)}`],
        ['compression', archive.compressionRatio > 0 ? `${archive.compressionRatio.toFixed(2)}x` : '-'],
        ['object', `s3://${archive.bucket}/${archive.key}`],
        ['last verified', archive.lastVerifiedAt ?? 'never'],
      ];
      process.stdout.write(lines.map(([k, v]) => `${k!.padEnd(14)}${v}`).join('\n') + '\n');
      if (chainError) process.stdout.write(`chain: ${chainError}\n`);
      else if (chain.length > 1) {
        process.stdout.write(`chain (${chain.length} archives, newest first):\n`);
        for (const c of chain) process.stdout.write(`  ${c.uuid}  ${c.createdAt}  ${c.status}\n`);
      }
    });

  const catalog = program.command('catalog').description('the catalogue of archives');
  catalog
    .command('serve')
    .description('run the embedded catalogue (dynalite + API + indexer) with an embedded S3 server, until interrupted')
    .requiredOption('--state <dir>', 'state directory (catalogue database and S3 objects persist here)')
    .option('--port <p>', 'catalogue HTTP port (default: ephemeral)')
    .option('--s3-port <p>', 'embedded S3 port (default: ephemeral)')
    .option('--bucket <name>', 'embedded S3 bucket (default cowstream)')
    .option('--retention <json>', 'retention policy applied to a host after each of its archives is indexed, as the prune Lambda\'s RETENTION, e.g. \'{"keepLast":7,"keepDaily":14}\' (default: keep everything)')
    .option('--retention-file <file>', 'the same policy, read from a JSON file')
    .option('--json', 'print the endpoints as JSON')
    .action(async (o: { state: string; port?: string; s3Port?: string; bucket?: string; retention?: string; retentionFile?: string; json?: boolean }) => {
      const retention = await retentionFlag(o);
      const port = o.port !== undefined ? parsePositiveInt(o.port, '--port', 65535) : 0;
      const s3Port = o.s3Port !== undefined ? parsePositiveInt(o.s3Port, '--s3-port', 65535) : 0;
      const { startEmbeddedS3 } = await import('../../store/embedded-s3.js');
      const { startEmbeddedCatalog } = await import('../../catalog/embedded.js');
      const { loadOrCreateEmbeddedCredentials, credentialsPath } = await import('../../store/embedded-credentials.js');
      const creds = await loadOrCreateEmbeddedCredentials(o.state);
      const s3 = await startEmbeddedS3({ dir: join(o.state, 's3'), port: s3Port, credentials: creds.s3, ...(o.bucket ? { bucket: o.bucket } : {}) });
      let cat;
      try {
        cat = await startEmbeddedCatalog({ stateDir: o.state, port, s3, token: creds.catalogToken, logger: o.json ? 'quiet' : undefined, ...(retention ? { retention } : {}) });
      } catch (err) {
        await s3.close();
        throw err;
      }
      // The fragment carries the token to the page without it reaching any server log.
      const consoleUrl = `${cat.url}/#token=${cat.token}`;
      const info = { catalog: cat.url, console: consoleUrl, s3: { endpoint: s3.endpoint, bucket: s3.bucket }, state: o.state, credentials: credentialsPath(o.state), retention: retention ?? null };
      if (o.json) printJson(info);
      else
        process.stdout.write(
          `catalogue listening on ${cat.url}
web console: ${consoleUrl}
embedded S3 on ${s3.endpoint} (bucket ${s3.bucket})
` +
            `credentials (catalogue token, S3 keys): ${info.credentials}; clients: --state ${o.state}
` +
            `retention: ${retention ? JSON.stringify(retention) : 'none (archives are kept until deleted)'}
`,
        );
      await untilInterrupted();
      await cat.close();
      await s3.close();
    });
}
