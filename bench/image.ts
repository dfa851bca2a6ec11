/**
 * The realistic benchmark image shared by bench:archive and bench:s3: a tar of
 * /usr/lib in 48 MiB regions separated by zero gaps (holes), data ≈ 68 % of
 * the size — compressible system files plus sparse areas, like a VM disk.
 * Built once under bench/work/ and reused (the file name carries the size).
 */
import { spawn, spawnSync } from 'node:child_process';
import { closeSync, existsSync, ftruncateSync, mkdirSync, openSync, statSync, writeSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const MiB = 1024 * 1024;
const DATA_REGION = 48 * MiB;

/** The project root, bench/work/, and the image size and path bench:archive and bench:s3 use (BENCH_IMAGE_MIB). */
export const benchRoot = projectRoot(dirname(fileURLToPath(import.meta.url)));
export const benchWork = join(benchRoot, 'bench', 'work');
export const benchImageMiB = Number(process.env.BENCH_IMAGE_MIB ?? 1024);
export const benchImage = join(benchWork, `image-${benchImageMiB}M.raw`);

/** The nearest directory at or above `dir` with a package.json (bench/ here, dist/bench/ in bench:s3's child bundle). */
function projectRoot(dir: string): string {
  for (let d = dir; ; d = dirname(d)) {
    if (existsSync(join(d, 'package.json'))) return d;
    if (dirname(d) === d) return join(dir, '..');
  }
}

/** Path of the image of `imageMiB` MiB in `workDir`, building it if missing. */
export async function ensureBenchImage(workDir: string, imageMiB: number): Promise<string> {
  const image = join(workDir, `image-${imageMiB}M.raw`);
  if (existsSync(image) && statSync(image).size === imageMiB * MiB) return image;
  mkdirSync(workDir, { recursive: true });
  const total = imageMiB * MiB;
  const dataTarget = Math.floor((total * 0.68) / MiB) * MiB;
  const zeroGap = Math.floor((total - dataTarget) / Math.ceil(dataTarget / DATA_REGION) / 4096) * 4096;
  process.stderr.write(`building ${image}: ${dataTarget / MiB} MiB of tar(/usr/lib) in ${DATA_REGION / MiB} MiB regions, zero gaps of ${(zeroGap / MiB).toFixed(1)} MiB\n`);
  const fd = openSync(image + '.tmp', 'w');
  let pos = 0;
  let dataLeft = dataTarget;
  let regionLeft = DATA_REGION;
  // Re-run tar until enough data (the machine's /usr/lib is usually > 700 MiB anyway).
  while (dataLeft > 0) {
    const tar = spawn('tar', ['cf', '-', '/usr/lib'], { stdio: ['ignore', 'pipe', 'ignore'] });
    for await (const chunk of tar.stdout as AsyncIterable<Buffer>) {
      let c = chunk;
      while (c.length > 0 && dataLeft > 0) {
        const n = Math.min(c.length, regionLeft, dataLeft);
        writeSync(fd, c, 0, n, pos);
        pos += n;
        dataLeft -= n;
        regionLeft -= n;
        c = c.subarray(n);
        if (regionLeft === 0) {
          pos += zeroGap; // a hole: reads back as zeros
          regionLeft = DATA_REGION;
        }
      }
      if (dataLeft === 0) {
        tar.kill();
        break;
      }
    }
  }
  ftruncateSync(fd, total);
  closeSync(fd);
  spawnSync('mv', [image + '.tmp', image]);
  return image;
}
