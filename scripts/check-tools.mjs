#!/usr/bin/env node
// Checks for the Debian tools the test suite drives as real peers. As root it
// installs what is missing with apt-get; otherwise it stops and names the packages.
import { execFileSync, spawnSync } from 'node:child_process';

const TOOLS = {
  'qemu-io': 'qemu-utils',
  'qemu-img': 'qemu-utils',
  nbdcopy: 'libnbd-bin',
  nbdinfo: 'libnbd-bin',
  'qemu-storage-daemon': 'qemu-system-common',
  zstd: 'zstd',
  // The web console's browser tests (playwright-core drives it; it never downloads a browser).
  chromium: 'chromium',
};

const has = (cmd) => spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0;
const missing = Object.keys(TOOLS).filter((t) => !has(t));
if (missing.length === 0) process.exit(0);

const pkgs = [...new Set(missing.map((t) => TOOLS[t]))];
const isRoot = typeof process.getuid === 'function' && process.getuid() === 0;
if (!isRoot) {
  console.error(`cowstream tests need: ${missing.join(', ')}.\nInstall them with: sudo apt-get install -y ${pkgs.join(' ')}`);
  process.exit(1);
}
console.error(`installing missing test tools (${missing.join(', ')}): apt-get install -y ${pkgs.join(' ')}`);
const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
execFileSync('apt-get', ['update', '-qq'], { stdio: 'inherit', env });
execFileSync('apt-get', ['install', '-y', '-qq', ...pkgs], { stdio: 'inherit', env });
const still = Object.keys(TOOLS).filter((t) => !has(t));
if (still.length) {
  console.error(`still missing after install: ${still.join(', ')}`);
  process.exit(1);
}
