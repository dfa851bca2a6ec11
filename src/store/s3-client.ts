/**
 * The S3 client of a store (config.ts holds the SDK-free configuration, so
 * that local commands never load the SDK: docs/startup.md).
 */
import { S3Client, type S3ClientConfig } from '@aws-sdk/client-s3';
import { DEFAULT_S3_TIMEOUTS, effectiveEndpoint, isLoopback, resolveS3Timeouts, s3RequestHandler, type S3Timeouts, type StoreConfig } from './config.js';
import { resolveChecksumPolicy, type ChecksumMode } from './upload-options.js';

export interface S3ClientOptions {
  /** SDK retry attempts (default 5: transient 5xx/resets are retried by the SDK). */
  maxAttempts?: number;
  /** Overrides the store config and the environment (see resolveChecksumPolicy). */
  requestChecksumCalculation?: ChecksumMode;
}

/**
 * Builds the S3 client for a store. Region falls back to us-east-1 only for
 * custom endpoints (local servers ignore it); for AWS the SDK resolves it from
 * env/profile and a missing region becomes a clear error at first use.
 */
export function createS3Client(cfg: StoreConfig, opts: S3ClientOptions = {}, env: NodeJS.ProcessEnv = process.env): S3Client {
  const endpoint = effectiveEndpoint(cfg, env);
  const timeouts = resolveS3Timeouts(cfg.timeouts);
  const config: S3ClientConfig = {
    // An endpoint that accepts connections and never answers must not hang anything (store.timeouts).
    requestHandler: s3RequestHandler(timeouts),
    maxAttempts: opts.maxAttempts ?? 5,
    // Checksums (upload-options.ts): this option, then the store config, then AWS_* env, then WHEN_SUPPORTED.
    ...resolveChecksumPolicy({ ...cfg, ...(opts.requestChecksumCalculation ? { requestChecksumCalculation: opts.requestChecksumCalculation } : {}) }, env),
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

const clientTimeouts = new WeakMap<S3Client, S3Timeouts>();

/** The timeouts a client was made with (defaults for clients made elsewhere). */
export function timeoutsOf(client: S3Client): S3Timeouts {
  return clientTimeouts.get(client) ?? { ...DEFAULT_S3_TIMEOUTS };
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
