/**
 * Where a running agent's embedded services listen, kept in
 * `<stateDir>/endpoints.json` (0600, replaced atomically at every start and
 * removed at stop), so the CLI finds the catalogue and the S3 store through
 * `--state <dir>` instead of the agent's log:
 *
 *   { "s3": { "endpoint": "http://127.0.0.1:P", "bucket": "cowstream", "prefix": "" } | null,
 *     "catalog": "http://127.0.0.1:Q" | null }
 */
import { unlink } from 'node:fs/promises';
import { join } from 'node:path';
import type { z } from 'zod';
import { ConfigError, describeError } from '../errors.js';
import { writeFileAtomic } from '../device/durable.js';
import { lazySchema, parsePrivateJson, readPrivateFile, type Zod } from './private-file.js';

export const ENDPOINTS_FILE = 'endpoints.json';

function isHttpUrl(s: string): boolean {
  try {
    const u = new URL(s);
    return u.protocol === 'http:' || u.protocol === 'https:';
  } catch {
    return false;
  }
}

function endpointsSchemaOf(zod: Zod) {
  const httpUrl = zod.string().max(2048).refine(isHttpUrl, 'not an http(s) URL');
  return zod.object({
    s3: zod.object({ endpoint: httpUrl, bucket: zod.string().min(1).max(63), prefix: zod.string().max(1024) }).nullable(),
    catalog: httpUrl.nullable(),
  });
}

const endpointsSchema = lazySchema(endpointsSchemaOf);

export type AgentEndpoints = z.infer<ReturnType<typeof endpointsSchemaOf>>;

export function endpointsPath(stateDir: string): string {
  return join(stateDir, ENDPOINTS_FILE);
}

/** Publishes the endpoints (0600, atomic: a reader never sees half a file). */
export async function writeEndpointsFile(stateDir: string, endpoints: AgentEndpoints): Promise<void> {
  await writeFileAtomic(endpointsPath(stateDir), JSON.stringify(endpoints, null, 2) + '\n', 0o600);
}

/** Removes the file at stop, so no client sends credentials to a port the agent no longer holds. */
export async function removeEndpointsFile(stateDir: string): Promise<void> {
  await unlink(endpointsPath(stateDir)).catch(() => undefined);
}

/**
 * Reads `<stateDir>/endpoints.json`: undefined when absent; a ConfigError when
 * it is unreadable, not private (see private-file.ts) or malformed.
 */
export async function readEndpointsFile(stateDir: string): Promise<AgentEndpoints | undefined> {
  const path = endpointsPath(stateDir);
  let text: Buffer;
  try {
    text = await readPrivateFile(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new ConfigError(`cannot use ${path}: ${describeError(err)}`, { cause: err });
  }
  return parsePrivateJson(path, text, await endpointsSchema(), 'agent endpoints');
}
