/**
 * A latency- and bandwidth-shaping TCP proxy for benchmarks: puts a
 * "remote" S3 endpoint in front of a local one (s3rver on loopback has no
 * latency and no bandwidth limit, so it measures CPU contention only).
 *
 *   tsx bench/shaping-proxy.ts --target 127.0.0.1:9000 [--latency-ms 20] [--mbps 100] [--json]
 *
 * Every byte is delayed by `latencyMs` in each direction (so a request and its
 * response cost 2 × latencyMs before the first response byte, like a 40 ms RTT),
 * and each connection carries at most `mbps` MB/s in each direction (its bytes
 * leave one after the other at that rate, like a link's serialization delay).
 * Bytes are never reordered. A direction holding more than MAX_QUEUED bytes
 * pauses its source (TCP backpressure), so memory stays bounded.
 */
import { createServer, connect, type AddressInfo, type Server, type Socket } from 'node:net';

export interface ShapingOptions {
  /** host:port of the real endpoint. */
  target: { host: string; port: number };
  /** One-way delay per direction, milliseconds; default 20. */
  latencyMs?: number;
  /** Per-connection, per-direction bandwidth in MB/s (10^6 bytes); default 100. */
  mbps?: number;
}

/** Bytes a direction may hold before it pauses its source. */
const MAX_QUEUED = 4 * 1024 * 1024;

/** Forwards `from` → `to` with the delay and rate of `opts`. */
function shapeDirection(from: Socket, to: Socket, latencyMs: number, bytesPerMs: number): void {
  const queue: { due: number; chunk: Buffer }[] = [];
  let queued = 0;
  /** When the link is free again (serialization of what is already scheduled). */
  let linkFree = 0;
  let timer: NodeJS.Timeout | null = null;
  let ended = false;

  const flush = (): void => {
    timer = null;
    const now = performance.now();
    while (queue.length > 0 && queue[0]!.due <= now) {
      const { chunk } = queue.shift()!;
      queued -= chunk.length;
      to.write(chunk);
    }
    if (queued < MAX_QUEUED && from.isPaused()) from.resume();
    if (queue.length > 0) timer = setTimeout(flush, Math.max(0, queue[0]!.due - performance.now()));
    else if (ended) to.end();
  };

  from.on('data', (chunk: Buffer) => {
    const now = performance.now();
    // The chunk is on the wire after the ones before it, at the link's rate,
    // and arrives latencyMs after its last byte left.
    const start = Math.max(now, linkFree);
    linkFree = start + chunk.length / bytesPerMs;
    queue.push({ due: linkFree + latencyMs, chunk });
    queued += chunk.length;
    if (queued >= MAX_QUEUED) from.pause();
    if (!timer) timer = setTimeout(flush, Math.max(0, queue[0]!.due - now));
  });
  from.on('end', () => {
    ended = true;
    if (!timer && queue.length === 0) to.end();
  });
}

/** Starts the proxy on 127.0.0.1 (a free port); resolves with it and its endpoint URL. */
export async function startShapingProxy(opts: ShapingOptions): Promise<{ server: Server; endpoint: string; close(): Promise<void> }> {
  const latencyMs = opts.latencyMs ?? 20;
  const bytesPerMs = ((opts.mbps ?? 100) * 1e6) / 1000;
  const sockets = new Set<Socket>();
  const server = createServer((client) => {
    const upstream = connect(opts.target.port, opts.target.host);
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.setNoDelay(true);
      s.on('close', () => sockets.delete(s));
      s.on('error', () => {
        client.destroy();
        upstream.destroy();
      });
    }
    shapeDirection(client, upstream, latencyMs, bytesPerMs);
    shapeDirection(upstream, client, latencyMs, bytesPerMs);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    server,
    endpoint: `http://127.0.0.1:${port}`,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

if (process.argv[1]?.endsWith('shaping-proxy.ts')) {
  const target = arg('--target');
  const m = target ? /^(.+):(\d+)$/.exec(target.replace(/^https?:\/\//, '')) : null;
  if (!m) {
    process.stderr.write('usage: shaping-proxy.ts --target HOST:PORT [--latency-ms 20] [--mbps 100] [--json]\n');
    process.exit(2);
  }
  const latencyMs = Number(arg('--latency-ms') ?? 20);
  const mbps = Number(arg('--mbps') ?? 100);
  const p = await startShapingProxy({ target: { host: m[1]!, port: Number(m[2]) }, latencyMs, mbps });
  if (process.argv.includes('--json')) process.stdout.write(JSON.stringify({ endpoint: p.endpoint, latencyMs, mbps }) + '\n');
  else process.stdout.write(`shaping proxy ${p.endpoint} → ${target} (${latencyMs} ms each way, ${mbps} MB/s per connection and direction)\n`);
  const stop = (): void => void p.close().then(() => process.exit(0));
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}
