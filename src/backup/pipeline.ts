/**
 * The one backup pipeline: open the target → archive writer over a
 * compressor → run the job → finish or abort → complete the bitmaps.
 *
 * Used by the agent's file disks (copy-before-write job), QEMU pull mode
 * (src/qemu/pull-backup.ts, for the agent and `cowstream backup --qemu`) and
 * `cowstream archive create` (image files). What differs is the job and what
 * "complete the bitmaps" means; the order of the steps is the rule:
 *
 * - a writer that cannot be created aborts its output: no half archive stays
 *   visible (an S3 multipart upload is aborted, a file's .partial removed);
 * - any failure, including a cancel while the last extents are still being
 *   compressed and uploaded, aborts the writer;
 * - the bitmaps are completed only after the archive's fate is known, so a
 *   failed upload never loses a dirty bit (QEMU's successor/reclaim rule):
 *   `complete(true)` only after finish() succeeded, `complete(false)` on
 *   every other path.
 */
import type { ByteSink } from '../format/sink.js';
import { ArchiveWriter, type ArchiveSummary, type ArchiveWriterOptions } from '../format/writer.js';

/** The archive's identity and layout: everything ArchiveWriter needs but its output. */
export type ArchiveSpec = Omit<ArchiveWriterOptions, 'output'>;

export interface ArchivePipelineOptions<T> {
  /** Opens the target (a ByteSink the archive streams into). */
  open: () => Promise<ByteSink>;
  archive: ArchiveSpec;
  /** Sees the writer as soon as it exists (e.g. so a cancel can abort it). */
  onWriter?: (writer: ArchiveWriter) => void;
  /** Hands every cluster of the backup to the writer; throws on failure or cancel. */
  job: (writer: ArchiveWriter) => Promise<T>;
  /**
   * A cancel that must also cover the tail: after the job returned, the
   * final extents may still be compressing and uploading (a slow store).
   * `error` makes the error the pipeline fails with (given the error it
   * replaces, when there is one).
   */
  cancel?: { signal: AbortSignal; error: (cause?: unknown) => Error };
  /**
   * Completes the bitmaps once the archive's fate is known: archiveOk true
   * (the archive is complete) or false (it was aborted, or never started).
   * Runs on every path, also when the target could not be opened. Throwing
   * after a good archive fails the backup; after a failure, the original
   * error wins.
   */
  complete?: (archiveOk: boolean, failure: unknown) => Promise<void>;
  /** An abort of the writer that itself failed (logged by the caller; the backup's own error wins). */
  onAbortFailed?: (err: unknown) => void;
}

export interface ArchivePipelineResult<T> {
  result: T;
  summary: ArchiveSummary;
}

/** Runs the pipeline; resolves only with a complete archive and completed bitmaps. */
export async function runArchivePipeline<T>(o: ArchivePipelineOptions<T>): Promise<ArchivePipelineResult<T>> {
  let outcome: ArchivePipelineResult<T>;
  try {
    outcome = await writeArchive(o);
  } catch (err) {
    try {
      await o.complete?.(false, err);
    } catch {
      // The backup's own failure is the one to report; complete() logs its own.
    }
    throw err;
  }
  await o.complete?.(true, null);
  return outcome;
}

/** Open → writer → job → finish; every failure after the writer exists aborts it. */
async function writeArchive<T>(o: ArchivePipelineOptions<T>): Promise<ArchivePipelineResult<T>> {
  const output = await o.open();
  let writer: ArchiveWriter;
  try {
    writer = await ArchiveWriter.create({ ...o.archive, output });
  } catch (err) {
    await output.abort(err).catch(() => undefined);
    throw err;
  }
  o.onWriter?.(writer);
  try {
    const result = await o.job(writer);
    const summary = await finish(writer, o.cancel);
    return { result, summary };
  } catch (err) {
    await writer.abort(err).catch((e: unknown) => o.onAbortFailed?.(e));
    throw err;
  }
}

/** writer.finish(), aborted by a cancel that arrives while it runs. */
async function finish(writer: ArchiveWriter, cancel: ArchivePipelineOptions<unknown>['cancel']): Promise<ArchiveSummary> {
  if (!cancel) return writer.finish();
  const ours = new WeakSet<object>();
  const cancelled = (cause?: unknown): Error => {
    const e = cancel.error(cause);
    ours.add(e);
    return e;
  };
  const onAbort = (): void => void writer.abort(cancelled()).catch(() => undefined);
  cancel.signal.addEventListener('abort', onAbort, { once: true });
  try {
    if (cancel.signal.aborted) throw cancelled();
    return await writer.finish();
  } catch (err) {
    if (cancel.signal.aborted && !(err instanceof Object && ours.has(err))) throw cancelled(err);
    throw err;
  } finally {
    cancel.signal.removeEventListener('abort', onAbort);
  }
}
