/**
 * The one progress display of every long command (backup, restore, archive
 * create/extract/verify): bytes done of total, rate and ETA in the units of
 * src/units.ts, drawn on stderr by cli-progress.
 *
 * Off when stderr is not a terminal (logs and pipes get no redraw noise) or
 * with --json (scripts read stdout and must not see a bar on stderr either);
 * `--progress` forces it on a pipe, where it prints one line per second
 * instead of redrawing.
 */
import cliProgress from 'cli-progress';
import { formatAge, formatBytes, formatRate } from '../units.js';

/** The flags every long command shares. */
export interface ProgressFlags {
  json?: boolean;
  progress?: boolean;
}

/** What the bar writes to: process.stderr, or a fake terminal in tests. */
export type ProgressStream = NodeJS.WritableStream & { isTTY?: boolean; columns?: number };

export interface ProgressOptions {
  /** First word of the line, e.g. `backup`, `extract`. */
  label: string;
  /** Whether to draw at all: usually `progressWanted(flags)`. */
  enabled: boolean;
  stream?: ProgressStream;
  /** Milliseconds clock for rate and ETA (tests pass a fake one). */
  now?: () => number;
}

export interface Progress {
  /** Bytes done of total; `detail` is appended to the line (e.g. a job state). */
  update(done: number, total: number, detail?: string): void;
  stop(): void;
}

/** Lines per second on a pipe with --progress: enough for a CI log, not a flood. */
const PIPE_LINE_MS = 1000;

/** True unless --json, or stderr is not a terminal and --progress was not given. */
export function progressWanted(flags: ProgressFlags, stream: ProgressStream = process.stderr): boolean {
  return flags.json !== true && (flags.progress === true || stream.isTTY === true);
}

/** Rate and ETA from the bytes done since the first update: `1.0 MiB/s`, `ETA 5s` (`-` until time has passed). */
export function progressFigures(done: number, total: number, firstDone: number, elapsedMs: number): { rate: string; eta: string } {
  const seconds = elapsedMs / 1000;
  const moved = done - firstDone;
  const rate = moved > 0 ? formatRate(moved, seconds) : '-';
  const left = Math.max(0, total - done);
  const eta = left === 0 ? '0s' : moved > 0 && seconds > 0 ? formatAge(left / (moved / seconds)) : '-';
  return { rate, eta };
}

const OFF: Progress = { update: () => undefined, stop: () => undefined };

/** A progress line on stderr, or a no-op when not enabled. */
export function startProgress(o: ProgressOptions): Progress {
  if (!o.enabled) return OFF;
  const stream = o.stream ?? process.stderr;
  const now = o.now ?? Date.now;
  const bar = new cliProgress.SingleBar(
    {
      // Own token names: cli-progress fills {eta}, {value}, {total} itself.
      format: `${o.label} [{bar}] {percentage}% | {bytes_done}/{bytes_total} | {rate_h} | ETA {eta_h}{detail}`,
      stream,
      hideCursor: true,
      // --progress on a pipe: cli-progress prints nothing to a non-TTY unless told to.
      noTTYOutput: stream.isTTY !== true,
      notTTYSchedule: PIPE_LINE_MS,
    },
    cliProgress.Presets.shades_classic,
  );
  let t0 = 0;
  let firstDone = 0;
  let started = false;
  return {
    update(done, total, detail) {
      if (!started) {
        t0 = now();
        firstDone = done;
      }
      const { rate, eta } = progressFigures(done, total, firstDone, now() - t0);
      const payload = { bytes_done: formatBytes(done), bytes_total: formatBytes(total), rate_h: rate, eta_h: eta, detail: detail ? ` | ${detail}` : '' };
      if (!started) {
        bar.start(Math.max(1, total), done, payload);
        started = true;
      } else {
        bar.setTotal(Math.max(1, total));
        bar.update(done, payload);
      }
    },
    stop() {
      if (started) bar.stop();
      started = false;
    },
  };
}

/** Runs `fn` with a progress line (when the flags want one) that is stopped however `fn` ends. */
export async function withProgress<T>(label: string, flags: ProgressFlags, fn: (update: (done: number, total: number) => void) => Promise<T>): Promise<T> {
  const progress = startProgress({ label, enabled: progressWanted(flags) });
  try {
    return await fn((done, total) => progress.update(done, total));
  } finally {
    progress.stop();
  }
}
