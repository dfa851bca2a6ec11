/** Bounded concurrency for the restore and extract loops (ranged reads, extent decodes). */
import { RestoreError } from '../errors.js';

/**
 * Bounded-concurrency map over an array; stops launching new work after the
 * first error and throws it once the work in flight has settled.
 */
export async function pool<T>(items: T[], width: number, fn: (item: T, i: number) => Promise<void>, signal?: AbortSignal): Promise<void> {
  let next = 0;
  let failed: unknown = undefined;
  let hasFailed = false;
  const worker = async (): Promise<void> => {
    while (!hasFailed && next < items.length) {
      if (signal?.aborted) throw new RestoreError('restore cancelled', { cause: signal.reason });
      const i = next++;
      try {
        await fn(items[i]!, i);
      } catch (err) {
        if (!hasFailed) {
          hasFailed = true;
          failed = err;
        }
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(width, items.length) }, worker));
  if (hasFailed) throw failed;
}
