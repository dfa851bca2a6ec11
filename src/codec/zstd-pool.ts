/**
 * ZstdPool: zstd in a pool of worker_threads, implementing the Compressor
 * contract of src/codec/types.ts. The codec is node:zlib's native zstd, or the
 * `zstd-codec` WebAssembly build as the fallback (ZstdBackend, docs/zstd.md).
 *
 * - Up to one worker per core by default (os.availableParallelism()), started
 *   on demand; each worker runs one job at a time. The first jobs, up to
 *   `inlineBytes` of input, run on the calling thread instead (native backend:
 *   the worker's own runJob), so a small archive starts no worker at all.
 * - A BOUNDED queue: at most `maxQueue` jobs wait for a worker. Further callers
 *   await a slot before their job is even queued, so backpressure reaches the
 *   producer (the archive writer, and through it the device reader).
 * - Memory (docs/zstd.md "Memory bound"): the pool's transfer buffers are
 *   ≤ 2 × (workers + maxQueue) × maxInputBytes (an input and an output buffer
 *   per job place, in flight or idle in the free list); on top of that each
 *   worker holds, while it runs a job, one codec context and one output of
 *   ≤ ZSTD_COMPRESSBOUND(maxInputBytes) (native: freed after the job; the
 *   decoder's window is capped at maxInputBytes whatever a frame claims), or
 *   a fixed wasm heap of `wasmMemoryBytes` for its lifetime (wasm).
 * - Inputs are copied once into a pooled ArrayBuffer that is transferred to the
 *   worker (the caller keeps its buffer); results come back transferred too.
 *   compressExtent() with `transfer` skips even that copy: the caller packs
 *   into a buffer from acquireBuffer() and hands it over.
 * - compressExtent() also computes the extent's SHA-256 digests in the worker
 *   (ExtentCompressor, src/codec/types.ts), so the archive writer's main
 *   thread only packs clusters and writes bytes.
 * - decompress() never trusts the frame header: the worker decompresses into
 *   at most `expectedSize` bytes and fails if the frame needs more.
 * - A worker that dies fails its job with CodecError and is replaced.
 */
import { Worker } from 'node:worker_threads';
import { availableParallelism } from 'node:os';
import * as zlib from 'node:zlib';
import { ChecksumError, CodecError } from '../errors.js';
import type { CompressExtentOptions, CompressedExtent, ExtentCompressor, PayloadUnpacker, UnpackPayloadOptions } from './types.js';
import { type JobMessage, type ZstdBackendImpl, DECOMPRESS_SLACK, compressBound as zstdCompressBound, nativeBackend, runJob } from './zstd-worker.mjs';

/** zstd levels this pool accepts (ZSTD_minCLevel fast levels are not exposed). */
export const MIN_ZSTD_LEVEL = 1;
export const MAX_ZSTD_LEVEL = 19;

/** The zstd implementation a pool's workers run. */
export type ZstdBackend = 'native' | 'wasm';

/** The environment variable that selects the backend: `native` or `wasm` (docs/zstd.md). */
export const ZSTD_BACKEND_ENV = 'COWSTREAM_ZSTD';

/** True when this runtime's node:zlib has zstd (Node ≥ 22.15). */
export function nativeZstdAvailable(): boolean {
  return typeof (zlib as { zstdCompressSync?: unknown }).zstdCompressSync === 'function';
}

/**
 * The backend for `COWSTREAM_ZSTD` (unset: native when the runtime has it,
 * else wasm). Asking for native on a runtime without it is an error, not a
 * silent fallback.
 */
export function resolveZstdBackend(env: NodeJS.ProcessEnv = process.env): ZstdBackend {
  const want = env[ZSTD_BACKEND_ENV];
  if (want === undefined || want === '') return nativeZstdAvailable() ? 'native' : 'wasm';
  if (want === 'wasm') return 'wasm';
  if (want === 'native') {
    if (!nativeZstdAvailable()) throw new CodecError(`${ZSTD_BACKEND_ENV}=native, but Node ${process.version} has no zstd in node:zlib (needs ≥ 22.15)`);
    return 'native';
  }
  throw new CodecError(`${ZSTD_BACKEND_ENV} must be 'native' or 'wasm', got '${want}'`);
}

export interface ZstdPoolOptions {
  /** Codec implementation; default resolveZstdBackend() (COWSTREAM_ZSTD). */
  backend?: ZstdBackend;
  /** zstd level, MIN_ZSTD_LEVEL..MAX_ZSTD_LEVEL; default 1. */
  level?: number;
  /** Worker threads; default os.availableParallelism(). */
  workers?: number;
  /** Jobs that may wait for a free worker before callers block; default 2 × workers. */
  maxQueue?: number;
  /**
   * Largest input to compress() and largest expectedSize for decompress();
   * default 8 MiB (an extent carries ≤ 4 MiB, MAX_EXTENT_DATA).
   */
  maxInputBytes?: number;
  /**
   * Job bytes (inputs) the pool runs on the calling thread before it starts
   * its first worker; default DEFAULT_INLINE_BYTES, 0 = always in workers.
   * Native backend only (see DEFAULT_INLINE_BYTES).
   */
  inlineBytes?: number;
  /**
   * Linear memory of each worker's wasm instance (wasm backend only); default 128 MiB (virtual:
   * only touched pages become resident). Level 19 on 4 MiB needs ~60 MiB.
   */
  wasmMemoryBytes?: number;
}

/** Counters for tests and benchmarks. */
export interface ZstdPoolStats {
  backend: ZstdBackend;
  workers: number;
  busy: number;
  queued: number;
  /** Callers blocked because the queue is full. */
  blocked: number;
  completed: number;
  failed: number;
  workersReplaced: number;
  /** Jobs run on the calling thread (inlineBytes). */
  inline: number;
  /** Transfer buffers allocated so far; flat in steady state when callers release what they are lent. */
  buffersAllocated: number;
}

type Op = 'compress' | 'decompress' | 'extent' | 'unpack' | 'crash';

interface Job {
  id: number;
  op: Op;
  input: Uint8Array;
  expected: number;
  /** `input` owns its whole ArrayBuffer and is handed to the worker without a copy. */
  transfer: boolean;
  hashInner: boolean;
  /** Extra message fields of 'unpack' jobs. */
  unpack?: { compressed: boolean; payloadSha?: Uint8Array; checkPlain: boolean };
  resolve: (reply: WorkerReply) => void;
  reject: (e: Error) => void;
}

interface Slot {
  worker: Worker;
  job: Job | null;
  /** Set when the pool itself terminates this worker (close, test hook). */
  retiring: boolean;
}

interface WorkerReply {
  id: number;
  ok: boolean;
  buf?: ArrayBuffer;
  len?: number;
  /** The job's input buffer, handed back for reuse. */
  input?: ArrayBuffer;
  /** A lent output buffer the result did not use, handed back for reuse. */
  spare?: ArrayBuffer;
  /** Offset of the result in `buf` ('unpack' replies; 0 otherwise). */
  off?: number;
  message?: string;
  fatal?: boolean;
  /** A digest did not match ('unpack'). */
  checksum?: boolean;
  /** 'extent' replies. */
  compressed?: boolean;
  plainSha?: Uint8Array;
  innerSha?: Uint8Array;
}

const WORKER_URL = new URL('./zstd-worker.mjs', import.meta.url);
/**
 * Starting a worker costs 0.10–0.14 CPU-s (a thread, an isolate, the worker's
 * module graph; docs/startup.md), the time native zstd needs for ~100 MiB.
 * So the first jobs of a pool, up to this many input bytes, run on the
 * calling thread through the worker's own job function (runJob), and no
 * worker starts for a small archive. 8 MiB is two full extents: ≤ ~30 ms of
 * the calling thread's CPU in total, after which every job goes to workers
 * (a long backup or restore keeps its event loop free).
 */
export const DEFAULT_INLINE_BYTES = 8 * 1024 * 1024;
const DEFAULT_MAX_INPUT = 8 * 1024 * 1024;
const DEFAULT_WASM_MEMORY = 128 * 1024 * 1024;
const BUFFER_ROUNDING = 1024 * 1024;
const WASM_MEMORY_STEP = 16 * 1024 * 1024;
/**
 * Resident memory of a cowstream process before any backup or restore buffer
 * (docs/memory.md): Node 24, the CLI bundle and the AWS SDK (measured 64 MiB
 * for a local `archive list`, 76 MiB with the S3 client and lib-storage
 * loaded; V8's heap of an S3 backup or restore ~50 MiB), plus socket chunks
 * and other short-lived buffers waiting for the next collection. Measured,
 * not configurable; the memory bounds of restore and backup start from it.
 */
export const RUNTIME_RSS_BYTES = 128 * 1024 * 1024;
/**
 * Resident memory of one worker thread apart from the pool's buffers
 * (docs/memory.md): its isolate and heap (~15 MiB idle, measured on Node 24),
 * the libzstd context while it runs a job (≈ 6 MiB at levels ≤ 3 for a
 * 4 MiB input, ZSTD_estimateCCtxSize) and its compression scratch buffer
 * (≤ ZSTD_COMPRESSBOUND(maxInputBytes), counted separately).
 */
export const WORKER_RSS_BYTES = 24 * 1024 * 1024;
/** Extra context memory per worker above level 3 (≈ 60 MiB at level 19 for a 4 MiB input). */
const HIGH_LEVEL_CONTEXT_BYTES = 64 * 1024 * 1024;
/** Magic (4) + frame header descriptor (1) + one block header (3): RFC 8878 §3.1.1. */
const ZSTD_MIN_FRAME = 8;
/** Worker deaths in a row (per worker) without a completed job before the pool gives up. */
const MAX_CONSECUTIVE_DEATHS = 3;

const NOT_A_FRAME = 'decompress input is not a zstd frame (bad magic number)';

/** A single standard zstd frame starts with magic 0xFD2FB528 (little-endian) and is at least ZSTD_MIN_FRAME bytes. */
function isZstdFrame(b: Uint8Array): boolean {
  return b.length >= ZSTD_MIN_FRAME && b[0] === 0x28 && b[1] === 0xb5 && b[2] === 0x2f && b[3] === 0xfd;
}

/**
 * The decoder's window cap for inputs of ≤ maxInputBytes: our frames never
 * need a larger window, and a forged window descriptor must not size an
 * allocation (ZSTD_d_windowLogMax; zstd's own minimum is 2^10).
 */
function windowLogFor(maxInputBytes: number): number {
  return Math.max(10, Math.ceil(Math.log2(maxInputBytes)));
}

function replyBuffer(msg: WorkerReply): Buffer {
  return Buffer.from(msg.buf as ArrayBuffer, msg.off ?? 0, msg.len);
}

function checkInt(value: number, name: string, min: number, max: number): number {
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new CodecError(`${name} must be an integer between ${min} and ${max}, got ${value}`);
  }
  return value;
}

export class ZstdPool implements ExtentCompressor, PayloadUnpacker {
  readonly backend: ZstdBackend;
  readonly level: number;
  readonly workerCount: number;
  readonly maxQueue: number;
  readonly maxInputBytes: number;
  private readonly wasmMemoryBytes: number;
  private readonly slots: Slot[] = [];
  private readonly queue: Job[] = [];
  private readonly blockedCallers: Array<() => void> = [];
  private readonly freeBuffers: ArrayBuffer[] = [];
  /**
   * The pool's own buffers, by ArrayBuffer object: releaseBuffer takes back
   * only these. A transfer to a worker and back yields a NEW ArrayBuffer
   * object for the same memory, so every buffer that comes back from a
   * worker into the pool's hands is registered again (own()).
   */
  private readonly lent = new WeakSet<ArrayBuffer>();
  private allocated = 0;
  private nextId = 1;
  private closed = false;
  private brokenReason: string | null = null;
  private consecutiveDeaths = 0;
  private completed = 0;
  private failed = 0;
  private replaced = 0;
  readonly inlineBytes: number;
  private inlineUsed = 0;
  private inlineJobs = 0;
  /** The calling thread's backend for inline jobs; dropped when the first worker starts. */
  private inlineBackend: ZstdBackendImpl | null = null;

  constructor(options: ZstdPoolOptions = {}) {
    this.backend = options.backend ?? resolveZstdBackend();
    if (this.backend === 'native' && !nativeZstdAvailable()) throw new CodecError(`native zstd needs node:zlib zstd (Node ≥ 22.15), this is ${process.version}`);
    this.level = checkInt(options.level ?? 1, 'zstd level', MIN_ZSTD_LEVEL, MAX_ZSTD_LEVEL);
    this.workerCount = checkInt(options.workers ?? availableParallelism(), 'workers', 1, 256);
    this.maxQueue = checkInt(options.maxQueue ?? 2 * this.workerCount, 'maxQueue', 0, 1 << 16);
    this.maxInputBytes = checkInt(options.maxInputBytes ?? DEFAULT_MAX_INPUT, 'maxInputBytes', 1, 256 * 1024 * 1024);
    this.inlineBytes = this.backend === 'native' ? checkInt(options.inlineBytes ?? DEFAULT_INLINE_BYTES, 'inlineBytes', 0, Number.MAX_SAFE_INTEGER) : 0;
    // ≤ 512 MiB keeps the patched page count a 2-byte LEB128 like the original
    // (see zstd-worker.mjs); whole 16 MiB steps as older emscripten runtimes expect.
    const mem = checkInt(options.wasmMemoryBytes ?? DEFAULT_WASM_MEMORY, 'wasmMemoryBytes', WASM_MEMORY_STEP, 512 * 1024 * 1024);
    this.wasmMemoryBytes = Math.ceil(mem / WASM_MEMORY_STEP) * WASM_MEMORY_STEP;
    // Workers start on demand (pump): each costs ~30 ms of CPU to start, a
    // small archive needs one or two, and a command that never compresses none.
  }

  compress(data: Uint8Array): Promise<Buffer> {
    if (data.length > this.maxInputBytes) {
      return Promise.reject(new CodecError(`compress input of ${data.length} bytes exceeds the pool limit of ${this.maxInputBytes}`));
    }
    return this.submit('compress', data, 0).then(replyBuffer);
  }

  /**
   * Hashes and compresses one extent's plaintext in a worker (see
   * ExtentCompressor): returns SHA-256(plain) || body, where body is the zstd
   * frame if strictly smaller than `plain`, else `plain` itself.
   */
  compressExtent(plain: Uint8Array, opts: CompressExtentOptions = {}): Promise<CompressedExtent> {
    if (plain.length > this.maxInputBytes) {
      return Promise.reject(new CodecError(`compress input of ${plain.length} bytes exceeds the pool limit of ${this.maxInputBytes}`));
    }
    // Only a view at offset 0 of a plain ArrayBuffer can be transferred as is.
    const transfer = opts.transfer === true && plain.byteOffset === 0 && plain.buffer instanceof ArrayBuffer && plain.length > 0;
    return this.submit('extent', plain, 0, transfer, opts.hashInner ?? true).then((msg) => {
      const inner = replyBuffer(msg);
      if (msg.plainSha === undefined || msg.plainSha.length !== 32 || inner.length < 32) throw new CodecError('zstd worker sent a malformed extent reply');
      return {
        inner,
        compressed: msg.compressed === true,
        plainSha256: inner.subarray(0, 32),
        innerSha256: msg.innerSha !== undefined ? Buffer.from(msg.innerSha.buffer, msg.innerSha.byteOffset, msg.innerSha.length) : undefined,
      };
    });
  }

  /** A transferable buffer of ≥ minBytes (from the free list when possible) for compressExtent(…, { transfer: true }). */
  acquireBuffer(minBytes: number): Buffer {
    const ab = this.takeBuffer(minBytes);
    return Buffer.from(ab, 0, ab.byteLength);
  }

  /**
   * Takes back a buffer from acquireBuffer() or a result of unpackPayload()
   * once the caller is done with it (its memory is reused: the caller must
   * not touch it, or any view of it, afterwards). Foreign buffers are ignored.
   */
  releaseBuffer(buf: Buffer): void {
    const ab = buf.buffer;
    if (buf.byteOffset === 0 && ab instanceof ArrayBuffer && this.lent.has(ab)) this.giveBuffer(ab);
  }

  decompress(data: Uint8Array, expectedSize: number): Promise<Buffer> {
    if (!Number.isSafeInteger(expectedSize) || expectedSize < 0 || expectedSize > this.maxInputBytes) {
      return Promise.reject(
        new CodecError(`decompress expected size ${expectedSize} is outside 0..${this.maxInputBytes} (pool limit)`),
      );
    }
    // Our frames are single standard zstd frames; anything else (including
    // empty input, which ZSTD_decompress would happily turn into 0 bytes) is refused.
    if (!isZstdFrame(data)) return Promise.reject(new CodecError(NOT_A_FRAME));
    // A valid frame for ≤ expectedSize bytes is never larger than its bound;
    // refusing here keeps a hostile length from reaching a worker at all.
    if (data.length > zstdCompressBound(expectedSize) + 64) {
      return Promise.reject(
        new CodecError(`compressed input of ${data.length} bytes cannot decode to ${expectedSize} bytes`),
      );
    }
    return this.submit('decompress', data, expectedSize).then(replyBuffer);
  }

  /**
   * Checks and unpacks one stored payload in a worker (PayloadUnpacker,
   * src/codec/types.ts): stored-payload digest, decompression into exactly
   * `plainLength` bytes, plaintext digest. The stored bytes are copied once
   * into a pooled transferable buffer, as for decompress().
   */
  unpackPayload(stored: Uint8Array, opts: UnpackPayloadOptions): Promise<Buffer> {
    const expected = opts.plainLength;
    if (!Number.isSafeInteger(expected) || expected < 0 || expected > this.maxInputBytes) {
      return Promise.reject(new CodecError(`unpack plaintext size ${expected} is outside 0..${this.maxInputBytes} (pool limit)`));
    }
    // Same hostile-length guards as decompress(), before anything reaches a worker.
    const maxStored = 32 + (opts.compressed ? zstdCompressBound(expected) + 64 : expected);
    if (stored.length > maxStored) {
      return Promise.reject(new CodecError(`stored payload of ${stored.length} bytes cannot hold ${expected} plaintext bytes`));
    }
    // With a stored digest the worker checks it first, so damage is reported as a checksum failure, not a codec one.
    if (opts.compressed && opts.payloadSha256 === undefined && !isZstdFrame(stored.subarray(32))) {
      return Promise.reject(new CodecError(NOT_A_FRAME));
    }
    const unpack = { compressed: opts.compressed, checkPlain: opts.checkPlain, ...(opts.payloadSha256 ? { payloadSha: opts.payloadSha256 } : {}) };
    return this.submit('unpack', stored, expected, false, false, unpack).then(replyBuffer);
  }

  /**
   * The most memory this pool holds (docs/memory.md), for jobs of at most
   * `jobBytes` (default maxInputBytes; a restore passes MAX_EXTENT_DATA):
   *   workers × (WORKER_RSS_BYTES + scratch + context above level 3)
   *   + 2 × jobPlaces × buffer      (an input and an output per job place; default
   *                                  workers + maxQueue, fewer when the caller limits its jobs)
   * where buffer = the size class (whole MiBs + DECOMPRESS_SLACK) of the
   * largest input a job accepts, ZSTD_COMPRESSBOUND(jobBytes) + 2 × 64 + 32
   * (hostile lengths are refused before they reach a buffer), and
   * scratch = ZSTD_COMPRESSBOUND(jobBytes) for a pool that compresses. The
   * wasm backend adds its fixed heap (wasmMemoryBytes) per worker instead.
   */
  memoryBound(jobBytes = this.maxInputBytes, compresses = true, jobPlaces = this.workerCount + this.maxQueue): number {
    const buffer = this.sizeClass(zstdCompressBound(jobBytes) + 2 * DECOMPRESS_SLACK + 32);
    const perWorker =
      WORKER_RSS_BYTES +
      (compresses ? zstdCompressBound(jobBytes) : 0) +
      (this.level > 3 ? HIGH_LEVEL_CONTEXT_BYTES : 0) +
      (this.backend === 'wasm' ? this.wasmMemoryBytes : 0);
    return this.workerCount * perWorker + 2 * Math.min(jobPlaces, this.workerCount + this.maxQueue) * buffer;
  }

  /** Terminates the workers; pending and queued jobs fail with CodecError. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const err = new CodecError('zstd pool closed');
    for (const job of this.queue.splice(0)) job.reject(err);
    for (const wake of this.blockedCallers.splice(0)) wake();
    await Promise.all(
      this.slots.map(async (slot) => {
        slot.retiring = true;
        const job = slot.job;
        slot.job = null;
        job?.reject(err);
        await slot.worker.terminate();
      }),
    );
  }

  /**
   * Starts up to `count` workers (at most the pool's size) now rather than on
   * the first jobs: a caller about to wait on the network (serve opening a
   * chain) takes the worker start (~30 ms of CPU each) off its first decode.
   */
  prestart(count: number): void {
    const want = Math.min(Math.max(0, Math.floor(count)), this.workerCount);
    while (this.slots.length < want && !this.closed && this.brokenReason === null) this.slots.push(this.spawn());
  }

  stats(): ZstdPoolStats {
    return {
      backend: this.backend,
      workers: this.slots.length,
      busy: this.slots.filter((s) => s.job !== null).length,
      queued: this.queue.length,
      blocked: this.blockedCallers.length,
      completed: this.completed,
      failed: this.failed,
      workersReplaced: this.replaced,
      inline: this.inlineJobs,
      buffersAllocated: this.allocated,
    };
  }

  /**
   * Test hook for the replacement path: queues a job whose worker exits while
   * it holds it (deterministically mid-job, unlike killing a worker from
   * outside). The job fails with CodecError and a new worker takes its place.
   */
  crashWorkerForTest(): Promise<void> {
    return this.submit('crash', new Uint8Array(1), 0).then(() => undefined);
  }

  private async submit(
    op: Op,
    input: Uint8Array,
    expected: number,
    transfer = false,
    hashInner = false,
    unpack?: Job['unpack'],
  ): Promise<WorkerReply> {
    // Bounded queue: wait (FIFO) until a queued job has moved into a worker.
    while (!this.closed && this.brokenReason === null && this.queue.length >= this.maxQueue && !this.freeSlot()) {
      await new Promise<void>((wake) => this.blockedCallers.push(wake));
    }
    if (this.closed) throw new CodecError('zstd pool closed');
    if (this.brokenReason !== null) throw new CodecError(`zstd pool unusable: ${this.brokenReason}`);
    return new Promise<WorkerReply>((resolve, reject) => {
      this.queue.push({ id: this.nextId++, op, input, expected, transfer, hashInner, ...(unpack ? { unpack } : {}), resolve, reject });
      this.pump();
    });
  }

  /** An idle worker, else a newly started one while fewer than workerCount run. */
  private freeSlot(): Slot | undefined {
    const idle = this.slots.find((s) => s.job === null && !s.retiring);
    if (idle || this.slots.length >= this.workerCount || this.closed || this.brokenReason !== null) return idle;
    const slot = this.spawn();
    this.slots.push(slot);
    return slot;
  }

  /** Moves queued jobs into idle workers (or runs them inline) and wakes blocked callers for the freed queue places. */
  private pump(): void {
    while (this.queue.length > 0) {
      if (this.canInline(this.queue[0]!)) {
        this.runInline(this.queue.shift()!);
        continue;
      }
      const slot = this.freeSlot();
      if (!slot) break;
      const job = this.queue.shift()!;
      slot.job = job;
      slot.worker.ref();
      const msg = this.jobMessage(job);
      slot.worker.postMessage(msg, msg.out ? [msg.buf, msg.out] : [msg.buf]);
    }
    // Wake as many blocked callers as there is room for (queue places + idle workers).
    const startable = this.closed || this.brokenReason !== null ? 0 : this.workerCount - this.slots.length;
    let room = this.maxQueue - this.queue.length + this.slots.filter((s) => s.job === null && !s.retiring).length + startable;
    while (this.blockedCallers.length > 0 && room-- > 0) this.blockedCallers.shift()!();
  }

  /**
   * The protocol message of a job. One copy into a transferable buffer (the
   * caller keeps its own), or none when the caller handed its buffer over.
   * The worker hands the buffer back with its reply, so steady state
   * allocates nothing here (less GC, no zero-filling of fresh buffers).
   */
  private jobMessage(job: Job): JobMessage {
    const len = job.input.length;
    let buf: ArrayBuffer;
    if (job.transfer) {
      buf = job.input.buffer as ArrayBuffer;
    } else {
      buf = this.takeBuffer(len);
      new Uint8Array(buf, 0, len).set(job.input);
    }
    // An 'unpack' job also borrows a buffer for its plaintext, so steady
    // restores allocate nothing per extent when callers release results.
    // Native zstd writes into it directly and needs DECOMPRESS_SLACK past
    // the plaintext (zstd-worker.mjs).
    const out = job.op === 'unpack' && job.expected > 0 ? this.takeBuffer(job.expected + (this.backend === 'native' ? DECOMPRESS_SLACK : 0)) : undefined;
    return { id: job.id, op: job.op, buf, len, level: this.level, expected: job.expected, hashInner: job.hashInner, ...job.unpack, ...(out ? { out } : {}) };
  }

  /** Before the first worker starts, jobs run inline while their bytes stay within inlineBytes. */
  private canInline(job: Job): boolean {
    // inlineBytes is 0 for the wasm backend: its inline path would be a second wasm heap on this thread.
    if (this.inlineBytes === 0 || job.op === 'crash' || this.slots.length > 0 || this.closed || this.brokenReason !== null) return false;
    return this.inlineUsed + job.input.length <= this.inlineBytes;
  }

  /** Runs a job on this thread through the worker's own job function; settles it like a worker reply. */
  private runInline(job: Job): void {
    this.inlineUsed += job.input.length;
    this.inlineJobs++;
    this.inlineBackend ??= nativeBackend(windowLogFor(this.maxInputBytes));
    // A buffer the caller handed over is detached, as a transfer to a worker would.
    if (job.transfer) {
      const ab = job.input.buffer as ArrayBuffer;
      const len = job.input.length; // read before the transfer empties the caller's view
      job = { ...job, input: new Uint8Array(structuredClone(ab, { transfer: [ab] }), 0, len) };
    }
    const { reply } = runJob(this.inlineBackend, this.jobMessage(job));
    this.settle(job, reply as unknown as WorkerReply);
  }

  /** A transferable buffer of ≥ `len` bytes from the free list, or a new uninitialised one. */
  private takeBuffer(len: number): ArrayBuffer {
    for (let i = this.freeBuffers.length - 1; i >= 0; i--) {
      if (this.freeBuffers[i].byteLength >= len) return this.freeBuffers.splice(i, 1)[0];
    }
    const size = this.sizeClass(len);
    this.allocated++;
    const b = Buffer.allocUnsafeSlow(size);
    const ab = b.byteOffset === 0 && b.buffer.byteLength === size ? (b.buffer as ArrayBuffer) : new ArrayBuffer(size);
    return this.own(ab) as ArrayBuffer;
  }

  /**
   * The size of a new buffer for `len` bytes: rounded up so buffers fit the
   * next, slightly larger extent too; every buffer keeps DECOMPRESS_SLACK past
   * whole MiBs, so a 4 MiB plaintext (+ slack) and a 4 MiB input share one class.
   */
  private sizeClass(len: number): number {
    const rounded = Math.ceil(Math.max(0, len - DECOMPRESS_SLACK) / BUFFER_ROUNDING) * BUFFER_ROUNDING + DECOMPRESS_SLACK;
    return Math.max(len, Math.min(this.maxInputBytes + DECOMPRESS_SLACK, rounded));
  }

  private own(buf: ArrayBuffer | undefined): ArrayBuffer | undefined {
    if (buf !== undefined) this.lent.add(buf);
    return buf;
  }

  private giveBuffer(buf: ArrayBuffer | undefined): void {
    // Bounded: never more than two buffers (an input and an output) per
    // worker and queue place, i.e. ≤ 2 × (workers + maxQueue) × maxInputBytes idle.
    if (buf && buf.byteLength > 0 && this.freeBuffers.length < 2 * (this.workerCount + this.maxQueue)) this.freeBuffers.push(buf);
  }

  private spawn(): Slot {
    // execArgv: []: the worker is plain JavaScript, so it must not inherit
    // loader flags such as tsx's `--import` (under tsx/vitest that made every
    // worker load the TypeScript loader: ~100 ms of CPU per worker start).
    const workerData = { zstdWorker: true, backend: this.backend, memoryBytes: this.wasmMemoryBytes, windowLogMax: windowLogFor(this.maxInputBytes) };
    // From now on every job goes to workers: the inline backend's scratch goes.
    this.inlineBackend = null;
    const worker = new Worker(WORKER_URL, { workerData, execArgv: [] });
    const slot: Slot = { worker, job: null, retiring: false };
    // Idle workers must not keep a process alive; a busy one is ref'ed so an
    // awaited job keeps the event loop running until it settles.
    worker.unref();
    worker.on('message', (msg: WorkerReply) => this.onReply(slot, msg));
    worker.on('error', (err) => this.onDeath(slot, `worker error: ${err.message}`, err));
    worker.on('exit', (code) => this.onDeath(slot, `worker exited with code ${code}`));
    return slot;
  }

  private onReply(slot: Slot, msg: WorkerReply): void {
    const job = slot.job;
    if (!job || job.id !== msg.id) return;
    slot.job = null;
    slot.worker.unref();
    this.settle(job, msg);
    // A fatal reply is followed by the worker's exit; don't hand it more work.
    if (msg.fatal) slot.retiring = true;
    this.pump();
  }

  /** Takes back the reply's lent buffers and resolves or rejects the job. */
  private settle(job: Job, msg: WorkerReply): void {
    this.giveBuffer(this.own(msg.input));
    this.giveBuffer(this.own(msg.spare));
    // An unpack result lives in a lent buffer the caller hands back with releaseBuffer().
    if (job.op === 'unpack' && msg.ok) this.own(msg.buf);
    if (msg.ok && msg.buf && msg.len !== undefined) {
      this.consecutiveDeaths = 0;
      this.completed++;
      job.resolve(msg);
    } else {
      this.failed++;
      if (msg.checksum) job.reject(new ChecksumError(msg.message ?? 'SHA-256 mismatch'));
      else job.reject(new CodecError(`zstd ${job.op} failed: ${msg.message ?? 'unknown error'}`));
    }
  }

  private onDeath(slot: Slot, reason: string, cause?: unknown): void {
    const index = this.slots.indexOf(slot);
    if (index < 0) return; // already replaced (error is followed by exit)
    const job = slot.job;
    slot.job = null;
    if (job) {
      this.failed++;
      job.reject(new CodecError(`zstd ${job.op} failed: ${reason}`, cause !== undefined ? { cause } : undefined));
    }
    if (this.closed) return;
    // Workers that keep dying without completing anything (e.g. zstd-codec
    // cannot load) would otherwise be respawned forever.
    this.consecutiveDeaths++;
    if (this.consecutiveDeaths > MAX_CONSECUTIVE_DEATHS * this.workerCount) {
      this.brokenReason = reason;
      this.slots.splice(index, 1);
      for (const queued of this.queue.splice(0)) queued.reject(new CodecError(`zstd pool unusable: ${reason}`));
      for (const wake of this.blockedCallers.splice(0)) wake();
      return;
    }
    this.replaced++;
    this.slots[index] = this.spawn();
    this.pump();
  }
}
