/**
 * The backup pipeline's order of steps: the bitmaps are completed only after
 * the archive's fate is known (true only after finish() succeeded), every
 * failure aborts what exists (the writer, or the output when no writer could
 * be made), and a cancel covers finish() too.
 */
import { describe, expect, it } from 'vitest';
import { runArchivePipeline, type ArchivePipelineOptions } from '../../../src/backup/pipeline.js';
import { BufferRangeSource, MemoryByteSink } from '../../../src/format/memory.js';
import { openArchive } from '../../../src/format/reader.js';
import { CLUSTER_SIZE } from '../../../src/format/constants.js';
import { TestZstdCompressor } from '../../helpers/format-compressor.js';

/** A MemoryByteSink that logs close/abort, and whose close() can be held until released or aborted. */
class LoggingSink extends MemoryByteSink {
  holdClose: Promise<void> | null = null;
  private releaseHold: (() => void) | null = null;
  constructor(private readonly log: string[], hold = false) {
    super();
    if (hold) this.holdClose = new Promise((r) => (this.releaseHold = r));
  }
  override async close(): Promise<void> {
    this.log.push('close');
    if (this.holdClose) await this.holdClose;
    if (this.aborted) throw new Error('closed after abort');
    await super.close();
  }
  override async abort(reason?: unknown): Promise<void> {
    this.log.push('abort');
    await super.abort(reason);
    this.releaseHold?.();
  }
}

function options(log: string[], sink: MemoryByteSink, over: Partial<ArchivePipelineOptions<string>> = {}): ArchivePipelineOptions<string> {
  return {
    open: async () => {
      log.push('open');
      return sink;
    },
    archive: { hostId: 'h1', devices: [{ id: 0, name: 'vda', size: 4 * CLUSTER_SIZE }], compressor: new TestZstdCompressor() },
    job: async (writer) => {
      log.push('job');
      await writer.writeZeroes(0, 0, 1);
      await writer.writeCluster(0, 1, Buffer.alloc(CLUSTER_SIZE, 7));
      await writer.writeZeroes(0, 2, 2);
      return 'copied';
    },
    complete: async (ok) => void log.push(`complete(${ok})`),
    ...over,
  };
}

describe('runArchivePipeline', () => {
  it('opens, runs the job, finishes, then completes the bitmaps with true', async () => {
    const log: string[] = [];
    const sink = new LoggingSink(log);
    const r = await runArchivePipeline(options(log, sink));
    expect(log).toEqual(['open', 'job', 'close', 'complete(true)']);
    expect(r.result).toBe('copied');
    const reader = await openArchive(new BufferRangeSource(sink.toBuffer(), 'mem'));
    expect(reader.header.uuid).toBe(r.summary.uuid);
    expect(r.summary.clusterCount).toBe(1);
  });

  it('a failing job aborts the writer before the bitmaps are completed with false', async () => {
    const log: string[] = [];
    const boom = new Error('job failed');
    const seen: unknown[] = [];
    const p = runArchivePipeline(
      options(log, new LoggingSink(log), {
        job: async () => {
          log.push('job');
          throw boom;
        },
        complete: async (ok, failure) => {
          seen.push(failure);
          log.push(`complete(${ok})`);
        },
      }),
    );
    await expect(p).rejects.toBe(boom);
    expect(log).toEqual(['open', 'job', 'abort', 'complete(false)']);
    expect(seen).toEqual([boom]);
  });

  it('a writer that cannot be created aborts the output; the job never runs', async () => {
    const log: string[] = [];
    const o = options(log, new LoggingSink(log));
    await expect(runArchivePipeline({ ...o, archive: { ...o.archive, devices: [] } })).rejects.toThrow();
    expect(log).toEqual(['open', 'abort', 'complete(false)']);
  });

  it('a target that cannot be opened still completes the bitmaps with false', async () => {
    const log: string[] = [];
    const o = options(log, new LoggingSink(log), { open: () => Promise.reject(new Error('no bucket')) });
    await expect(runArchivePipeline(o)).rejects.toThrow('no bucket');
    expect(log).toEqual(['complete(false)']);
  });

  it('a failed finish (the upload) is a failure: abort, then complete(false)', async () => {
    const log: string[] = [];
    const sink = new LoggingSink(log);
    sink.close = async () => {
      log.push('close');
      throw new Error('upload failed');
    };
    await expect(runArchivePipeline(options(log, sink))).rejects.toThrow('archive write failed');
    expect(log).toEqual(['open', 'job', 'close', 'abort', 'complete(false)']);
  });

  it('bitmaps that cannot be completed after a good archive fail the backup', async () => {
    const log: string[] = [];
    const o = options(log, new LoggingSink(log), { complete: () => Promise.reject(new Error('bitmap write failed')) });
    await expect(runArchivePipeline(o)).rejects.toThrow('bitmap write failed');
  });

  it('a cancel while finish() is still uploading aborts the writer and fails with the cancel error', async () => {
    const log: string[] = [];
    const ac = new AbortController();
    const sink = new LoggingSink(log, true);
    const p = runArchivePipeline(options(log, sink, { cancel: { signal: ac.signal, error: (cause) => new Error('backup cancelled', { cause }) } }));
    await expect.poll(() => log.includes('close')).toBe(true);
    ac.abort();
    await expect(p).rejects.toThrow('backup cancelled');
    expect(log.slice(-2)).toEqual(['abort', 'complete(false)']);
    expect(sink.aborted).toBe(true);
  });
});
