/**
 * Where the console finds the embedded catalogue's bearer token: the
 * `--catalog-token` flag, then COWSTREAM_CATALOG_TOKEN, then
 * `<stateDir>/credentials.json` (`{ "catalogToken": "...", ... }`, written
 * 0600 by the catalogue next to its database).
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ConfigError } from '../errors.js';

export const CATALOG_TOKEN_ENV = 'COWSTREAM_CATALOG_TOKEN';

export function credentialsPath(stateDir: string): string {
  return join(stateDir, 'credentials.json');
}

/** The token in `<stateDir>/credentials.json`, or undefined when the file does not exist. */
export async function readCatalogToken(stateDir: string): Promise<string | undefined> {
  const path = credentialsPath(stateDir);
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new ConfigError(`cannot read ${path}`, { cause: err });
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw new ConfigError(`${path} is not JSON`, { cause: err });
  }
  const token = (parsed as { catalogToken?: unknown } | null)?.catalogToken;
  if (token === undefined) return undefined;
  if (typeof token !== 'string' || !/^[A-Za-z0-9._~+/=-]{16,512}$/.test(token)) throw new ConfigError(`${path}: catalogToken is not a token`);
  return token;
}

export async function resolveCatalogToken(o: { flag?: string; stateDir?: string }): Promise<string | undefined> {
  if (o.flag) return o.flag;
  const env = process.env[CATALOG_TOKEN_ENV];
  if (env) return env;
  return o.stateDir !== undefined ? readCatalogToken(o.stateDir) : undefined;
}
