import { defineConfig } from 'vitest/config';

// The machine has 2 cores; tests spawn qemu tools and servers, so keep
// file-level parallelism modest and timeouts generous for CI.
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    pool: 'forks',
    maxWorkers: 2,
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // The JSON report lets .ci/run print a plain 'N passed, N failed' closing line.
    // COWSTREAM_TEST_REPORT names another file for a second run (npm test's test:zstd-fallback).
    reporters: ['default', ['json', { outputFile: process.env.COWSTREAM_TEST_REPORT ?? '.tmp/vitest-report.json' }]],
  },
});
