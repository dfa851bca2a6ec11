import { CowstreamError, StoreError } from '../errors.js';
import { StoreAccessError, StoreCapabilityError, StoreNotFoundError } from './errors.js';

interface SdkErrorShape {
  name?: string;
  code?: string;
  message?: string;
  $metadata?: { httpStatusCode?: number };
}

/** HTTP status of an SDK error, if it reached the server. */
export function httpStatusOf(err: unknown): number | undefined {
  return (err as SdkErrorShape | null)?.$metadata?.httpStatusCode;
}

/** Error name of an SDK or network error (e.g. NoSuchKey, ECONNREFUSED). */
export function errorNameOf(err: unknown): string {
  const e = err as SdkErrorShape | null;
  if (e?.code && /^E[A-Z]+$/.test(e.code)) return e.code;
  return e?.name ?? 'Error';
}

const ACCESS_NAMES = new Set([
  'InvalidAccessKeyId',
  'SignatureDoesNotMatch',
  'AccessDenied',
  'ExpiredToken',
  'InvalidToken',
  'CredentialsProviderError',
  'AllAccessDisabled',
]);

/**
 * Turns an SDK/network error into the cowstream hierarchy, naming what was
 * being done and where, so the user sees e.g. "bucket "x" does not exist"
 * rather than a bare "NoSuchBucket".
 */
export function mapS3Error(err: unknown, what: string, where: { bucket: string; key?: string; endpoint?: string }): CowstreamError {
  if (err instanceof CowstreamError) return err;
  const name = errorNameOf(err);
  const status = httpStatusOf(err);
  const target = where.key !== undefined ? `s3://${where.bucket}/${where.key}` : `bucket "${where.bucket}"`;
  const at = where.endpoint ? ` at ${where.endpoint}` : '';
  if (name === 'NoSuchBucket') return new StoreNotFoundError(`${what}: bucket "${where.bucket}" does not exist${at}`, { cause: err });
  if (name === 'NoSuchKey' || (name === 'NotFound' && where.key !== undefined) || (status === 404 && where.key !== undefined)) {
    return new StoreNotFoundError(`${what}: ${target} not found${at}`, { cause: err });
  }
  if (name === 'NotFound' || status === 404) return new StoreNotFoundError(`${what}: ${target} not found${at}`, { cause: err });
  if (ACCESS_NAMES.has(name) || status === 403) {
    return new StoreAccessError(`${what}: access to ${target} denied${at} (${name}) — check the AWS credentials / profile`, { cause: err });
  }
  if (name === 'NotImplemented' || status === 501 || name === 'MethodNotAllowed' || status === 405) {
    return new StoreCapabilityError(`${what}: the S3 server${at} does not implement this operation (${name})`, { cause: err });
  }
  if (name === 'ECONNREFUSED' || name === 'ENOTFOUND' || name === 'EHOSTUNREACH' || name === 'ETIMEDOUT') {
    return new StoreError(`${what}: cannot reach the S3 endpoint${at || ''} (${name})`, { cause: err });
  }
  const msg = (err as SdkErrorShape | null)?.message ?? String(err);
  if (/region is missing/i.test(msg)) {
    return new StoreError(`${what}: no AWS region configured — set AWS_REGION or pass --region`, { cause: err });
  }
  if (/could not load credentials/i.test(msg)) {
    return new StoreAccessError(`${what}: no AWS credentials found — set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY`, { cause: err });
  }
  const detail = status !== undefined ? `${name} ${status}` : name === 'Error' ? msg : `${name}: ${msg}`;
  return new StoreError(`${what} (${target}${at}): ${detail}`, { cause: err });
}
