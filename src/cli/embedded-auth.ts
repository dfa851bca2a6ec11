/**
 * Where the CLI finds the embedded services' credentials
 * (src/store/embedded-credentials.ts): the catalogue token from
 * --catalog-token, else $COWSTREAM_CATALOG_TOKEN, else the credentials.json
 * of --state <dir>, else — for a loopback URL only, so the local token never
 * travels to another machine — that of the local agent's state directory
 * (the directory of its control socket) when this user may read it.
 */
import { isLoopback } from '../store/config.js';
import { readEmbeddedCredentials, type EmbeddedS3Credentials } from '../store/embedded-credentials.js';
import { localStateDir } from './state-defaults.js';

export interface EmbeddedAuthFlags {
  catalogToken?: string;
  state?: string;
}

/** The catalogue bearer token to send, or undefined (AWS URLs are IAM-signed instead). */
export async function resolveCatalogToken(o: EmbeddedAuthFlags, url: string, env: NodeJS.ProcessEnv = process.env): Promise<string | undefined> {
  if (o.catalogToken !== undefined && o.catalogToken !== '') return o.catalogToken;
  if (env.COWSTREAM_CATALOG_TOKEN) return env.COWSTREAM_CATALOG_TOKEN;
  if (o.state !== undefined) return (await readEmbeddedCredentials(o.state)).catalogToken;
  if (!isLoopback(url)) return undefined;
  // The local agent's state directory: used when present and this user may read it; otherwise the server's 401 says what to pass.
  return readEmbeddedCredentials(localStateDir(env)).then(
    (c) => c.catalogToken,
    () => undefined,
  );
}

/** SigV4 keys of the embedded S3 server of `--state <dir>` (undefined without --state). */
export async function embeddedS3CredentialsFromState(state: string | undefined): Promise<EmbeddedS3Credentials | undefined> {
  if (state === undefined) return undefined;
  return (await readEmbeddedCredentials(state)).s3;
}
