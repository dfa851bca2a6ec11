// Minimal typings for s3rver 3.7.1 (ships none); only what embedded-s3.ts uses.
declare module 's3rver' {
  import type { EventEmitter } from 'node:events';
  interface S3rverOptions {
    address?: string;
    port?: number;
    directory?: string;
    silent?: boolean;
    resetOnClose?: boolean;
    vhostBuckets?: boolean;
    allowMismatchedSignatures?: boolean;
    configureBuckets?: Array<{ name: string; configs?: Array<string | Buffer> }>;
  }
  class S3rver extends EventEmitter {
    constructor(options?: S3rverOptions);
    run(): Promise<import('node:net').AddressInfo | string>;
    close(): Promise<void>;
    /** Creates the configured buckets (run() does this before listening). */
    configureBuckets(): Promise<unknown>;
    /** Koa's request handler: serves requests on a server we own. */
    callback(): import('node:http').RequestListener;
    /** winston logger (silent when `silent`); closed with the server. */
    logger?: { close(): void };
  }
  export default S3rver;
}
