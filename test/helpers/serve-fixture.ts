/**
 * A depth-3 chain (full + 2 incrementals, written by the archive writer
 * through the S3 multipart sink) in s3rver behind a counting proxy, for the
 * `serve` tests; plus the extents a read of given clusters needs, computed
 * from the plan independently of the serve code.
 */
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GetObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { ZstdPool } from '../../src/codec/zstd-pool.js';
import { CLUSTER_SIZE } from '../../src/format/constants.js';
import type { ArchiveContext } from '../../src/restore/locate.js';
import type { PlanExtent, RestorePlan } from '../../src/restore/plan.js';
import { buildChain, type ChainStep, type FixtureDevice } from './s3-chain-fixture.js';
import { S3FaultProxy } from './s3-fault-proxy.js';
import { startS3rver, type TestS3Server } from './s3-servers.js';

export const SERVE_DEVICES: FixtureDevice[] = [
  { id: 0, name: 'vda', size: 6 * 1024 * 1024 + 12345 },
  { id: 3, name: 'vdb', size: 2 * 1024 * 1024 },
];

export interface ServeFixture {
  server: TestS3Server;
  proxy: S3FaultProxy;
  client: S3Client;
  pool: ZstdPool;
  steps: ChainStep[];
  work: string;
  /** A context whose S3 traffic goes through the proxy. */
  ctx(): ArchiveContext;
  /** Copies every archive of the chain to `<dir>/<uuid>.cwa`. */
  download(dir: string): Promise<string[]>;
  /**
   * The chain copied to `<work>/<name>/`, with one byte flipped at `at` of a
   * winning extent of the full archive that supplies vda.
   */
  corruptCopy(plan: RestorePlan, name: string, at: (e: PlanExtent) => number): Promise<{ paths: string[]; victim: PlanExtent }>;
  close(): Promise<void>;
}

export async function startServeFixture(): Promise<ServeFixture> {
  const work = mkdtempSync(join(tmpdir(), 'cowstream-serve-'));
  const server = await startS3rver('backups');
  const client = server.client();
  const pool = new ZstdPool({ workers: 2 });
  const steps = await buildChain({ client, bucket: 'backups', prefix: 'site1', hostId: 'host-a', devices: SERVE_DEVICES, incrementals: 2, compressor: pool, seed: 7 });
  const proxy = await S3FaultProxy.start(server.endpoint);
  const proxied = server.client({ endpoint: proxy.endpoint });
  const fixture: ServeFixture = {
    server,
    proxy,
    client,
    pool,
    steps,
    work,
    ctx: () => ({ store: server.storeConfig('site1', proxy.endpoint), client: proxied }),
    async download(dir) {
      const paths: string[] = [];
      for (const s of steps) {
        const res = await client.send(new GetObjectCommand({ Bucket: 'backups', Key: s.key }));
        const p = join(dir, `${s.uuid}.cwa`);
        writeFileSync(p, Buffer.from(await res.Body!.transformToByteArray()), { mode: 0o600 });
        paths.push(p);
      }
      return paths;
    },
    async corruptCopy(plan, name, at) {
      const dir = join(work, name);
      mkdirSync(dir);
      const paths = await fixture.download(dir);
      const full = plan.chain.length - 1;
      const range = plan.ranges.find((r) => r.archive === full && r.extents.some((e) => e.runs.some(([pi]) => pi === 0)))!;
      const victim = range.extents.find((e) => e.runs.some(([pi]) => pi === 0))!;
      const bytes = readFileSync(paths[0]!);
      bytes[victim.offset + at(victim)]! ^= 0x40;
      writeFileSync(paths[0]!, bytes);
      return { paths, victim };
    },
    async close() {
      await proxy.close();
      await pool.close();
      await server.close();
      rmSync(work, { recursive: true, force: true });
    },
  };
  return fixture;
}

/** Keys ("<chain index>@<offset>") of the extents holding clusters [c0, c1] of plan device `pi`. */
export function extentsFor(plan: RestorePlan, pi: number, c0: number, c1: number): Set<string> {
  const out = new Set<string>();
  for (const r of plan.ranges) {
    for (const e of r.extents) {
      for (const [p, , first, count] of e.runs) if (p === pi && first <= c1 && first + count - 1 >= c0) out.add(`${r.archive}@${e.offset}`);
    }
  }
  return out;
}

/** Clusters of plan device `pi` that come from data extents (not zero runs), ascending. */
export function dataClusters(plan: RestorePlan, pi: number): number[] {
  const out: number[] = [];
  for (const r of plan.ranges) for (const e of r.extents) for (const [p, , first, count] of e.runs) if (p === pi) for (let c = first; c < first + count; c++) out.push(c);
  return out.sort((a, b) => a - b);
}

export const clusterOffset = (c: number): number => c * CLUSTER_SIZE;
