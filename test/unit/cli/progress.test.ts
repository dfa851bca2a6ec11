/**
 * The progress helper on a fake terminal and a fake clock: the line shows
 * bytes done/total, the rate and the ETA in binary units; it is silent with
 * --json and on a pipe unless --progress forces it.
 */
import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { progressFigures, progressWanted, startProgress, type ProgressStream } from '../../../src/cli/progress.js';

const MiB = 1024 * 1024;

function fakeStream(isTTY: boolean): { stream: ProgressStream; text: () => string } {
  let out = '';
  const w = new Writable({
    write(chunk: Buffer, _enc, cb) {
      out += chunk.toString();
      cb();
    },
  }) as Writable & { isTTY?: boolean; columns?: number };
  w.isTTY = isTTY;
  w.columns = 200;
  // eslint-disable-next-line no-control-regex
  return { stream: w, text: () => out.replace(/\x1B\[[0-9;?]*[A-Za-z]|\x1B[78]/g, '') };
}

describe('progressFigures', () => {
  it('gives the rate since the first sample and the time left at that rate', () => {
    expect(progressFigures(5 * MiB, 10 * MiB, 0, 5000)).toEqual({ rate: '1.0 MiB/s', eta: '5s' });
    expect(progressFigures(3 * MiB, 603 * MiB, 1 * MiB, 2000)).toEqual({ rate: '1.0 MiB/s', eta: '10m' });
  });

  it('says "-" until something moved, and 0s when done', () => {
    expect(progressFigures(0, 10, 0, 0)).toEqual({ rate: '-', eta: '-' });
    expect(progressFigures(4, 10, 4, 3000)).toEqual({ rate: '-', eta: '-' });
    expect(progressFigures(10, 10, 0, 1000).eta).toBe('0s');
  });
});

describe('progressWanted', () => {
  it('is on for a terminal, off with --json, forced on a pipe by --progress', () => {
    expect(progressWanted({}, { isTTY: true } as ProgressStream)).toBe(true);
    expect(progressWanted({ json: true, progress: true }, { isTTY: true } as ProgressStream)).toBe(false);
    expect(progressWanted({}, { isTTY: false } as ProgressStream)).toBe(false);
    expect(progressWanted({ progress: true }, { isTTY: false } as ProgressStream)).toBe(true);
  });
});

describe('startProgress', () => {
  it('draws bytes, percentage, rate and ETA on a terminal', () => {
    const { stream, text } = fakeStream(true);
    let t = 1_000_000;
    const p = startProgress({ label: 'extract', enabled: true, stream, now: () => t });
    p.update(0, 8 * MiB);
    t += 2000;
    p.update(2 * MiB, 8 * MiB, 'running');
    p.stop();
    const out = text();
    expect(out).toContain('extract [');
    expect(out).toContain('0 B/8.0 MiB | - | ETA -');
    expect(out).toContain('25% | 2.0 MiB/8.0 MiB | 1.0 MiB/s | ETA 6s | running');
  });

  it('prints lines on a pipe when forced, nothing when not enabled', () => {
    const pipe = fakeStream(false);
    const p = startProgress({ label: 'verify', enabled: true, stream: pipe.stream, now: () => 0 });
    p.update(1024, 4096);
    p.stop();
    expect(pipe.text()).toMatch(/^verify \[.*\] 25% \| 1.0 KiB\/4.0 KiB/m);

    const off = fakeStream(true);
    const q = startProgress({ label: 'verify', enabled: false, stream: off.stream });
    q.update(1, 2);
    q.stop();
    expect(off.text()).toBe('');
  });
});
