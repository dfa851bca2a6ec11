import { afterEach, describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { ChecksumError, CodecError } from '../../../src/errors.js';
import { ZstdPool, nativeZstdAvailable, resolveZstdBackend } from '../../../src/codec/zstd-pool.js';

/** Tests of the native backend run where node:zlib has zstd (Node ≥ 22.15); the wasm ones everywhere. */
const itNative = it.skipIf(!nativeZstdAvailable());

/** Compressible but not trivial: random words from a small vocabulary. */
function textLike(size: number, seed = 1): Buffer {
  const words = ['block', 'cluster', 'extent', 'zstd', 'copy', 'before', 'write', 'backup', 'qemu', 'nbd', '\n'];
  const out = Buffer.alloc(size);
  let x = seed;
  let pos = 0;
  while (pos < size) {
    x = (x * 1103515245 + 12345) >>> 0;
    pos += out.write(words[x % words.length] + ' ', pos);
  }
  return out;
}

const sha = (b: Uint8Array): Buffer => createHash('sha256').update(b).digest();

const pools: ZstdPool[] = [];
function pool(opts: ConstructorParameters<typeof ZstdPool>[0] = {}): ZstdPool {
  const p = new ZstdPool({ workers: 2, ...opts });
  pools.push(p);
  return p;
}

afterEach(async () => {
  await Promise.all(pools.splice(0).map((p) => p.close()));
});

describe('ZstdPool', () => {
  it('prestart starts workers before any job, never more than the pool size, and they take the first jobs', async () => {
    const p = pool({ workers: 2 });
    expect(p.stats().workers).toBe(0);
    p.prestart(1);
    expect(p.stats().workers).toBe(1);
    p.prestart(5);
    expect(p.stats().workers).toBe(2);
    const data = textLike(64 * 1024);
    expect(await p.decompress(await p.compress(data), data.length)).toEqual(data);
    expect(p.stats().workers).toBe(2);
    const closed = pool({ workers: 2 });
    await closed.close();
    closed.prestart(2);
    expect(closed.stats().workers).toBe(0);
  });

  it('round-trips empty, tiny, random and compressible inputs', async () => {
    const p = pool();
    const inputs = [Buffer.alloc(0), Buffer.from('x'), randomBytes(65536), textLike(4 * 1024 * 1024), Buffer.alloc(1_000_001)];
    const compressed = await Promise.all(inputs.map((i) => p.compress(i)));
    expect(compressed[3].length).toBeLessThan(inputs[3].length / 2);
    expect(compressed[4].length).toBeLessThan(1000);
    // Random data does not shrink: the format then stores it raw.
    expect(compressed[2].length).toBeGreaterThanOrEqual(65536);
    const back = await Promise.all(compressed.map((c, i) => p.decompress(c, inputs[i].length)));
    back.forEach((b, i) => expect(b.equals(inputs[i])).toBe(true));
  });

  it('produces standard zstd frames (the zstd CLI decodes them)', async () => {
    const p = pool({ level: 3 });
    const input = textLike(300_000, 7);
    const frame = await p.compress(input);
    const r = spawnSync('zstd', ['-d', '-c', '-q'], { input: frame, maxBuffer: 4 * 1024 * 1024 });
    expect(r.status).toBe(0);
    expect(Buffer.from(r.stdout).equals(input)).toBe(true);
  });

  it('supports higher levels (level 19) with a better ratio than level 1', async () => {
    const input = textLike(2 * 1024 * 1024, 3);
    const fast = await pool({ level: 1, workers: 1 }).compress(input);
    const p19 = pool({ level: 19, workers: 1 });
    const best = await p19.compress(input);
    expect(best.length).toBeLessThan(fast.length);
    expect((await p19.decompress(best, input.length)).equals(input)).toBe(true);
  });

  it('does not modify or detach the caller buffer', async () => {
    const p = pool();
    const input = textLike(100_000);
    const copy = Buffer.from(input);
    await p.compress(input);
    expect(input.length).toBe(100_000);
    expect(input.equals(copy)).toBe(true);
  });

  it('decompress never exceeds expectedSize, whatever the frame header says', async () => {
    const p = pool();
    const input = textLike(1024 * 1024);
    const frame = await p.compress(input);
    await expect(p.decompress(frame, 1000)).rejects.toBeInstanceOf(CodecError);
    await expect(p.decompress(frame, input.length - 1)).rejects.toThrow(/larger than|corrupt/);
    // An expected size above the pool limit is refused before any allocation.
    await expect(p.decompress(frame, 1e12)).rejects.toBeInstanceOf(CodecError);
    await expect(p.decompress(frame, -1)).rejects.toBeInstanceOf(CodecError);
    // A compressed input that cannot possibly decode to expectedSize is refused up front.
    await expect(p.decompress(randomBytes(5000), 10)).rejects.toBeInstanceOf(CodecError);
    // The pool still works afterwards.
    expect((await p.decompress(frame, input.length)).equals(input)).toBe(true);
  });

  it('bad input gives CodecError: garbage, truncated and bit-flipped frames', async () => {
    const p = pool();
    const input = textLike(200_000);
    const frame = await p.compress(input);
    await expect(p.decompress(Buffer.from('definitely not a zstd frame'), 1000)).rejects.toBeInstanceOf(CodecError);
    await expect(p.decompress(frame.subarray(0, frame.length - 7), input.length)).rejects.toBeInstanceOf(CodecError);
    await expect(p.decompress(Buffer.alloc(0), 10)).rejects.toBeInstanceOf(CodecError);
    for (let i = 0; i < 20; i++) {
      const bad = Buffer.from(frame);
      const at = Math.floor((i / 20) * bad.length);
      bad[at] ^= 0x5a;
      // A flip may still decode (zstd has no mandatory checksum), but it must never crash
      // or exceed the bound: either a Buffer ≤ expected, or CodecError.
      const r = await p.decompress(bad, input.length).then(
        (b) => b,
        (e: unknown) => e,
      );
      if (r instanceof Buffer) expect(r.length).toBeLessThanOrEqual(input.length);
      else expect(r).toBeInstanceOf(CodecError);
    }
    await expect(p.compress(Buffer.alloc(p.maxInputBytes + 1))).rejects.toBeInstanceOf(CodecError);
    expect(p.stats().workersReplaced).toBe(0);
  });

  it('has a bounded queue: extra callers wait for a slot (backpressure)', async () => {
    const p = pool({ workers: 1, maxQueue: 2, inlineBytes: 0 });
    const input = textLike(2 * 1024 * 1024);
    const maxSeen = { queued: 0, busy: 0 };
    const jobs: Promise<Buffer>[] = [];
    for (let i = 0; i < 8; i++) {
      jobs.push(
        p.compress(input).then((b) => {
          const s = p.stats();
          maxSeen.queued = Math.max(maxSeen.queued, s.queued);
          maxSeen.busy = Math.max(maxSeen.busy, s.busy);
          return b;
        }),
      );
    }
    // Submitted synchronously: 1 in the worker, 2 queued, 5 blocked callers.
    expect(p.stats()).toMatchObject({ busy: 1, queued: 2, blocked: 5 });
    const out = await Promise.all(jobs);
    expect(maxSeen.queued).toBeLessThanOrEqual(2);
    expect(maxSeen.busy).toBeLessThanOrEqual(1);
    for (const o of out) expect(o.equals(out[0])).toBe(true);
    expect(p.stats()).toMatchObject({ busy: 0, queued: 0, blocked: 0, completed: 8 });
  });

  it('a worker that dies mid-job fails that job with CodecError; a new worker runs the next one', async () => {
    const p = pool({ workers: 1 });
    const input = textLike(4 * 1024 * 1024);
    // The crash job is in the worker when it dies (the worker exits while
    // holding it); the compress job waits behind it in the queue.
    const crashed = p.crashWorkerForTest();
    const next = p.compress(input);
    expect(p.stats()).toMatchObject({ busy: 1, queued: 1 });
    await expect(crashed).rejects.toThrow(CodecError);
    await expect(crashed).rejects.toThrow(/worker exited with code 70/);
    const frame = await next;
    expect((await p.decompress(frame, input.length)).equals(input)).toBe(true);
    expect(p.stats()).toMatchObject({ workersReplaced: 1, failed: 1, completed: 2 });
  });

  it('a wasm abort (out of memory) is a CodecError; the pool recovers with a fresh worker', async () => {
    // 16 MiB of wasm memory cannot hold a level-19 context for 4 MiB input: emscripten aborts.
    const p = pool({ backend: 'wasm', workers: 1, level: 19, wasmMemoryBytes: 16 * 1024 * 1024 });
    await expect(p.compress(textLike(4 * 1024 * 1024))).rejects.toThrow(CodecError);
    const small = textLike(10_000);
    const frame = await p.compress(small);
    expect((await p.decompress(frame, small.length)).equals(small)).toBe(true);
    expect(p.stats().workersReplaced).toBe(1);
  });

  itNative('native: level 19 on a 4 MiB extent needs no configured heap (no abort, no worker replaced)', async () => {
    const p = pool({ backend: 'native', workers: 1, level: 19 });
    const input = textLike(4 * 1024 * 1024);
    const frame = await p.compress(input);
    expect((await p.decompress(frame, input.length)).equals(input)).toBe(true);
    expect(p.stats().workersReplaced).toBe(0);
  });

  itNative('native: a forged window descriptor is refused, not allocated (window capped by maxInputBytes)', async () => {
    // Magic, FHD 0 (no content size), window descriptor 2^27 (0x88), one raw
    // last block of 1 byte: valid zstd that asks the decoder for a 128 MiB window.
    const forged = Buffer.from([0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x88, 0x09, 0x00, 0x00, 0x41]);
    const p = pool({ backend: 'native', workers: 1 });
    await expect(p.decompress(forged, 1)).rejects.toThrow(/windowTooLarge/);
    // Within the cap the same frame shape decodes (window 2^20).
    const ok = Buffer.from(forged);
    ok[5] = 10 << 3;
    expect([...(await p.decompress(ok, 1))]).toEqual([0x41]);
    expect(p.stats().workersReplaced).toBe(0);
  });

  it('close() rejects queued work and later calls', async () => {
    const p = pool({ workers: 1, maxQueue: 1, inlineBytes: 0 });
    const input = textLike(4 * 1024 * 1024);
    const jobs = [p.compress(input), p.compress(input), p.compress(input)].map((j) => j.then(() => 'ok', (e: unknown) => e));
    await p.close();
    const results = await Promise.all(jobs);
    for (const r of results) expect(r).toBeInstanceOf(CodecError);
    await expect(p.compress(input)).rejects.toThrow(/closed/);
  });

  it('runs the backend COWSTREAM_ZSTD selects (native by default where the runtime has it)', () => {
    const native = nativeZstdAvailable();
    const want = process.env.COWSTREAM_ZSTD === 'wasm' || !native ? 'wasm' : 'native';
    expect(pool({ workers: 1 }).stats().backend).toBe(want);
    expect(resolveZstdBackend({})).toBe(native ? 'native' : 'wasm');
    expect(resolveZstdBackend({ COWSTREAM_ZSTD: 'wasm' })).toBe('wasm');
    if (native) expect(resolveZstdBackend({ COWSTREAM_ZSTD: 'native' })).toBe('native');
    // Asking for native where it is missing is an error, never a silent fallback.
    else expect(() => resolveZstdBackend({ COWSTREAM_ZSTD: 'native' })).toThrow(/needs ≥ 22.15/);
    expect(() => resolveZstdBackend({ COWSTREAM_ZSTD: 'zlib' })).toThrow(CodecError);
  });

  itNative('frames cross between the backends at every level used (native ⇄ wasm)', async () => {
    const native = pool({ backend: 'native', workers: 1 });
    const wasm = pool({ backend: 'wasm', workers: 1 });
    const inputs = [Buffer.alloc(0), Buffer.from('x'), textLike(4 * 1024 * 1024, 5), Buffer.alloc(4 * 1024 * 1024), randomBytes(100_000)];
    for (const input of inputs) {
      const a = await native.compress(input);
      const b = await wasm.compress(input);
      expect((await wasm.decompress(a, input.length)).equals(input)).toBe(true);
      expect((await native.decompress(b, input.length)).equals(input)).toBe(true);
    }
  });

  it('validates its options', () => {
    expect(() => new ZstdPool({ level: 0 })).toThrow(CodecError);
    expect(() => new ZstdPool({ level: 20 })).toThrow(CodecError);
    expect(() => new ZstdPool({ level: 1.5 })).toThrow(CodecError);
    expect(() => new ZstdPool({ workers: 0 })).toThrow(CodecError);
  });
});

describe('ZstdPool.compressExtent (hashing + compression in the worker)', () => {
  it('returns sha(plain) || zstd(plain) with both digests, and the body decompresses back', async () => {
    const p = pool();
    const plain = textLike(1024 * 1024, 7);
    const r = await p.compressExtent(plain);
    expect(r.compressed).toBe(true);
    expect(r.plainSha256.equals(sha(plain))).toBe(true);
    expect(r.inner.subarray(0, 32).equals(r.plainSha256)).toBe(true);
    expect(r.innerSha256?.equals(sha(r.inner))).toBe(true);
    expect(r.inner.length).toBeLessThan(plain.length / 2);
    const body = r.inner.subarray(32);
    expect((await p.decompress(body, plain.length)).equals(plain)).toBe(true);
  });

  it('stores incompressible data raw, and skips the inner digest when asked', async () => {
    const p = pool();
    const plain = randomBytes(256 * 1024);
    const r = await p.compressExtent(plain, { hashInner: false });
    expect(r.compressed).toBe(false);
    expect(r.inner.subarray(32).equals(plain)).toBe(true);
    expect(r.innerSha256).toBeUndefined();
  });

  it.each([
    ['in a worker', 0],
    ['inline', 1 << 30],
  ])('with transfer: takes over an acquired buffer (detached afterwards) and gives the same bytes as a copy, %s', async (_where, inlineBytes) => {
    const p = pool({ inlineBytes });
    const plain = textLike(512 * 1024, 3);
    const copied = await p.compressExtent(plain);
    const buf = p.acquireBuffer(plain.length);
    plain.copy(buf);
    const view = buf.subarray(0, plain.length);
    const moved = await p.compressExtent(view, { transfer: true });
    expect(moved.inner.equals(copied.inner)).toBe(true);
    expect(buf.buffer.byteLength).toBe(0); // the ArrayBuffer went to the worker
  });
});

describe('ZstdPool.unpackPayload (digests + decompression in the worker, for restores)', () => {
  it('unpacks compressed and raw payloads, checking both digests', async () => {
    const p = pool();
    const text = textLike(1024 * 1024, 11);
    const c = await p.compressExtent(text);
    expect(c.compressed).toBe(true);
    const out = await p.unpackPayload(c.inner, { compressed: true, plainLength: text.length, payloadSha256: sha(c.inner), checkPlain: true });
    expect(out.equals(text)).toBe(true);

    const noise = randomBytes(300 * 1024);
    const r = await p.compressExtent(noise);
    expect(r.compressed).toBe(false);
    const raw = await p.unpackPayload(r.inner, { compressed: false, plainLength: noise.length, payloadSha256: sha(r.inner), checkPlain: true });
    expect(raw.equals(noise)).toBe(true);
    // The caller's buffer is untouched (the worker got a copy).
    expect(r.inner.subarray(32).equals(noise)).toBe(true);
  });

  it('a flipped byte anywhere is a ChecksumError naming the digest; without the stored digest the plaintext digest still catches it', async () => {
    const p = pool();
    const noise = randomBytes(64 * 1024);
    const r = await p.compressExtent(noise);
    const good = sha(r.inner);
    for (const at of [0, 31, 32, 1000, r.inner.length - 1]) {
      const bad = Buffer.from(r.inner);
      bad[at]! ^= 0x10;
      await expect(p.unpackPayload(bad, { compressed: false, plainLength: noise.length, payloadSha256: good, checkPlain: true })).rejects.toThrow(/stored payload: SHA-256 mismatch/);
      const e = await p.unpackPayload(bad, { compressed: false, plainLength: noise.length, checkPlain: true }).catch((x: unknown) => x);
      expect(e).toBeInstanceOf(ChecksumError);
      expect(String(e)).toMatch(/plaintext: SHA-256 mismatch/);
    }
    // A compressed body whose frame still decodes but to other bytes: only the plaintext digest can tell.
    const text = textLike(128 * 1024, 5);
    const c = await p.compressExtent(text);
    const other = await p.compressExtent(textLike(128 * 1024, 6));
    const forged = Buffer.concat([c.inner.subarray(0, 32), other.inner.subarray(32)]);
    await expect(p.unpackPayload(forged, { compressed: true, plainLength: text.length, checkPlain: true })).rejects.toBeInstanceOf(ChecksumError);
  });

  it('released results are reused: a long run of unpack + release allocates a bounded number of buffers', async () => {
    const p = pool();
    const texts = [textLike(1024 * 1024, 21), textLike(900 * 1024, 22), randomBytes(700 * 1024)];
    const stored = await Promise.all(texts.map((t) => p.compressExtent(t)));
    await Promise.all(stored.map((c, i) => p.unpackPayload(c.inner, { compressed: c.compressed, plainLength: texts[i]!.length, checkPlain: true }).then((b) => p.releaseBuffer(b))));
    const warm = p.stats().buffersAllocated;
    for (let round = 0; round < 20; round++) {
      await Promise.all(
        stored.map(async (c, i) => {
          const out = await p.unpackPayload(c.inner, { compressed: c.compressed, plainLength: texts[i]!.length, checkPlain: true });
          expect(out.equals(texts[i]!)).toBe(true);
          p.releaseBuffer(out);
        }),
      );
    }
    // 60 jobs, each needing an input and an output buffer: without reuse that is 120 allocations.
    expect(p.stats().buffersAllocated - warm).toBeLessThanOrEqual(4);
    // Foreign buffers are never taken in.
    p.releaseBuffer(Buffer.alloc(4 * 1024 * 1024));
  });

  it('bad frames and hostile lengths are CodecErrors, and the pool keeps working', async () => {
    const p = pool();
    const text = textLike(64 * 1024, 9);
    const c = await p.compressExtent(text);
    const garbage = Buffer.concat([c.inner.subarray(0, 32), Buffer.from('definitely not zstd')]);
    await expect(p.unpackPayload(garbage, { compressed: true, plainLength: text.length, checkPlain: true })).rejects.toBeInstanceOf(CodecError);
    // Frame decodes to more than the header's plaintext length: refused, never overflows.
    await expect(p.unpackPayload(c.inner, { compressed: true, plainLength: 1000, checkPlain: true })).rejects.toBeInstanceOf(CodecError);
    await expect(p.unpackPayload(c.inner, { compressed: true, plainLength: 1e12, checkPlain: true })).rejects.toThrow(/outside/);
    await expect(p.unpackPayload(Buffer.alloc(100), { compressed: false, plainLength: 10, checkPlain: true })).rejects.toThrow(/cannot hold/);
    await expect(p.unpackPayload(Buffer.alloc(10), { compressed: false, plainLength: 0, checkPlain: false })).rejects.toBeInstanceOf(ChecksumError);
    const out = await p.unpackPayload(c.inner, { compressed: true, plainLength: text.length, checkPlain: true });
    expect(out.equals(text)).toBe(true);
    expect(p.stats().workersReplaced).toBe(0);
  });
});
