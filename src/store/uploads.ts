/**
 * Stale incomplete multipart uploads under the archive prefix: a crashed
 * agent or a server that refused AbortMultipartUpload leaves parts behind
 * that are billed but invisible. List and abort them.
 */
import { AbortMultipartUploadCommand, ListMultipartUploadsCommand, type S3Client } from '@aws-sdk/client-s3';
import { StoreCapabilityError } from './errors.js';
import { httpStatusOf, mapS3Error } from './s3-errors.js';

export interface IncompleteUpload {
  key: string;
  uploadId: string;
  initiated?: string;
  /** Age in seconds at listing time, when the server reports Initiated. */
  ageSeconds?: number;
}

export const CANNOT_LIST_MESSAGE = 'this S3 server cannot list multipart uploads';

/** Lists every incomplete multipart upload whose key starts with `prefix` (paginated). */
export async function listIncompleteUploads(client: S3Client, bucket: string, prefix: string, now = Date.now()): Promise<IncompleteUpload[]> {
  const out: IncompleteUpload[] = [];
  let keyMarker: string | undefined;
  let uploadIdMarker: string | undefined;
  for (let page = 0; page < 100_000; page++) {
    let res;
    try {
      res = await client.send(
        new ListMultipartUploadsCommand({
          Bucket: bucket,
          ...(prefix ? { Prefix: prefix } : {}),
          ...(keyMarker ? { KeyMarker: keyMarker } : {}),
          ...(uploadIdMarker ? { UploadIdMarker: uploadIdMarker } : {}),
        }),
      );
    } catch (err) {
      const status = httpStatusOf(err);
      if (status === 501 || status === 405) {
        throw new StoreCapabilityError(`${CANNOT_LIST_MESSAGE} (ListMultipartUploads answered ${status})`, { cause: err });
      }
      throw mapS3Error(err, 'ListMultipartUploads', { bucket });
    }
    // A server that does not know `?uploads` may answer with a ListObjects
    // result (fauxqs 1.9.2 does): it parses as an empty list without the
    // Bucket element every real ListMultipartUploadsResult carries. Treat
    // that as "cannot list" rather than as "nothing to clean up".
    if (res.Bucket === undefined) {
      throw new StoreCapabilityError(`${CANNOT_LIST_MESSAGE} (its ListMultipartUploads answer is not a ListMultipartUploadsResult)`);
    }
    for (const u of res.Uploads ?? []) {
      if (!u.Key || !u.UploadId) continue;
      const item: IncompleteUpload = { key: u.Key, uploadId: u.UploadId };
      if (u.Initiated) {
        item.initiated = u.Initiated.toISOString();
        item.ageSeconds = Math.max(0, Math.round((now - u.Initiated.getTime()) / 1000));
      }
      out.push(item);
    }
    if (!res.IsTruncated) break;
    keyMarker = res.NextKeyMarker;
    uploadIdMarker = res.NextUploadIdMarker;
    if (!keyMarker && !uploadIdMarker) break;
  }
  return out;
}

export interface AbortResult {
  aborted: IncompleteUpload[];
  failed: { upload: IncompleteUpload; error: string }[];
}

/** Aborts uploads older than `olderThanSeconds` (default: all). */
export async function abortIncompleteUploads(
  client: S3Client,
  bucket: string,
  prefix: string,
  opts: { olderThanSeconds?: number; now?: number } = {},
): Promise<AbortResult> {
  const uploads = await listIncompleteUploads(client, bucket, prefix, opts.now);
  const min = opts.olderThanSeconds ?? 0;
  const result: AbortResult = { aborted: [], failed: [] };
  for (const u of uploads) {
    if (min > 0 && (u.ageSeconds === undefined || u.ageSeconds < min)) continue;
    try {
      await client.send(new AbortMultipartUploadCommand({ Bucket: bucket, Key: u.key, UploadId: u.uploadId }));
      result.aborted.push(u);
    } catch (err) {
      result.failed.push({ upload: u, error: mapS3Error(err, 'AbortMultipartUpload', { bucket, key: u.key }).message });
    }
  }
  return result;
}
