/**
 * The ByteSink contract (src/format/sink.ts), one suite run over every
 * implementation: what close() makes visible is exactly what was written, in
 * order; abort() leaves nothing visible where the medium can take it back;
 * a finished sink refuses more writes.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ByteSink } from '../../src/format/sink.js';
import { mulberry32 as prng } from './prng.js';

export interface OpenedSink {
  sink: ByteSink;
  /** The complete result once visible to a reader, or null when nothing (complete) is visible. */
  visible(): Promise<Buffer | null>;
}

export interface ByteSinkHarness {
  /** Can abort() take back what was written (false for a pipe such as stdout)? */
  retractsOnAbort: boolean;
  setup?(): Promise<void>;
  teardown?(): Promise<void>;
  open(): Promise<OpenedSink>;
}

/** Writes `data` in seeded random chunk sizes (1 byte to 300 KiB, with empty chunks in between). */
async function writeInChunks(sink: ByteSink, data: Buffer, seed: number): Promise<void> {
  const rand = prng(seed);
  for (let off = 0; off < data.length; ) {
    const n = Math.min(data.length - off, 1 + Math.floor(rand() * 300 * 1024));
    if (rand() < 0.1) await sink.write(Buffer.alloc(0));
    await sink.write(data.subarray(off, off + n));
    off += n;
  }
}

export function runByteSinkContract(name: string, harness: ByteSinkHarness): void {
  describe(`ByteSink contract: ${name}`, () => {
    beforeAll(async () => harness.setup?.());
    afterAll(async () => harness.teardown?.());

    it('close() makes exactly the written bytes visible, in order', async () => {
      const data = Buffer.from(Array.from({ length: 3 * 1024 * 1024 + 777 }, (_, i) => (i * 31 + (i >> 12)) & 0xff));
      const { sink, visible } = await harness.open();
      await writeInChunks(sink, data, 7);
      await sink.close();
      const got = await visible();
      expect(got?.length).toBe(data.length);
      expect(got!.equals(data)).toBe(true);
    });

    it('an empty stream closes to an empty result', async () => {
      const { sink, visible } = await harness.open();
      await sink.close();
      expect((await visible())?.length).toBe(0);
    });

    it('abort() mid-stream leaves nothing complete visible', async () => {
      if (!harness.retractsOnAbort) return;
      const { sink, visible } = await harness.open();
      await writeInChunks(sink, Buffer.alloc(1024 * 1024, 1), 3);
      await sink.abort(new Error('cancelled'));
      expect(await visible()).toBeNull();
    });

    it('refuses writes after close and after abort; abort twice is harmless', async () => {
      const a = await harness.open();
      await a.sink.write(Buffer.from('x'));
      await a.sink.close();
      await expect(a.sink.write(Buffer.from('y'))).rejects.toThrow();
      const b = await harness.open();
      await b.sink.write(Buffer.from('x'));
      await b.sink.abort(new Error('first'));
      await b.sink.abort(new Error('second'));
      await expect(b.sink.write(Buffer.from('y'))).rejects.toThrow();
    });
  });
}
