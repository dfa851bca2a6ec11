/**
 * ZstdPool runs the first jobs (up to `inlineBytes` of input) on the calling
 * thread instead of starting a worker (start-up, docs/startup.md). Both paths
 * must give the same bytes, the same digests and the same errors.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { createHash, randomBytes } from 'node:crypto';
import { ZstdPool, nativeZstdAvailable } from '../../../src/codec/zstd-pool.js';

const describeNative = describe.skipIf(!nativeZstdAvailable());
const sha = (b: Uint8Array): Buffer => createHash('sha256').update(b).digest();
const pools: ZstdPool[] = [];

function pool(inlineBytes: number, workers = 1): ZstdPool {
  const p = new ZstdPool({ backend: 'native', workers, inlineBytes });
  pools.push(p);
  return p;
}

afterEach(async () => {
  await Promise.all(pools.splice(0).map((p) => p.close()));
});

function textLike(size: number, seed: number): Buffer {
  const out = Buffer.alloc(size);
  let x = seed;
  for (let pos = 0; pos < size; ) {
    x = (x * 1103515245 + 12345) >>> 0;
    pos += out.write(['disk', 'block', 'zero', 'extent', '\n'][x % 5]! + ' ', pos);
  }
  return out;
}

/** Settles a promise into a comparable value: the bytes, or the error's class and message. */
async function outcome(p: Promise<Buffer | { inner: Buffer; compressed: boolean; innerSha256?: Buffer }>): Promise<unknown> {
  try {
    const r = await p;
    if (Buffer.isBuffer(r)) return { ok: r.toString('hex') };
    return { ok: r.inner.toString('hex'), compressed: r.compressed, innerSha: r.innerSha256?.toString('hex') };
  } catch (err) {
    return { error: (err as Error).constructor.name, message: (err as Error).message };
  }
}

/** Every kind of job, good and forged, as functions of a pool. */
function jobs(): Array<[string, (p: ZstdPool) => Promise<unknown>]> {
  const text = textLike(300 * 1024, 3);
  const noise = randomBytes(70 * 1024);
  // The same garbage for both pools: random bytes each time gave each pool a different zstd error.
  const garbage = randomBytes(64);
  const list: Array<[string, (p: ZstdPool) => Promise<unknown>]> = [];
  for (const [name, input] of [['empty', Buffer.alloc(0)], ['one byte', Buffer.from('x')], ['text', text], ['noise', noise]] as const) {
    list.push([`compress ${name}`, (p) => outcome(p.compress(input))]);
    list.push([`compressExtent ${name}`, (p) => outcome(p.compressExtent(input))]);
  }
  // A reference pool-independent frame and payloads, built once per call with a worker-only pool.
  list.push([
    'decompress, unpack and their forged inputs',
    async (p) => {
      const ref = new ZstdPool({ backend: 'native', workers: 1, inlineBytes: 0 });
      try {
        const frame = await ref.compress(text);
        const ex = await ref.compressExtent(text);
        const raw = await ref.compressExtent(noise);
        const flipped = Buffer.from(ex.inner);
        flipped[flipped.length - 10]! ^= 0xff;
        const forgedSha = Buffer.from(ex.inner);
        forgedSha[0]! ^= 1;
        const results = [];
        results.push(await outcome(p.decompress(frame, text.length)));
        results.push(await outcome(p.decompress(frame, text.length - 1))); // frame decodes to more than expected
        results.push(await outcome(p.decompress(Buffer.concat([frame.subarray(0, 8), garbage]), 1000))); // garbage after a valid magic
        results.push(await outcome(p.unpackPayload(ex.inner, { compressed: true, plainLength: text.length, payloadSha256: sha(ex.inner), checkPlain: true })));
        results.push(await outcome(p.unpackPayload(raw.inner, { compressed: false, plainLength: noise.length, payloadSha256: sha(raw.inner), checkPlain: true })));
        results.push(await outcome(p.unpackPayload(flipped, { compressed: true, plainLength: text.length, payloadSha256: sha(ex.inner), checkPlain: true })));
        results.push(await outcome(p.unpackPayload(flipped, { compressed: true, plainLength: text.length, checkPlain: true })));
        results.push(await outcome(p.unpackPayload(forgedSha, { compressed: true, plainLength: text.length, checkPlain: true })));
        results.push(await outcome(p.unpackPayload(raw.inner, { compressed: false, plainLength: noise.length - 1, checkPlain: true })));
        return results;
      } finally {
        await ref.close();
      }
    },
  ]);
  return list;
}

describeNative('ZstdPool inline jobs (before the first worker starts)', () => {
  it('give the same bytes, digests and errors as jobs in a worker', async () => {
    for (const [name, run] of jobs()) {
      const inline = pool(1 << 30);
      const worker = pool(0);
      const a = await run(inline);
      const b = await run(worker);
      expect(a, name).toEqual(b);
      expect(inline.stats(), name).toMatchObject({ workers: 0 });
      expect(inline.stats().inline, name).toBeGreaterThan(0);
      expect(worker.stats(), name).toMatchObject({ inline: 0 });
      expect(worker.stats().workers, name).toBeGreaterThan(0);
    }
  });

  it('stop once inlineBytes of input have run inline: later jobs start a worker', async () => {
    const p = pool(100 * 1024);
    const chunk = textLike(64 * 1024, 9);
    const [a, b] = [await p.compress(chunk), await p.compress(chunk)];
    expect(a.equals(b)).toBe(true);
    expect(p.stats()).toMatchObject({ inline: 1, workers: 1, completed: 2 });
  });

  it('are off with inlineBytes 0 and for the wasm backend', () => {
    expect(pool(0).inlineBytes).toBe(0);
    const wasm = new ZstdPool({ backend: 'wasm', workers: 1, inlineBytes: 1 << 20 });
    pools.push(wasm);
    expect(wasm.inlineBytes).toBe(0);
  });

  it('reuse released buffers like worker jobs: a long run of inline unpack + release allocates a bounded number', async () => {
    const ref = pool(0);
    const text = textLike(256 * 1024, 5);
    const ex = await ref.compressExtent(text);
    const p = pool(1 << 30);
    for (let i = 0; i < 50; i++) {
      const out = await p.unpackPayload(ex.inner, { compressed: true, plainLength: text.length, checkPlain: true });
      expect(out.equals(text)).toBe(true);
      p.releaseBuffer(out);
    }
    expect(p.stats().inline).toBe(50);
    expect(p.stats().buffersAllocated).toBeLessThanOrEqual(4);
  });
});
