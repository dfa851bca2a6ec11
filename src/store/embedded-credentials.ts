/**
 * Credentials of the embedded services (embedded S3 + embedded catalogue),
 * generated at first start and kept in `<stateDir>/credentials.json`
 * (0600, owner only; see private-file.ts). Whoever can read this file may
 * read and delete every archive of the state directory, exactly as whoever
 * can read the AWS credentials may in the AWS deployment.
 *
 *   { "catalogToken": "<random>", "s3": { "accessKeyId": "...", "secretAccessKey": "..." } }
 */
import { randomBytes } from 'node:crypto';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { ConfigError, describeError } from '../errors.js';
import { createPrivateFileExclusive, InsecureFileError, lazySchema, parsePrivateJson, readPrivateFile, type Zod } from './private-file.js';

export const CREDENTIALS_FILE = 'credentials.json';

export interface EmbeddedS3Credentials {
  accessKeyId: string;
  secretAccessKey: string;
}

export interface EmbeddedCredentials {
  /** Bearer token of the embedded catalogue API. */
  catalogToken: string;
  /** SigV4 keys of the embedded S3 server. */
  s3: EmbeddedS3Credentials;
}

const credentialsSchema = lazySchema((zod: Zod) =>
  zod.object({
    catalogToken: zod.string().min(32).max(256),
    s3: zod.object({
      accessKeyId: zod.string().regex(/^[A-Z0-9]{16,128}$/),
      secretAccessKey: zod.string().min(32).max(256),
    }),
  }),
);

/** `<stateDir>/credentials.json` */
export function credentialsPath(stateDir: string): string {
  return join(stateDir, CREDENTIALS_FILE);
}

const ALNUM = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ0234567';

/** Fresh random credentials: 256-bit token and secret, an AWS-shaped key id. */
export function generateEmbeddedCredentials(): EmbeddedCredentials {
  const id = Array.from(randomBytes(16), (b) => ALNUM[b % 32]).join('');
  return {
    catalogToken: randomBytes(32).toString('base64url'),
    s3: { accessKeyId: `CWS${id}`, secretAccessKey: randomBytes(30).toString('base64') },
  };
}

/** Reads and validates `<stateDir>/credentials.json`; refuses files others can read. */
export async function readEmbeddedCredentials(stateDir: string): Promise<EmbeddedCredentials> {
  const path = credentialsPath(stateDir);
  let text: Buffer;
  try {
    text = await readPrivateFile(path);
  } catch (err) {
    if (err instanceof InsecureFileError) throw err;
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ELOOP') throw new InsecureFileError(`${path} is a symbolic link; refusing to use it`, { cause: err });
    if (code === 'ENOENT') throw new ConfigError(`no embedded credentials at ${path}: start the agent or \`cowstream catalog serve\` with this state directory first`, { cause: err });
    throw new ConfigError(`cannot read embedded credentials ${path}: ${describeError(err)}`, { cause: err });
  }
  return parsePrivateJson(path, text, await credentialsSchema(), 'embedded credentials');
}

/**
 * The state directory's credentials, created on first use. The directory is
 * created 0700 when missing. Two processes starting at once agree on one set:
 * the file is published atomically and only if absent.
 */
export async function loadOrCreateEmbeddedCredentials(stateDir: string): Promise<EmbeddedCredentials> {
  await mkdir(stateDir, { recursive: true, mode: 0o700 });
  const path = credentialsPath(stateDir);
  const fresh = generateEmbeddedCredentials();
  try {
    if (await createPrivateFileExclusive(path, JSON.stringify(fresh, null, 2) + '\n')) return fresh;
  } catch (err) {
    throw new ConfigError(`cannot create embedded credentials ${path}: ${describeError(err)}`, { cause: err });
  }
  return readEmbeddedCredentials(stateDir);
}

/**
 * A catalogue token from a file: a `credentials.json` (its catalogToken) or
 * a file holding just the token. Same ownership/permission rules as the
 * credentials themselves.
 */
/**
 * The bearer token for a remote catalogue (`catalog.url`): read from
 * `tokenFile` when it is set, else COWSTREAM_CATALOG_TOKEN, else none (an AWS
 * execute-api URL is IAM-signed instead). One rule for the agent and its
 * start-up check, so the check tries the token the agent will use.
 */
export async function remoteCatalogToken(cat: { tokenFile?: string }, env: NodeJS.ProcessEnv = process.env): Promise<string | undefined> {
  if (cat.tokenFile !== undefined) return readCatalogTokenFile(cat.tokenFile);
  return env.COWSTREAM_CATALOG_TOKEN || undefined;
}

export async function readCatalogTokenFile(path: string): Promise<string> {
  let text: string;
  try {
    text = (await readPrivateFile(path)).toString('utf8').trim();
  } catch (err) {
    if (err instanceof InsecureFileError) throw err;
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ELOOP') throw new InsecureFileError(`${path} is a symbolic link; refusing to use it`, { cause: err });
    throw new ConfigError(`cannot read catalogue token file ${path}: ${describeError(err)}`, { cause: err });
  }
  if (text.startsWith('{')) {
    const schema = await credentialsSchema();
    try {
      const parsed = schema.shape.catalogToken.safeParse((JSON.parse(text) as { catalogToken?: unknown }).catalogToken);
      if (parsed.success) return parsed.data;
    } catch {
      // fall through to the error below
    }
    throw new ConfigError(`${path} holds no catalogToken`);
  }
  if (!/^[A-Za-z0-9._~+/=-]{16,512}$/.test(text)) throw new ConfigError(`${path} does not hold a catalogue token`);
  return text;
}
