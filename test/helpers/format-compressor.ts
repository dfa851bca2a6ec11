/**
 * A real zstd Compressor for format unit tests, running zstd-codec (wasm) on
 * the main thread. It exists so the format tests do not depend on the
 * worker pool (src/codec/zstd-pool.ts, another module); the archive bytes it
 * produces are genuine zstd frames, so `zstd -d` could read them.
 */
import { createRequire } from 'node:module';
import { CodecError } from '../../src/errors.js';
import type { Compressor } from '../../src/codec/types.js';

interface Simple {
  compress(data: Uint8Array, level: number): Uint8Array | null;
  decompress(data: Uint8Array): Uint8Array | null;
}
interface Generic {
  contentSize(data: Uint8Array): number | null;
}
interface ZstdBinding {
  Simple: new () => Simple;
  Generic: new () => Generic;
}

const require = createRequire(import.meta.url);
const { ZstdCodec } = require('zstd-codec') as { ZstdCodec: { run(cb: (z: ZstdBinding) => void): void } };

let ready: Promise<ZstdBinding> | undefined;
function binding(): Promise<ZstdBinding> {
  ready ??= new Promise((resolve) => ZstdCodec.run(resolve));
  return ready;
}

export class TestZstdCompressor implements Compressor {
  compressCalls = 0;

  constructor(private readonly level = 1) {}

  async compress(data: Uint8Array): Promise<Buffer> {
    const z = await binding();
    this.compressCalls++;
    const out = new z.Simple().compress(data, this.level);
    if (out === null) throw new CodecError('zstd compress failed');
    return Buffer.from(out.buffer, out.byteOffset, out.byteLength);
  }

  async decompress(data: Uint8Array, expectedSize: number): Promise<Buffer> {
    const z = await binding();
    // Bound the output by the caller's size before zstd allocates (never trust the frame header).
    const size = new z.Generic().contentSize(data);
    if (size === null || size !== expectedSize) throw new CodecError(`zstd frame content size ${size}, expected ${expectedSize}`);
    const out = new z.Simple().decompress(data);
    if (out === null || out.length !== expectedSize) throw new CodecError('zstd decompress failed');
    return Buffer.from(out.buffer, out.byteOffset, out.byteLength);
  }

  async close(): Promise<void> {}
}

/** A compressor that fails (for writer error-path tests). */
export class FailingCompressor implements Compressor {
  async compress(): Promise<Buffer> {
    throw new CodecError('injected compression failure');
  }

  async decompress(): Promise<Buffer> {
    throw new CodecError('injected decompression failure');
  }

  async close(): Promise<void> {}
}
