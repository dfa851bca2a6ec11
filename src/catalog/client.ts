/**
 * HTTP client of the catalogue API, used by the CLI and the agent. When the
 * URL is an API Gateway execute-api URL the API uses IAM authorization, so
 * requests are signed with SigV4 using the default AWS credential chain
 * (env, profile, SSO, instance role); other URLs (the embedded catalogue)
 * carry the catalogue's bearer token (`token`).
 */
import { SignatureV4 } from '@smithy/signature-v4';
import type { AwsCredentialIdentity, AwsCredentialIdentityProvider } from '@smithy/types';
import { NodeSha256 } from '../store/node-sha256.js';
import { CatalogError, ConflictError, ForbiddenError, NotFoundError, UsageError } from '../errors.js';
import type { Page } from './repository.js';
import type { ArchiveRecord, CreateExportBody, CreateRestoreBody, ExportJob, HostRecord, RestoreJob, RestoreStatus } from './records.js';

export interface CatalogClientOptions {
  url: string;
  /** 'auto' (default): sign only execute-api URLs. */
  sign?: 'auto' | 'always' | 'never';
  region?: string;
  credentials?: AwsCredentialIdentity | AwsCredentialIdentityProvider;
  timeoutMs?: number;
  /** Bearer token of an embedded catalogue (`<stateDir>/credentials.json`); unsigned requests only. */
  token?: string;
}

const EXECUTE_API = /^([a-z0-9]+)\.execute-api\.([a-z0-9-]+)\.amazonaws\.com(\.cn)?$/;

/** The region of an API Gateway URL, or null when the URL is not one. */
export function executeApiRegion(url: string): string | null {
  try {
    const m = EXECUTE_API.exec(new URL(url).hostname);
    return m ? m[2]! : null;
  } catch {
    return null;
  }
}

export interface CatalogHttpRequest {
  method: string;
  url: URL;
  headers: Record<string, string>;
  body?: string;
}

/** Signs a request for API Gateway (service `execute-api`); returns the signed headers. */
export async function signRequest(
  req: CatalogHttpRequest,
  region: string,
  credentials: AwsCredentialIdentity | AwsCredentialIdentityProvider,
): Promise<Record<string, string>> {
  const signer = new SignatureV4({ service: 'execute-api', region, credentials, sha256: NodeSha256 });
  const query: Record<string, string> = {};
  req.url.searchParams.forEach((v, k) => {
    query[k] = v;
  });
  const signed = await signer.sign({
    method: req.method,
    protocol: req.url.protocol,
    hostname: req.url.hostname,
    ...(req.url.port ? { port: Number(req.url.port) } : {}),
    path: req.url.pathname,
    query,
    headers: { ...req.headers, host: req.url.host },
    ...(req.body !== undefined ? { body: req.body } : {}),
  });
  return signed.headers as Record<string, string>;
}

/** The validated base URL of a catalogue and the SigV4 region its requests are signed for (null: unsigned). */
export function catalogEndpoint(opts: Pick<CatalogClientOptions, 'url' | 'sign' | 'region'>): { baseUrl: string; region: string | null } {
  let parsed: URL;
  try {
    parsed = new URL(opts.url);
  } catch (err) {
    throw new UsageError(`invalid catalogue URL "${opts.url}"`, { cause: err });
  }
  if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') throw new UsageError(`catalogue URL must be http(s): ${opts.url}`);
  const sign = opts.sign ?? 'auto';
  const region = sign === 'never' ? null : (opts.region ?? executeApiRegion(opts.url) ?? (sign === 'always' ? process.env.AWS_REGION ?? 'us-east-1' : null));
  return { baseUrl: opts.url.replace(/\/+$/, ''), region };
}

/** The default AWS credential chain, loaded lazily: the embedded catalogue never needs it. */
export async function defaultAwsCredentials(): Promise<AwsCredentialIdentityProvider> {
  const { defaultProvider } = await import('@aws-sdk/credential-provider-node');
  return defaultProvider();
}

export class CatalogClient {
  readonly baseUrl: string;
  private readonly region: string | null;
  private credentials?: AwsCredentialIdentity | AwsCredentialIdentityProvider;

  constructor(private readonly opts: CatalogClientOptions) {
    ({ baseUrl: this.baseUrl, region: this.region } = catalogEndpoint(opts));
    this.credentials = opts.credentials;
  }

  /** True when requests are SigV4-signed. */
  get signed(): boolean {
    return this.region !== null;
  }

  private async resolveCredentials(): Promise<AwsCredentialIdentity | AwsCredentialIdentityProvider> {
    this.credentials ??= await defaultAwsCredentials();
    return this.credentials;
  }

  async request<T>(method: string, path: string, body?: unknown, query?: Record<string, string | number | undefined>): Promise<T> {
    const url = new URL(this.baseUrl + path);
    for (const [k, v] of Object.entries(query ?? {})) if (v !== undefined && v !== '') url.searchParams.set(k, String(v));
    const payload = body === undefined ? undefined : JSON.stringify(body);
    let headers: Record<string, string> = { accept: 'application/json', ...(payload !== undefined ? { 'content-type': 'application/json' } : {}) };
    if (this.region !== null) {
      headers = await signRequest({ method, url, headers, body: payload }, this.region, await this.resolveCredentials());
      delete headers.host; // fetch sets Host itself and refuses to override it
    } else if (this.opts.token !== undefined) {
      headers.authorization = `Bearer ${this.opts.token}`;
    }
    let res: Response;
    try {
      res = await fetch(url, { method, headers, body: payload, signal: AbortSignal.timeout(this.opts.timeoutMs ?? 30_000) });
    } catch (err) {
      throw new CatalogError(`catalogue request ${method} ${url.pathname} to ${url.origin} failed`, { cause: err });
    }
    const text = await res.text();
    let data: unknown;
    try {
      data = text === '' ? undefined : JSON.parse(text);
    } catch (err) {
      throw new CatalogError(`catalogue answered ${res.status} with non-JSON to ${method} ${url.pathname}`, { cause: err });
    }
    if (res.ok) return data as T;
    const message =
      (data as { error?: { message?: string } })?.error?.message ?? (data as { message?: string })?.message ?? `HTTP ${res.status}`;
    const full = `catalogue: ${message}`;
    if (res.status === 400) throw new UsageError(full);
    if (res.status === 403 || res.status === 401) throw new ForbiddenError(full);
    if (res.status === 404) throw new NotFoundError(full);
    if (res.status === 409) throw new ConflictError(full);
    throw new CatalogError(`${full} (HTTP ${res.status})`);
  }

  listArchives(q: { host?: string; disk?: string; limit?: number; cursor?: string; includeDeleted?: boolean } = {}): Promise<Page<ArchiveRecord>> {
    return this.request('GET', '/archives', undefined, {
      host: q.host,
      disk: q.disk,
      limit: q.limit,
      cursor: q.cursor,
      includeDeleted: q.includeDeleted ? 'true' : undefined,
    });
  }
  getArchive(id: string): Promise<ArchiveRecord> {
    return this.request('GET', `/archives/${encodeURIComponent(id)}`);
  }
  getChain(id: string): Promise<{ items: ArchiveRecord[] }> {
    return this.request('GET', `/archives/${encodeURIComponent(id)}/chain`);
  }
  deleteArchive(id: string): Promise<ArchiveRecord> {
    return this.request('DELETE', `/archives/${encodeURIComponent(id)}`);
  }
  listHosts(): Promise<{ items: HostRecord[] }> {
    return this.request('GET', '/hosts');
  }
  createRestore(body: CreateRestoreBody): Promise<{ restoreId: string }> {
    return this.request('POST', '/restores', body);
  }
  getRestore(id: string): Promise<RestoreJob> {
    return this.request('GET', `/restores/${encodeURIComponent(id)}`);
  }
  listRestores(hostId: string, status: RestoreStatus = 'PENDING', limit?: number): Promise<Page<RestoreJob>> {
    return this.request('GET', `/hosts/${encodeURIComponent(hostId)}/restores`, undefined, { status, limit });
  }
  claimRestore(id: string, agentId: string): Promise<RestoreJob> {
    return this.request('POST', `/restores/${encodeURIComponent(id)}/claim`, { agentId });
  }
  reportProgress(id: string, p: { agentId: string; bytesDone: number; bytesTotal: number }): Promise<RestoreJob> {
    return this.request('POST', `/restores/${encodeURIComponent(id)}/progress`, p);
  }
  completeRestore(id: string, c: { ok: boolean; error?: string; agentId: string }): Promise<RestoreJob> {
    return this.request('POST', `/restores/${encodeURIComponent(id)}/complete`, c);
  }
  cancelRestore(id: string): Promise<RestoreJob> {
    return this.request('POST', `/restores/${encodeURIComponent(id)}/cancel`);
  }
  createExport(body: CreateExportBody): Promise<{ exportId: string }> {
    return this.request('POST', '/exports', body);
  }
  getExport(id: string): Promise<ExportJob> {
    return this.request('GET', `/exports/${encodeURIComponent(id)}`);
  }
  listExports(hostId: string, status: RestoreStatus = 'PENDING', limit?: number): Promise<Page<ExportJob>> {
    return this.request('GET', `/hosts/${encodeURIComponent(hostId)}/exports`, undefined, { status, limit });
  }
  claimExport(id: string, agentId: string): Promise<ExportJob> {
    return this.request('POST', `/exports/${encodeURIComponent(id)}/claim`, { agentId });
  }
  /** The first report carries `served` (the URIs); later ones renew the lease. */
  reportExport(id: string, r: { agentId: string; served?: ExportJob['served'] }): Promise<ExportJob> {
    return this.request('POST', `/exports/${encodeURIComponent(id)}/progress`, r);
  }
  completeExport(id: string, c: { ok: boolean; error?: string; agentId: string }): Promise<ExportJob> {
    return this.request('POST', `/exports/${encodeURIComponent(id)}/complete`, c);
  }
  /** Ends an export (the agent removes it at its next report). */
  endExport(id: string): Promise<ExportJob> {
    return this.request('DELETE', `/exports/${encodeURIComponent(id)}`);
  }
}
