/**
 * A stalled store never hangs the agent. Two kinds of stall:
 *   - a TCP server that accepts connections and never answers a byte
 *     (from the first request on);
 *   - a working store (fauxqs behind S3FaultProxy) that stops answering
 *     UploadPart and AbortMultipartUpload in the middle of an incremental.
 * Cancel answers within the documented bound (store.timeouts.cleanupMs +
 * 5 s, docs/agent.md) with the backup already 'cancelled', the dirty bits
 * are reclaimed, and stop() returns promptly. Every S3 client fails a silent
 * request after store.timeouts.requestMs.
 */
import { createServer, type Server, type Socket } from 'node:net';
import type { AddressInfo } from 'node:net';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { HeadObjectCommand } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startAgent, type Agent } from '../../src/agent/agent.js';
import { parseAgentConfig } from '../../src/agent/config.js';
import { AgentClient } from '../../src/agent/control-client.js';
import { silentLogger } from '../../src/agent/log.js';
import type { FileDiskStatus } from '../../src/agent/backup-request.js';
import { createS3Client } from '../../src/store/s3-client.js';
import { NbdClient } from '../../src/nbd/client.js';
import { makeDisk, makeTempDir } from '../helpers/agent-process.js';
import { S3FaultProxy } from '../helpers/s3-fault-proxy.js';
import { startFauxqs, type TestS3Server } from '../helpers/s3-servers.js';

const MiB = 1024 * 1024;
const SIZE = 12 * MiB; // > the 8 MiB part size: a multipart upload
const TIMEOUTS = { connectMs: 1000, requestMs: 2000, cleanupMs: 1500 };
/** The documented bound on a cancel's answer: cleanupMs + 5 s. */
const CANCEL_BOUND_MS = TIMEOUTS.cleanupMs + 5000;
const CREDS = { AWS_ACCESS_KEY_ID: 'S3RVER', AWS_SECRET_ACCESS_KEY: 'S3RVER' } as const;
const savedEnv = new Map(Object.keys(CREDS).map((k) => [k, process.env[k]]));

/** Accepts every connection and never sends a byte. */
class BlackHole {
  private readonly sockets = new Set<Socket>();
  private constructor(
    private readonly server: Server,
    readonly endpoint: string,
  ) {}
  accepted = 0;
  static async start(): Promise<BlackHole> {
    let self!: BlackHole;
    const server = createServer((s) => {
      self.accepted++;
      self.sockets.add(s);
      s.on('error', () => undefined);
      s.on('close', () => self.sockets.delete(s));
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    self = new BlackHole(server, `http://127.0.0.1:${(server.address() as AddressInfo).port}`);
    return self;
  }
  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((r) => this.server.close(() => r()));
  }
}

let tmp: { dir: string; cleanup(): Promise<void> };
let hole: BlackHole;
let server: TestS3Server;
let proxy: S3FaultProxy;
const agents: Agent[] = [];

beforeAll(async () => {
  Object.assign(process.env, CREDS);
  tmp = await makeTempDir('cowstream-s3-stall-');
  hole = await BlackHole.start();
  server = await startFauxqs('stall');
  proxy = await S3FaultProxy.start(server.endpoint);
});

afterAll(async () => {
  // The stalls end first, so that an agent that does hang still gets to stop.
  await proxy?.close();
  await hole?.close();
  for (const a of agents) await a.stop();
  await server?.close();
  await tmp?.cleanup();
  for (const [k, v] of savedEnv) {
    if (v === undefined) delete process.env[k];
    else process.env[k] = v;
  }
});

async function agentOn(name: string, endpoint: string): Promise<{ agent: Agent; control: AgentClient }> {
  const path = join(tmp.dir, `${name}.raw`);
  await makeDisk(path, SIZE, 7);
  const agent = await startAgent(
    parseAgentConfig({
      hostId: name,
      stateDir: join(tmp.dir, `state-${name}`),
      disks: [{ name: 'vda', path }],
      nbd: { listen: '127.0.0.1:0' },
      store: { bucket: 'stall', region: 'us-east-1', endpoint, forcePathStyle: true, timeouts: TIMEOUTS },
    }),
    { log: silentLogger },
  );
  agents.push(agent);
  return { agent, control: new AgentClient(agent.controlSocket) };
}

async function timed<T>(p: Promise<T>): Promise<{ value: T; ms: number }> {
  const t0 = performance.now();
  const value = await p;
  return { value, ms: performance.now() - t0 };
}

describe('a store that accepts connections and never answers', () => {
  it('every S3 client gives up on a silent request after requestMs', async () => {
    const client = createS3Client({ bucket: 'stall', prefix: '', endpoint: hole.endpoint, region: 'us-east-1', timeouts: { requestMs: 500 } }, { maxAttempts: 1 });
    try {
      const { value, ms } = await timed(client.send(new HeadObjectCommand({ Bucket: 'stall', Key: 'x' })).then(() => 'answered', (e: unknown) => e));
      expect(value).toBeInstanceOf(Error);
      expect(ms).toBeLessThan(5000);
    } finally {
      client.destroy();
    }
  });

  it('cancel returns within the bound with the backup cancelled, and stop() does not hang', async () => {
    const { agent, control } = await agentOn('hole', hole.endpoint);
    const st = await control.startBackup({ mode: 'full', target: 's3' });
    expect(st.uuid).toBeTruthy();
    // Let the upload reach the endpoint and stall there.
    const deadline = Date.now() + 10_000;
    while (hole.accepted === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    expect(hole.accepted).toBeGreaterThan(0);
    await new Promise((r) => setTimeout(r, 500));
    const { value, ms } = await timed(control.cancel());
    expect(value.status).toBe('cancelled');
    expect(ms).toBeLessThan(CANCEL_BOUND_MS);
    expect(agent.disks[0]!.dirty.isFrozen).toBe(false);
    const stop = await timed(agent.stop());
    expect(stop.ms).toBeLessThan(CANCEL_BOUND_MS);
  }, 60_000);
});

describe('a store that stops answering in the middle of an incremental', () => {
  it('cancel returns within the bound (AbortMultipartUpload stalls too) and the dirty bits are reclaimed', async () => {
    const { agent, control } = await agentOn('mid', proxy.endpoint);
    const full = await control.startBackup({ mode: 'full', target: 's3' });
    expect((await control.waitForBackup(full.uuid, undefined, 25)).status).toBe('done');
    // 10 MiB of guest writes: the incremental is a multipart upload too.
    const nbd = await NbdClient.connect({ host: agent.nbdAddress!.host, port: agent.nbdAddress!.port }, { exportName: 'vda' });
    for (let off = 0; off < 10 * MiB; off += MiB) await nbd.write(off, randomBytes(MiB));
    await nbd.close();
    const before = (await control.disks()).find((d) => d.name === 'vda') as FileDiskStatus;
    expect(before.bitmap.dirtyBytes).toBe(10 * MiB);

    const parts0 = proxy.count('UploadPart');
    const aborts0 = proxy.count('AbortMultipartUpload');
    proxy.addRule({ op: 'UploadPart', action: { delayMs: 600_000 } });
    proxy.addRule({ op: 'AbortMultipartUpload', action: { delayMs: 600_000 } });
    const inc = await control.startBackup({ mode: 'incremental', target: 's3' });
    expect(inc.mode).toBe('incremental');
    const deadline = Date.now() + 10_000;
    while (proxy.count('UploadPart') === parts0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    expect(proxy.count('UploadPart')).toBeGreaterThan(parts0);
    const { value, ms } = await timed(control.cancel());
    expect(value.status).toBe('cancelled');
    expect(ms).toBeLessThan(CANCEL_BOUND_MS);
    expect(proxy.count('AbortMultipartUpload')).toBe(aborts0 + 1); // tried, stalled, given up after cleanupMs
    const after = (await control.disks()).find((d) => d.name === 'vda') as FileDiskStatus;
    expect(after.inBackup).toBe(false);
    expect(after.bitmap.state).toBe('valid');
    expect(after.bitmap.dirtyBytes).toBe(10 * MiB);
  }, 90_000);
});
