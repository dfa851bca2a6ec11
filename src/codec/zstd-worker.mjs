// zstd worker for ZstdPool (src/codec/zstd-pool.ts).
//
// Plain JavaScript on purpose: a worker_threads entry point must load under
// plain node, tsx and vitest alike, and none of them agree on how to load a
// .ts worker.
//
// Two backends behind one protocol (workerData.backend, chosen by the pool):
//
// 'native' (default): node:zlib's zstd (libzstd inside Node ≥ 22.15), called
// synchronously in this worker so the digests, the codec and the transfer of
// one extent stay one job off the main thread (docs/zstd.md: measured against
// the async API on libuv's pool). The sync API builds a fresh context per call
// and, left alone, a fresh output buffer too; we aim its output at buffers
// that outlive the job instead (zlibInto):
//   - compression writes into one scratch buffer per worker (sized by the
//     output bound, ZSTD_COMPRESSBOUND), then the frame is copied once into
//     the exact-size result that is transferred to the pool;
//   - decompression writes into the output buffer the pool lends with the
//     job (expected + slack), which goes back to the pool with the reply;
//   so no job leaves a multi-MiB ArrayBuffer behind as garbage (docs/memory.md);
//   - pledgedSrcSize lets zstd size its window and tables to the input;
//   - decompression is capped by maxOutputLength = expected (ERR_BUFFER_TOO_LARGE
//     instead of writing past it) and ZSTD_d_windowLogMax (a forged window
//     descriptor cannot make the decoder allocate 2^31 bytes).
//
// 'wasm' (fallback, COWSTREAM_ZSTD=wasm or a runtime without zlib zstd): the
// zstd-codec emscripten binding, driven directly instead of its `Simple`
// wrapper: `Simple` allocates two fresh C++ vectors per call, zero-fills the
// destination and copies the result out through embind element by element.
// Reusing two vectors and copying out of a heap view measured ~1.8x faster on
// 4 MiB inputs (216 → 390 MB/s at level 1 on this machine).
//
// wasm memory: the module declares a 16 MiB maximum memory, of which ~5 MiB is
// static data and stack. That fits one 4 MiB extent at levels ≤ 5 only. When
// allowed, we raise the declared maximum of the memory import in the module
// bytes (same-length LEB128 edit, see patchMemoryMax) so the heap is a fixed,
// configured size (`memoryBytes`) — bounded, never sized by input.
//
// Protocol (all ArrayBuffers are transferred, never copied by postMessage):
//   in:  { id, op: 'compress',   buf, len, level }
//        { id, op: 'decompress', buf, len, expected }
//        { id, op: 'extent',     buf, len, level, hashInner }
//        { id, op: 'unpack',     buf, len, expected, compressed, payloadSha?, checkPlain, out? }
//                                 out = a lent ArrayBuffer for the plaintext (returned as buf, or as spare)
//        { id, op: 'crash' }      test hook: the worker dies while holding this job
//   out: { id, ok: true,  buf, len, input }   input = the request's buf, handed back for reuse
//        'unpack' replies carry { off } (a raw body comes back inside the request's own buf,
//        then without `input`)
//        'extent' replies also carry { compressed, plainSha, innerSha? } (see compressExtent)
//        { id, ok: false, message, fatal, checksum, input }   fatal = the codec runtime aborted;
//                                            checksum = a digest did not match;
//                                            the worker exits after replying.
import { parentPort, workerData } from 'node:worker_threads';
import { createRequire } from 'node:module';
import { readFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import * as zlib from 'node:zlib';

const require = createRequire(import.meta.url);
const WASM_PAGE = 65536;

/** Reads an unsigned LEB128 at `pos`; returns [value, nextPos]. */
function readLeb(bytes, pos) {
  let result = 0;
  let shift = 0;
  for (let i = 0; i < 5; i++) {
    const b = bytes[pos++];
    if (b === undefined) throw new Error('truncated LEB128');
    result += (b & 0x7f) * 2 ** shift;
    if ((b & 0x80) === 0) return [result, pos];
    shift += 7;
  }
  throw new Error('LEB128 too long');
}

/** Skips a wasm `name` (LEB length + bytes). */
function skipName(bytes, pos) {
  const [len, p] = readLeb(bytes, pos);
  return p + len;
}

/**
 * Rewrites the maximum of the module's imported memory to `pages` when the
 * existing encoding has the same LEB128 length (so no section sizes change).
 * Returns the patched copy, or null when the module is not shaped as expected
 * (then the caller keeps the stock 16 MiB).
 */
function patchMemoryMax(wasm, pages) {
  if (wasm[0] !== 0 || wasm[1] !== 0x61 || wasm[2] !== 0x73 || wasm[3] !== 0x6d) return null;
  let pos = 8;
  while (pos < wasm.length) {
    const id = wasm[pos];
    const [size, body] = readLeb(wasm, pos + 1);
    if (id === 2) {
      let p = body;
      let count;
      [count, p] = readLeb(wasm, p);
      for (let i = 0; i < count; i++) {
        p = skipName(wasm, p);
        p = skipName(wasm, p);
        const kind = wasm[p++];
        if (kind === 0) {
          p = readLeb(wasm, p)[1];
        } else if (kind === 1) {
          p++; // elem type
          const flags = wasm[p++];
          p = readLeb(wasm, p)[1];
          if (flags & 1) p = readLeb(wasm, p)[1];
        } else if (kind === 2) {
          const flags = wasm[p++];
          p = readLeb(wasm, p)[1];
          if ((flags & 1) === 0) return null;
          const [, end] = readLeb(wasm, p);
          const oldLen = end - p;
          const enc = [];
          let v = pages;
          do {
            let b = v & 0x7f;
            v = Math.floor(v / 128);
            if (v !== 0) b |= 0x80;
            enc.push(b);
          } while (v !== 0);
          if (enc.length !== oldLen) return null;
          const out = new Uint8Array(wasm);
          out.set(enc, p);
          return out;
        } else if (kind === 3) {
          p += 2; // valtype + mut
        } else {
          return null;
        }
      }
      return null;
    }
    pos = body + size;
  }
  return null;
}

/** Loads zstd-codec's wasm binding with `memoryBytes` of linear memory. */
function loadBinding(memoryBytes) {
  const bindingPath = require.resolve('zstd-codec/lib/zstd-codec-binding-wasm.js');
  const Module = {};
  const pages = Math.ceil(memoryBytes / WASM_PAGE);
  if (pages > 256) {
    const text = readFileSync(bindingPath, 'latin1');
    const m = /data:application\/octet-stream;base64,([A-Za-z0-9+/=]+)/.exec(text);
    const patched = m ? patchMemoryMax(Buffer.from(m[1], 'base64'), pages) : null;
    if (patched) {
      Module.wasmBinary = patched;
      Module.TOTAL_MEMORY = pages * WASM_PAGE;
    }
  }
  // emscripten prints aborts itself; keep worker stderr quiet, we report them.
  Module.print = () => {};
  Module.printErr = () => {};
  return new Promise((resolve, reject) => {
    // Resolve with a wrapper: the emscripten Module object has its own `then`,
    // so resolving with it directly would never settle.
    Module.onRuntimeInitialized = () => resolve({ b: Module });
    Module.onAbort = (what) => reject(new Error(`zstd runtime aborted during load: ${what}`));
    require(bindingPath)(Module);
  });
}

/** ZSTD_COMPRESSBOUND from zstd.h: the largest frame a valid input of `n` bytes can produce. */
export function compressBound(n) {
  return n + (n >>> 8) + (n < 128 * 1024 ? (128 * 1024 - n) >>> 11 : 0);
}

/** zlib's smallest chunkSize (Z_MIN_CHUNK). */
const MIN_CHUNK = 64;
/**
 * Room past `expected` in the decompression output: a chunk that ends exactly
 * full makes zlib allocate a second chunk to look for more output.
 */
export const DECOMPRESS_SLACK = 64;

/**
 * An ArrayBuffer holding `out` at offset 0, to transfer as a result. zlib's
 * output is a view at offset 0 of its own chunk buffer; that buffer is handed
 * over without a copy when it is larger than Buffer.poolSize (so it cannot be
 * the worker's shared allocation pool, which a transfer would detach) and
 * not much larger than the output (a 4 MiB chunk must not ride along with a
 * 200-byte frame). Anything else is copied out.
 */
function ownBuffer(out) {
  const ab = out.buffer;
  if (out.byteOffset === 0 && ab.byteLength > Buffer.poolSize && ab.byteLength - out.length <= 64 * 1024) return ab;
  return ab.slice(out.byteOffset, out.byteOffset + out.length);
}

/**
 * Runs one zlib zstd job (a whole input, finished) with its output written
 * straight into `into` (a Buffer this worker owns or the pool lent), instead
 * of into the fresh chunk the one-shot *Sync functions allocate per call. That
 * per-call chunk (4 MiB per extent) is garbage the moment the job ends, and
 * garbage held in ArrayBuffers is freed only when V8 next collects: measured
 * 30 full GCs and ~200 MiB of external memory on the main thread of a 1 GiB
 * restore (docs/memory.md). This is the very path zstd*Sync takes
 * (zlibBufferSync → _processChunk), only aimed at our buffer: the engine
 * starts with the smallest chunk (MIN_CHUNK, from the shared pool), then
 * _outBuffer/_chunkSize point at `into`. Returns the output length when it
 * landed in `into`, or the output Buffer when zlib had to go past it (then
 * it allocated as usual); returns null when this runtime's zlib lacks the
 * fields (the caller falls back to the *Sync call).
 */
function zlibInto(Engine, input, opts, into) {
  const engine = new Engine({ ...opts, chunkSize: MIN_CHUNK });
  if (!('_outBuffer' in engine) || !('_outOffset' in engine) || !('_chunkSize' in engine) || typeof engine._processChunk !== 'function') {
    engine.close();
    return null;
  }
  engine._outBuffer = into;
  engine._outOffset = 0;
  engine._chunkSize = into.length;
  const out = engine._processChunk(input, engine._finishFlushFlag);
  if (out.buffer === into.buffer && out.byteOffset === into.byteOffset) return out.length;
  return out;
}

/**
 * The 'native' backend: node:zlib zstd. Levels are validated by the pool;
 * windowLogMax bounds the decoder's window whatever a frame header claims.
 * Outputs land in buffers that live across jobs (zlibInto): compression in
 * one scratch buffer per worker, sized for the largest input so far (≤ the
 * pool's maxInputBytes bound), decompression in the pool's lent buffer.
 */
export function nativeBackend(windowLogMax) {
  const C = zlib.constants;
  let scratch = Buffer.alloc(0);
  const compressOpts = (input, level) => ({
    pledgedSrcSize: input.length,
    params: { [C.ZSTD_c_compressionLevel]: level },
  });
  const compressTo = (input, level) => {
    const bound = Math.max(MIN_CHUNK, compressBound(input.length));
    if (scratch.length < bound) scratch = Buffer.allocUnsafeSlow(bound);
    const r = zlibInto(zlib.ZstdCompress, input, compressOpts(input, level), scratch.subarray(0, bound));
    if (typeof r === 'number') return [scratch, r];
    // Fallback (a zlib without the fields zlibInto needs): one allocation per call.
    const out = r ?? zlib.zstdCompressSync(input, { ...compressOpts(input, level), chunkSize: bound });
    return [out, out.length];
  };
  const decompressOpts = (expected) => ({
    maxOutputLength: Math.max(1, expected),
    params: { [C.ZSTD_d_windowLogMax]: windowLogMax },
  });
  const decompressTo = (input, expected, into) => {
    if (into && into.length >= expected + DECOMPRESS_SLACK) {
      const r = zlibInto(zlib.ZstdDecompress, input, decompressOpts(expected), into.subarray(0, expected + DECOMPRESS_SLACK));
      if (typeof r === 'number') return [into.buffer, r];
      if (r !== null) return [ownBuffer(r), r.length];
    }
    const out = zlib.zstdDecompressSync(input, { ...decompressOpts(expected), chunkSize: Math.max(MIN_CHUNK, expected + DECOMPRESS_SLACK) });
    return [ownBuffer(out), out.length];
  };
  return {
    compressTo,
    compress(input, level) {
      const [out, len] = compressTo(input, level);
      return [out.buffer.slice(out.byteOffset, out.byteOffset + len), len];
    },
    /** The compressed bytes of the last compressTo(), as a view. */
    view: (out, len) => out.subarray(0, len),
    /** Decompresses into `into` (an ArrayBuffer the pool lent) when it has room for expected + slack. */
    decompress(input, expected, into) {
      try {
        return decompressTo(input, expected, into ? Buffer.from(into) : undefined);
      } catch (err) {
        if (err?.code === 'ERR_BUFFER_TOO_LARGE') throw new Error(`zstd decompress failed: output larger than ${expected} bytes`);
        throw new Error(`zstd decompress failed: corrupt frame or output larger than ${expected} bytes (${err?.code ?? err?.message ?? err})`);
      }
    },
  };
}

/** The 'wasm' backend: zstd-codec in a fixed-size heap. */
async function wasmBackend(memoryBytes) {
  const { b } = await loadBinding(memoryBytes);
  const z = { b, codec: new b.ZstdCodec(), src: new b.VectorU8(), dst: new b.VectorU8() };
  return {
    compressTo: (input, level) => [z.dst, zstdInto(z, input, level)],
    compress: (input, level) => compress(z, input, level),
    view: (dst, len) => b.toTypedArrayView(dst).subarray(0, len),
    decompress: (input, expected, into) => decompress(z, input, expected, into),
  };
}

/**
 * Makes `vec` (a C++ std::vector<uint8_t> in the wasm heap) hold exactly
 * `input`. zstd-codec's cloneToVector goes through an embind `val` call that
 * profiled at ~2 GB/s; resizing the vector (which keeps its capacity, so this
 * allocates only when an input is larger than any before) and then copying
 * into a heap view of its storage is a plain memcpy.
 */
function fillVector(b, vec, input) {
  vec.resize(input.length, 0);
  if (input.length > 0) b.toTypedArrayView(vec).set(input);
}

/**
 * Copies `len` bytes out of the wasm heap into `into` (an ArrayBuffer the
 * pool lent with the request, reused across jobs: no allocation, no garbage)
 * when it is large enough, else into a fresh transferable ArrayBuffer.
 */
function takeOutput(b, vec, len, into) {
  if (into && into.byteLength >= len) {
    new Uint8Array(into, 0, len).set(b.toTypedArrayView(vec).subarray(0, len));
    return into;
  }
  const out = Buffer.allocUnsafeSlow(len);
  out.set(b.toTypedArrayView(vec).subarray(0, len));
  if (out.byteOffset === 0 && out.buffer.byteLength === len) return out.buffer;
  return out.buffer.slice(out.byteOffset, out.byteOffset + len);
}

/** zstd-compresses `input` into the reused `dst` vector; returns the compressed length. */
function zstdInto(z, input, level) {
  const { b, codec, src, dst } = z;
  fillVector(b, src, input);
  const bound = codec.compressBound(input.length);
  if (bound < 0) throw new Error(`input of ${input.length} bytes is too large for zstd`);
  if (dst.size() < bound) dst.resize(bound, 0);
  const rc = codec.compress(dst, src, level);
  if (rc < 0) throw new Error(`zstd compress failed (code ${rc})`);
  return rc;
}

function compress(z, input, level) {
  const rc = zstdInto(z, input, level);
  return [takeOutput(z.b, z.dst, rc), rc];
}

function decompress(z, input, expected, into) {
  const { b, codec, src, dst } = z;
  fillVector(b, src, input);
  // The destination is exactly `expected` bytes: ZSTD_decompress stops with
  // dstSize_tooSmall instead of writing past it, whatever the frame header says.
  dst.resize(expected, 0);
  const rc = codec.decompress(dst, src);
  if (rc < 0) {
    throw new Error(`zstd decompress failed: corrupt frame or output larger than ${expected} bytes (code ${rc})`);
  }
  return [takeOutput(b, dst, rc, into), rc];
}

const SHA256_BYTES = 32;

/**
 * The archive writer's whole per-extent CPU work except packing, so the main
 * thread only packs clusters and writes bytes (docs/FORMAT.md "Payload"):
 *   plainSha = SHA-256(input)
 *   body     = zstd(input) when strictly smaller, else input ("stored raw")
 *   inner    = plainSha || body          (one fresh buffer, built in place: no concat)
 *   innerSha = SHA-256(inner)            (only when hashInner: the stored-payload
 *                                         digest of an unencrypted extent)
 * SHA-256 runs in this thread through node:crypto (OpenSSL, SHA-NI when present).
 */
function compressExtent(z, input, level, hashInner) {
  const plainSha = createHash('sha256').update(input).digest();
  const [dst, rc] = z.compressTo(input, level);
  const compressed = rc < input.length;
  const bodyLen = compressed ? rc : input.length;
  const out = Buffer.allocUnsafeSlow(SHA256_BYTES + bodyLen);
  plainSha.copy(out, 0);
  out.set(compressed ? z.view(dst, rc) : input, SHA256_BYTES);
  const innerSha = hashInner ? createHash('sha256').update(out).digest() : undefined;
  const buf = out.byteOffset === 0 && out.buffer.byteLength === out.length ? out.buffer : out.buffer.slice(out.byteOffset, out.byteOffset + out.length);
  return { buf, len: out.length, compressed, plainSha: new Uint8Array(plainSha), innerSha: innerSha && new Uint8Array(innerSha) };
}

/** Thrown for a digest mismatch: the pool turns it into a ChecksumError (not a codec failure). */
class DigestMismatch extends Error {}

function hex16(b) {
  return Buffer.from(b.buffer, b.byteOffset, b.length).toString('hex').slice(0, 16);
}

function checkDigest(data, expected, what) {
  const actual = createHash('sha256').update(data).digest();
  if (expected.length !== SHA256_BYTES || !actual.equals(Buffer.from(expected.buffer, expected.byteOffset, expected.length))) {
    throw new DigestMismatch(`${what}: SHA-256 mismatch (stored ${hex16(expected)}…, computed ${actual.toString('hex').slice(0, 16)}…)`);
  }
}

/**
 * The restore side of compressExtent (docs/FORMAT.md "Payload"), so the
 * restoring thread only moves bytes:
 *   input = plainSha || body   (an unencrypted, or already decrypted, stored payload)
 *   1. payloadSha given: SHA-256(input) must equal it (the stored-payload digest);
 *   2. plain = zstd-decompress(body) into exactly `expected` bytes, or body itself
 *      when stored raw (then it must be exactly `expected` bytes);
 *   3. checkPlain: SHA-256(plain) must equal plainSha.
 * Returns [buffer, offset, length, inputConsumed]: the plaintext lands in the
 * lent output buffer `msg.out`; without one, a raw body is handed back inside
 * the input's own buffer (at offset 32) instead of being copied.
 */
function unpack(z, input, msg) {
  if (input.length < SHA256_BYTES) throw new DigestMismatch(`stored payload of ${input.length} bytes is shorter than its ${SHA256_BYTES}-byte digest`);
  if (msg.payloadSha) checkDigest(input, msg.payloadSha, 'stored payload');
  const digest = input.subarray(0, SHA256_BYTES);
  const body = input.subarray(SHA256_BYTES);
  if (msg.compressed) {
    const [buf, len] = z.decompress(body, msg.expected, msg.out);
    if (len !== msg.expected) throw new Error(`zstd decompress failed: decompressed to ${len} bytes, expected ${msg.expected}`);
    if (msg.checkPlain) checkDigest(new Uint8Array(buf, 0, len), digest, 'plaintext');
    return [buf, 0, len, false];
  }
  if (body.length !== msg.expected) throw new DigestMismatch(`raw payload holds ${body.length} bytes, expected ${msg.expected}`);
  if (msg.checkPlain) checkDigest(body, digest, 'plaintext');
  if (msg.out && msg.out.byteLength >= body.length) {
    // Into the lent output buffer, so both buffers stay in the pool's cycle.
    new Uint8Array(msg.out, 0, body.length).set(body);
    return [msg.out, 0, body.length, false];
  }
  return [input.buffer, input.byteOffset + SHA256_BYTES, body.length, true];
}

/**
 * Runs one job message (the protocol above) on backend `z`; returns the reply
 * and the buffers to transfer with it. Never throws: failures are replies.
 * The pool runs small jobs through this same function on its own thread
 * (ZstdPool `inlineBytes`), so both paths give the same results and errors.
 */
export function runJob(z, msg) {
  const { id } = msg;
  try {
    const input = new Uint8Array(msg.buf, 0, msg.len);
    if (msg.op === 'unpack') {
      const [buf, off, len, consumed] = unpack(z, input, msg);
      // Every lent buffer goes back: the input (unless it carries the result),
      // and the output buffer when the result did not land in it.
      const back = { input: consumed ? undefined : msg.buf, spare: msg.out && msg.out !== buf ? msg.out : undefined };
      const transfer = [buf, back.input, back.spare].filter((x) => x !== undefined);
      return { reply: { id, ok: true, buf, off, len, ...back }, transfer };
    }
    if (msg.op === 'extent') {
      const r = compressExtent(z, input, msg.level, msg.hashInner);
      return { reply: { id, ok: true, ...r, input: msg.buf }, transfer: [r.buf, msg.buf] };
    }
    const [buf, len] = msg.op === 'compress' ? z.compress(input, msg.level) : z.decompress(input, msg.expected);
    return { reply: { id, ok: true, buf, len, input: msg.buf }, transfer: [buf, msg.buf] };
  } catch (err) {
    // emscripten aborts (OOM, assertion) leave the runtime unusable; anything
    // thrown that is not one of our own rc checks is treated the same way.
    const message = String(err?.message ?? err);
    const checksum = err instanceof DigestMismatch;
    const fatal = !checksum && !/^zstd (compress|decompress) failed|too large for zstd/.test(message);
    return { reply: { id, ok: false, fatal, checksum, message, input: msg.buf, spare: msg.out }, transfer: msg.out ? [msg.buf, msg.out] : [msg.buf] };
  }
}

// The worker side: only in a thread the pool started (workerData.zstdWorker),
// never when this module is loaded by the pool itself for inline jobs (which
// may run inside some other worker thread, e.g. a test runner's).
if (parentPort !== null && workerData?.zstdWorker === true) {
  const port = parentPort;
  const ready =
    workerData.backend === 'wasm'
      ? wasmBackend(Number(workerData.memoryBytes) || 16 * 1024 * 1024)
      : Promise.resolve(nativeBackend(Number(workerData.windowLogMax) || 23));
  port.on('message', async (msg) => {
    let z;
    try {
      z = await ready;
    } catch (err) {
      port.postMessage({ id: msg.id, ok: false, fatal: true, message: String(err?.message ?? err) });
      process.exit(1);
    }
    if (msg.op === 'crash') process.exit(70);
    const { reply, transfer } = runJob(z, msg);
    port.postMessage(reply, transfer);
    if (reply.fatal) process.exit(1);
  });
}
