import { UsageError } from '../errors.js';
import type { ChecksumMode, UploadOptions } from './upload-options.js';
import { isHostId } from '../names.js';

/*
 * Pure configuration: no S3 SDK import here, so commands that never talk to
 * S3 (local archives) do not load it; the client lives in s3-client.ts.
 */

/** The bucket the embedded S3 server creates (src/store/embedded-s3.ts). */
export const DEFAULT_EMBEDDED_BUCKET = 'cowstream';

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
  /** Static credentials (the embedded store's generated keys); otherwise the SDK default chain. */
  credentials?: { accessKeyId: string; secretAccessKey: string; sessionToken?: string };
  /** Default: $AWS_REQUEST_CHECKSUM_CALCULATION, else WHEN_SUPPORTED (every part carries a checksum). */
  requestChecksumCalculation?: ChecksumMode;
  /** Default: $AWS_RESPONSE_CHECKSUM_VALIDATION, else WHEN_SUPPORTED. */
  responseChecksumValidation?: ChecksumMode;
  /** Storage class, SSE, Object Lock and part checksum algorithm of archive uploads (upload-options.ts). */
  upload?: UploadOptions;
  /** Network timeouts (see S3Timeouts); every field defaults. */
  timeouts?: Partial<S3Timeouts>;
}

/** The endpoint the SDK will use: explicit config, else the standard env variables. */
export function effectiveEndpoint(cfg: Pick<StoreConfig, 'endpoint'>, env: NodeJS.ProcessEnv = process.env): string | undefined {
  return cfg.endpoint ?? env.AWS_ENDPOINT_URL_S3 ?? env.AWS_ENDPOINT_URL ?? undefined;
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

/** True for http(s)://127.x / localhost / [::1] endpoints. */
export function isLoopback(endpoint: string): boolean {
  try {
    const host = new URL(endpoint).hostname.replace(/^\[|\]$/g, '');
    return host === 'localhost' || host === '::1' || /^127\./.test(host);
  } catch {
    return false;
  }
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
  if (!isHostId(hostId)) {
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

/** What the catalogue makes of an object key under a configured prefix (classifyArchiveKey). */
export type ArchiveKeyClass =
  /** Not under `<prefix>/archives/`: not the catalogue's business. */
  | { kind: 'outside' }
  /** Exactly `<prefix>/archives/<hostId>/<uuid>.cwa`; uuid lower-cased. */
  | { kind: 'archive'; hostId: string; uuid: string }
  /** Under `<prefix>/archives/` but not an archive key; hostId = the first segment when it is a valid host id. */
  | { kind: 'invalid'; hostId: string | null; reason: string };

const UUID_NAME = /^([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\.cwa$/i;

/**
 * The only shape of key the catalogue indexes: the configured prefix, then
 * `archives/`, ONE host segment and `<uuid>.cwa` — nothing nested. A host
 * role may write anything under its own `archives/<host>/`, so a key such as
 * `archives/evil/x/archives/A/<uuid>.cwa` must never be read as host A's.
 */
export function classifyArchiveKey(key: string, prefix: string): ArchiveKeyClass {
  const base = archivesPrefix(prefix);
  if (!key.startsWith(base)) return { kind: 'outside' };
  const parts = key.slice(base.length).split('/');
  const first = parts[0] ?? '';
  const hostId = parts.length > 1 && isHostId(first) ? first : null;
  const invalid = (reason: string): ArchiveKeyClass => ({ kind: 'invalid', hostId, reason: `${reason}; archives are stored only as ${base}<hostId>/<uuid>.cwa` });
  if (parts.length === 1) return invalid(`key ${key} has no host segment`);
  if (!isHostId(first)) return invalid(`key ${key} has no valid host segment ("${first}")`);
  if (parts.length > 2) return invalid(`key ${key} is nested below host ${first}`);
  const m = UUID_NAME.exec(parts[1]!);
  if (!m) return invalid(`key ${key} is not named <uuid>.cwa`);
  return { kind: 'archive', hostId: first, uuid: m[1]!.toLowerCase() };
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
  /** Static keys (e.g. an embedded store's, from its credentials.json); else the AWS chain. */
  credentials?: { accessKeyId: string; secretAccessKey: string };
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
  if (flags.credentials !== undefined) cfg.credentials = flags.credentials;
  return cfg;
}
