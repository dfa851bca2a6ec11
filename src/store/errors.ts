import { NotFoundError, StoreError } from '../errors.js';

/**
 * The S3 endpoint does not implement an operation we rely on (s3rver 3.7.1
 * answers ListMultipartUploads with 501 NotImplemented and
 * AbortMultipartUpload with 405 MethodNotAllowed).
 */
export class StoreCapabilityError extends StoreError {
  override readonly code: string = 'STORE_UNSUPPORTED';
}

/** Credentials missing, rejected, or access denied by the endpoint. */
export class StoreAccessError extends StoreError {
  override readonly code: string = 'STORE_ACCESS';
}

/** A bucket or object that does not exist. */
export class StoreNotFoundError extends NotFoundError {
  override readonly code: string = 'STORE_NOT_FOUND';
}

/** The object's ETag is no longer the one a read was pinned to: it was replaced. */
export class ObjectChangedError extends StoreError {
  override readonly code: string = 'OBJECT_CHANGED';
}
