import { S3Client, type S3ClientConfig } from '@aws-sdk/client-s3';
import { UsageError } from '../errors.js';

/**
 * Where archives live. `prefix` may be empty (keys then start with
 * `archives/`). Anything not given here comes from the standard AWS
 * environment: AWS_REGION / AWS_DEFAULT_REGION, AWS_PROFILE and the shared
 * config/credentials files, and AWS_ENDPOINT_URL_S3 (or AWS_ENDPOINT_URL) for
 * MinIO, Ceph, Wasabi, R2 and other S3-compatible stores.
 */
export interface StoreConfig {
  bucket: string;
  prefix: string;
  region?: string;
  /** Explicit endpoint URL; wins over AWS_ENDPOINT_URL_S3. */
  endpoint?: string;
  /**
   * Path-style addressing (`http://host/bucket/key`). Defaults to true when a
   * custom endpoint is in use (local servers and most S3-compatible stores
   * have no wildcard DNS for virtual-hosted buckets), false for AWS.
   */
  forcePathStyle?: boolean;
  /** Static credentials (the embedded s3rver uses S3RVER/S3RVER); otherwise the SDK default chain. */
  credentials?: { accessKeyId: string; secretAccessKey: string; sessionToken?: string };
  /** Network timeouts (see S3Timeouts); every field defaults. */
  timeouts?: Partial<S3Timeouts>;
}

export interface S3ClientOptions {
  /** SDK retry attempts (default 5: transient 5xx/resets are retried by the SDK). */
  maxAttempts?: number;
  /**
   * Default-on CRC32 request checksums cost ~30 % of upload CPU here. Archives
   * carry their own SHA-256 per extent, so we compute S3 checksums only when
   * required or asked for (S3ArchiveSink `checksumAlgorithm`). Pass
   * 'WHEN_SUPPORTED' to get the SDK default back.
   */
  requestChecksumCalculation?: 'WHEN_SUPPORTED' | 'WHEN_REQUIRED';
}

/** The endpoint the SDK will use: explicit config, else the standard env variables. */
export function effectiveEndpoint(cfg: Pick<StoreConfig, 'endpoint'>, env: NodeJS.ProcessEnv = process.env): string | undefined {
  return cfg.endpoint ?? env.AWS_ENDPOINT_URL_S3 ?? env.AWS_ENDPOINT_URL ?? undefined;
}

/**
 * Builds the S3 client for a store. Region falls back to us-east-1 only for
 * custom endpoints (local servers ignore it); for AWS the SDK resolves it from
 * env/profile and a missing region becomes a clear error at first use.
 */
export function createS3Client(cfg: StoreConfig, opts: S3ClientOptions = {}, env: NodeJS.ProcessEnv = process.env): S3Client {
  // cowstream supports Node 20 (package.json engines); the SDK's one-time
  // "node >= 22 after January 2027" notice would otherwise print on every CLI run.
  process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
  const endpoint = effectiveEndpoint(cfg, env);
  const timeouts = resolveS3Timeouts(cfg.timeouts);
  const config: S3ClientConfig = {
    requestHandler: s3RequestHandler(timeouts),
    maxAttempts: opts.maxAttempts ?? 5,
    requestChecksumCalculation: opts.requestChecksumCalculation ?? 'WHEN_REQUIRED',
    forcePathStyle: cfg.forcePathStyle ?? endpoint !== undefined,
  };
  // Only pass the endpoint when it is explicit: the SDK reads AWS_ENDPOINT_URL_S3 itself.
  if (cfg.endpoint !== undefined) config.endpoint = cfg.endpoint;
  const region = cfg.region ?? env.AWS_REGION ?? env.AWS_DEFAULT_REGION;
  if (region !== undefined) config.region = region;
  else if (endpoint !== undefined) config.region = 'us-east-1';
  if (cfg.credentials) config.credentials = cfg.credentials;
  const client = new S3Client(config);
  clientTimeouts.set(client, timeouts);
  if (endpoint !== undefined && isLoopback(endpoint)) unsignedPayloadOnLoopback(client);
  return client;
}

// ───────────────────────────── S3 timeouts ─────────────────────────────
// An endpoint that accepts connections and never answers must not hang a
// backup, a cancel or a shutdown. The SDK sets no timeout by default.

/** Network timeouts of an S3 client (agent config `store.timeouts`, docs/agent.md). */
export interface S3Timeouts {
  /** TCP (and TLS) connection establishment, per attempt. */
  connectMs: number;
  /**
   * A request fails when its socket has been silent this long (nothing sent
   * or received), per attempt. An inactivity bound, not a total: a large
   * part upload that keeps moving is never cut off.
   */
  requestMs: number;
  /**
   * Total time a cleanup (AbortMultipartUpload of a failed or cancelled
   * upload, retries included) may take before it is given up with a warning.
   */
  cleanupMs: number;
}

export const DEFAULT_S3_TIMEOUTS: Readonly<S3Timeouts> = { connectMs: 10_000, requestMs: 60_000, cleanupMs: 30_000 };

export function resolveS3Timeouts(t: Partial<S3Timeouts> | undefined): S3Timeouts {
  return { ...DEFAULT_S3_TIMEOUTS, ...t };
}

/** NodeHttpHandler options for the timeouts (also for S3 clients not made by createS3Client). */
export function s3RequestHandler(t: Partial<S3Timeouts> | undefined): { connectionTimeout: number; socketTimeout: number } {
  const r = resolveS3Timeouts(t);
  return { connectionTimeout: r.connectMs, socketTimeout: r.requestMs };
}

const clientTimeouts = new WeakMap<S3Client, S3Timeouts>();

/** The timeouts a client was made with (defaults for clients made elsewhere). */
export function timeoutsOf(client: S3Client): S3Timeouts {
  return clientTimeouts.get(client) ?? { ...DEFAULT_S3_TIMEOUTS };
}

/** True for http(s)://127.x / localhost / [::1] endpoints. */
export function isLoopback(endpoint: string): boolean {
  try {
    const host = new URL(endpoint).hostname.replace(/^\[|\]$/g, '');
    return host === 'localhost' || host === '::1' || /^127\./.test(host);
  } catch {
    return false;
  }
}

/**
 * Over plain HTTP SigV4 signs a SHA-256 of every request body (over HTTPS the
 * SDK already sends UNSIGNED-PAYLOAD). On loopback — the embedded server — no
 * one can alter the bytes in transit, and every extent carries its own
 * SHA-256s, so skip that hash: it was the largest single CPU cost of an
 * upload in profiles. The signer uses a preset x-amz-content-sha256 as is.
 */
function unsignedPayloadOnLoopback(client: S3Client): void {
  client.middlewareStack.add(
    (next) => async (args) => {
      const req = args.request as { headers?: Record<string, string>; body?: unknown };
      if (req.headers && req.body !== undefined && req.body !== null) {
        req.headers['x-amz-content-sha256'] ??= 'UNSIGNED-PAYLOAD';
      }
      return next(args);
    },
    { step: 'build', name: 'cowstreamUnsignedPayloadOnLoopback', priority: 'low' },
  );
}

/** Strips leading/trailing slashes; '' means "no prefix". */
export function normalizePrefix(prefix: string | undefined): string {
  return (prefix ?? '').replace(/^\/+|\/+$/g, '');
}

function joinKey(...parts: string[]): string {
  return parts.filter((p) => p.length > 0).join('/');
}

const SAFE_SEGMENT = /^[A-Za-z0-9._-]{1,128}$/;

/** `<prefix>/archives/<hostId>/<uuid>.cwa` (no leading slash when prefix is empty). */
export function archiveKey(prefix: string, hostId: string, uuid: string): string {
  if (!SAFE_SEGMENT.test(hostId) || hostId === '.' || hostId === '..') {
    throw new UsageError(`host id "${hostId}" cannot be used in an S3 key: use 1-128 of [A-Za-z0-9._-]`);
  }
  if (!SAFE_SEGMENT.test(uuid)) throw new UsageError(`archive uuid "${uuid}" cannot be used in an S3 key`);
  return joinKey(normalizePrefix(prefix), 'archives', hostId, `${uuid}.cwa`);
}

/** Key prefix under which all archives (or one host's archives) live, ending with '/'. */
export function archivesPrefix(prefix: string, hostId?: string): string {
  return joinKey(normalizePrefix(prefix), 'archives', hostId ?? '') + '/';
}

/** Parses an archive key back into host and uuid; null when it is not one. */
export function parseArchiveKey(key: string): { prefix: string; hostId: string; uuid: string } | null {
  const m = /^(?:(.*)\/)?archives\/([^/]+)\/([^/]+)\.cwa$/.exec(key);
  if (!m) return null;
  return { prefix: m[1] ?? '', hostId: m[2]!, uuid: m[3]! };
}

/** `s3://bucket/key` → parts; null when the text is not an s3 URI. */
export function parseS3Uri(text: string): { bucket: string; key: string } | null {
  const m = /^s3:\/\/([^/]+)\/(.+)$/.exec(text);
  if (!m) return null;
  return { bucket: m[1]!, key: m[2]! };
}

export interface StoreFlags {
  bucket?: string;
  prefix?: string;
  endpoint?: string;
  region?: string;
}

/**
 * CLI store config: flags win over COWSTREAM_S3_BUCKET / COWSTREAM_S3_PREFIX;
 * region/endpoint/credentials otherwise come from the AWS environment.
 * Returns null when no bucket is configured anywhere.
 */
export function storeConfigFromFlags(flags: StoreFlags, env: NodeJS.ProcessEnv = process.env): StoreConfig | null {
  const bucket = flags.bucket ?? env.COWSTREAM_S3_BUCKET;
  if (bucket === undefined || bucket === '') return null;
  if (!/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(bucket)) {
    throw new UsageError(`invalid bucket name "${bucket}": 3-63 characters of a-z, 0-9, '.' and '-'`);
  }
  const cfg: StoreConfig = { bucket, prefix: normalizePrefix(flags.prefix ?? env.COWSTREAM_S3_PREFIX ?? '') };
  if (flags.endpoint !== undefined) {
    try {
      new URL(flags.endpoint);
    } catch (err) {
      throw new UsageError(`invalid --endpoint "${flags.endpoint}": not a URL`, { cause: err });
    }
    cfg.endpoint = flags.endpoint;
  }
  if (flags.region !== undefined) cfg.region = flags.region;
  return cfg;
}
