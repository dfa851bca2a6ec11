/** Compression service used by the archive writer and restore. */
export interface Compressor {
  /** zstd-compress `data` at the configured level. */
  compress(data: Uint8Array): Promise<Buffer>;
  /** Decompress; `expectedSize` bounds the output (never trust a frame header). */
  decompress(data: Uint8Array, expectedSize: number): Promise<Buffer>;
  /** Starts up to `count` workers ahead of the first job (pools only). */
  prestart?(count: number): void;
  close(): Promise<void>;
}

/** Result of ExtentCompressor.compressExtent (docs/FORMAT.md "Payload"). */
export interface CompressedExtent {
  /** SHA-256(plaintext) || body, in one buffer (the unencrypted stored payload). */
  inner: Buffer;
  /** true: body is a zstd frame strictly smaller than the plaintext; false: body is the plaintext ("stored raw"). */
  compressed: boolean;
  /** SHA-256 of the plaintext (= inner[0..32)). */
  plainSha256: Buffer;
  /** SHA-256(inner), when requested with `hashInner`. */
  innerSha256?: Buffer;
}

export interface CompressExtentOptions {
  /** Also hash `inner` (the stored-payload digest of an unencrypted extent). Default true. */
  hashInner?: boolean;
  /**
   * Hand `plain`'s memory to the compressor instead of copying it. Only for
   * buffers from acquireBuffer(); `plain` is unusable (detached) afterwards.
   */
  transfer?: boolean;
}

/**
 * Optional richer interface (ZstdPool implements it): does all per-extent
 * CPU work — hashing, compression, the raw-vs-compressed choice, laying out
 * digest || body — off the caller's thread, and lets the caller pack data
 * straight into transferable buffers (no copy on hand-over).
 */
export interface ExtentCompressor extends Compressor {
  compressExtent(plain: Uint8Array, opts?: CompressExtentOptions): Promise<CompressedExtent>;
  /** A buffer of at least `minBytes` that compressExtent can take over with `transfer: true`. */
  acquireBuffer(minBytes: number): Buffer;
  /** Returns an acquired buffer that was not transferred (bounded free list). */
  releaseBuffer(buf: Buffer): void;
}

export function isExtentCompressor(c: Compressor): c is ExtentCompressor {
  const x = c as Partial<ExtentCompressor>;
  return typeof x.compressExtent === 'function' && typeof x.acquireBuffer === 'function' && typeof x.releaseBuffer === 'function';
}

/** Options of PayloadUnpacker.unpackPayload (docs/FORMAT.md "Payload"). */
export interface UnpackPayloadOptions {
  /** The extent header's compressed flag: body is a zstd frame, else the plaintext itself. */
  compressed: boolean;
  /** Exact plaintext length from the extent header (never trust a frame header). */
  plainLength: number;
  /** When given, SHA-256(stored) must equal it: the extent header's stored-payload digest. */
  payloadSha256?: Uint8Array;
  /** Check SHA-256(plaintext) against the payload's leading digest. */
  checkPlain: boolean;
}

/**
 * Optional restore-side interface (ZstdPool implements it): checks and
 * unpacks one stored payload (`SHA-256(plain) || body`) off the caller's
 * thread — stored-payload digest, decompression, plaintext digest — so a
 * restore's main thread only moves bytes. Digest mismatches reject with
 * ChecksumError, undecodable bodies with CodecError.
 */
export interface PayloadUnpacker extends Compressor {
  unpackPayload(stored: Uint8Array, opts: UnpackPayloadOptions): Promise<Buffer>;
  /** Takes back an unpackPayload result the caller is done with (its memory is reused); ignores other buffers. */
  releaseBuffer(buf: Buffer): void;
}

export function isPayloadUnpacker(c: Compressor): c is PayloadUnpacker {
  const x = c as Partial<PayloadUnpacker>;
  return typeof x.unpackPayload === 'function' && typeof x.releaseBuffer === 'function';
}
