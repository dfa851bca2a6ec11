/**
 * The CLI's view of an agent's state directory: `--state <dir>` (default:
 * the local agent's, the directory of its control socket) supplies the
 * embedded catalogue's URL and the embedded S3 endpoint, bucket and prefix
 * from `<dir>/endpoints.json` (src/store/embedded-endpoints.ts) when the
 * command line does not give them. The local agent's directory is used only
 * when its file is readable by this user and names loopback endpoints, so
 * its keys and token never travel to another machine.
 */
import { dirname } from 'node:path';
import { isLoopback, type StoreFlags } from '../store/config.js';
import { readEndpointsFile, type AgentEndpoints } from '../store/embedded-endpoints.js';
import { agentSocket } from './agent-socket.js';

export interface StateFlags {
  state?: string;
}

/** The local agent's state directory: where its control socket lives. */
export function localStateDir(env: NodeJS.ProcessEnv = process.env): string {
  return dirname(env.COWSTREAM_AGENT_SOCKET ?? agentSocket(undefined));
}

interface StateEndpoints {
  dir: string;
  endpoints: AgentEndpoints;
  /** Given by --state (trusted as given) rather than found (loopback only). */
  explicit: boolean;
}

/** endpoints.json of --state (errors surface), else of the local agent (silently skipped when absent or unreadable). */
async function stateEndpoints(o: StateFlags, env: NodeJS.ProcessEnv): Promise<StateEndpoints | undefined> {
  if (o.state !== undefined) {
    const endpoints = await readEndpointsFile(o.state);
    return endpoints ? { dir: o.state, endpoints, explicit: true } : undefined;
  }
  const dir = localStateDir(env);
  const endpoints = await readEndpointsFile(dir).catch(() => undefined);
  return endpoints ? { dir, endpoints, explicit: false } : undefined;
}

/**
 * Store flags completed from the state directory: endpoint, bucket and prefix
 * when neither --bucket/--endpoint nor $COWSTREAM_S3_BUCKET names a store;
 * `state` set to the local agent's directory when its store is the one used.
 */
export async function storeFlagsWithState<T extends StoreFlags & StateFlags>(o: T, env: NodeJS.ProcessEnv = process.env): Promise<T> {
  const found = await stateEndpoints(o, env);
  const s3 = found?.endpoints.s3;
  if (!found || !s3) return o;
  if (!found.explicit && !isLoopback(s3.endpoint)) return o;
  const named = o.bucket !== undefined || o.endpoint !== undefined || (env.COWSTREAM_S3_BUCKET ?? '') !== '';
  if (!named) return { ...o, state: found.dir, endpoint: s3.endpoint, bucket: s3.bucket, prefix: o.prefix ?? s3.prefix };
  // The same embedded store given by hand: sign with its keys.
  if (!found.explicit && o.endpoint === s3.endpoint) return { ...o, state: found.dir };
  return o;
}

/** The catalogue URL: --catalog, else $COWSTREAM_CATALOG_URL, else the state directory's (loopback only when found). */
export async function catalogUrlWithState(o: StateFlags & { catalog?: string }, env: NodeJS.ProcessEnv = process.env): Promise<{ url: string | undefined; state: string | undefined }> {
  const given = o.catalog ?? (env.COWSTREAM_CATALOG_URL || undefined);
  if (given !== undefined) return { url: given, state: o.state };
  const found = await stateEndpoints(o, env);
  const url = found?.endpoints.catalog ?? undefined;
  if (!found || url === undefined || (!found.explicit && !isLoopback(url))) return { url: undefined, state: o.state };
  return { url, state: found.dir };
}
