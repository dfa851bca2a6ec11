/**
 * Slow endpoint: write() blocks (backpressure reaches the producer) and RSS
 * stays within the sink's documented bound. In its own test file so the RSS
 * baseline is this process alone; the S3 server runs as a child process
 * (`cowstream s3 serve`, which this also exercises) so its memory is not ours.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createS3Client } from '../../src/store/s3-client.js';
import { S3ArchiveSink } from '../../src/store/s3-sink.js';
import { S3FaultProxy } from '../helpers/s3-fault-proxy.js';
import { readEmbeddedCredentials } from '../../src/store/embedded-credentials.js';

const MiB = 1024 * 1024;

describe('S3 sink against a slow endpoint (server in a child process)', () => {
  let child: ChildProcess;
  let dir: string;
  let endpoint: string;
  let proxy: S3FaultProxy;
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'cowstream-slow-'));
    child = spawn(process.execPath, ['bin/cowstream.js', 's3', 'serve', '--state', dir, '--bucket', 'slow', '--json'], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    const line = await new Promise<string>((resolve, reject) => {
      const rl = createInterface({ input: child.stdout! });
      rl.once('line', resolve);
      child.once('exit', (code) => reject(new Error(`s3 serve exited with ${code}`)));
    });
    endpoint = (JSON.parse(line) as { endpoint: string }).endpoint;
    proxy = await S3FaultProxy.start(endpoint);
  }, 30_000);
  afterAll(async () => {
    await proxy?.close();
    if (child && child.exitCode === null) {
      child.kill('SIGTERM');
      await new Promise((r) => child.once('exit', r));
    }
    rmSync(dir, { recursive: true, force: true });
  });

  it('backpressure holds and RSS stays within the documented bound while 200 MiB go up', async () => {
    proxy.addRule({ op: 'UploadPart', action: { delayMs: 60 } });
    const client = createS3Client({
      bucket: 'slow',
      prefix: '',
      endpoint: proxy.endpoint,
      region: 'us-east-1',
      credentials: (await readEmbeddedCredentials(dir)).s3,
    });
    const total = 200 * MiB;
    let acked = 0;
    const sink = new S3ArchiveSink({
      client,
      bucket: 'slow',
      key: 'archives/h/big.cwa',
      partSize: 5 * MiB,
      queueSize: 2,
      expectedBytes: total,
      onProgress: (n) => (acked = n),
    });
    expect(sink.memoryBound).toBe((2 + 2) * 5 * MiB + 2 * MiB);
    const block = randomBytes(MiB);
    // Warm-up: the first requests load SDK modules and grow the JS heap; that
    // is not the sink's buffering.
    const warm = new S3ArchiveSink({ client, bucket: 'slow', key: 'archives/h/warm.cwa', partSize: 5 * MiB, queueSize: 2 });
    for (let i = 0; i < 12; i++) await warm.write(block);
    await warm.close();
    const baseline = process.memoryUsage().rss;
    let peak = baseline;
    const sampler = setInterval(() => (peak = Math.max(peak, process.memoryUsage().rss)), 10);
    let maxAhead = 0;
    try {
      for (let off = 0; off < total; off += MiB) {
        // A fresh buffer per write, like the archive writer: the sink may keep
        // what it was given until the part is cut (ByteSink contract).
        const chunk = Buffer.from(block);
        chunk.writeUInt32LE(off / MiB, 0); // distinct content per MiB
        await sink.write(chunk);
        // Backpressure: accepted bytes never run ahead of server-acknowledged
        // bytes by more than what the sink may buffer.
        maxAhead = Math.max(maxAhead, off + MiB - acked);
      }
      await sink.close();
    } finally {
      clearInterval(sampler);
      client.destroy();
    }
    peak = Math.max(peak, process.memoryUsage().rss);
    expect(sink.completed?.bytes).toBe(total);
    expect(proxy.count('UploadPart')).toBe(40 + 3);
    expect(maxAhead).toBeLessThanOrEqual(sink.memoryBound);
    // RSS: the bound plus generous slack for garbage not yet collected (V8
    // collects external buffers lazily: measured 46–76 MiB deltas under load)
    // and SDK/HTTP state — still well below the 200 MiB an unbounded buffer
    // would add. maxAhead above is the exact check.
    const slack = 96 * MiB;
    expect(peak - baseline).toBeLessThan(sink.memoryBound + slack);
    console.log(`slow endpoint: rss delta ${((peak - baseline) / MiB).toFixed(1)} MiB, bound ${(sink.memoryBound / MiB).toFixed(0)} MiB (+${slack / MiB} slack), max ahead ${(maxAhead / MiB).toFixed(1)} MiB`);
  }, 60_000);
});
