/**
 * Builds a realistic incremental chain in S3: a full archive of two devices,
 * then N incrementals that carry only the clusters changed since their
 * parent (some rewritten with new data, some zeroed), exactly as a CBW
 * backup with dirty bitmaps would. Keeps the disk state after every step
 * so tests can compare restores against it.
 */
import { randomBytes } from 'node:crypto';
import type { S3Client } from '@aws-sdk/client-s3';
import { v7 as uuidv7 } from 'uuid';
import type { Compressor } from '../../src/codec/types.js';
import { CLUSTER_SIZE } from '../../src/format/constants.js';
import { ArchiveWriter } from '../../src/format/writer.js';
import { archiveKey } from '../../src/store/config.js';
import { S3ArchiveSink } from '../../src/store/s3-sink.js';

export interface FixtureDevice {
  id: number;
  name: string;
  size: number;
}

export interface ChainStep {
  uuid: string;
  key: string;
  /** Disk contents after this backup, by device name. */
  disks: Map<string, Buffer>;
  changedClusters: number;
}

function rng(seed: number): (n: number) => number {
  let s = seed >>> 0;
  return (n) => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s % n;
  };
}

/** Mixed content: random (incompressible), text-like (compressible), zero regions. */
export function makeDisk(size: number, seed: number): Buffer {
  const r = rng(seed);
  const buf = Buffer.alloc(size);
  for (let off = 0; off < size; off += CLUSTER_SIZE) {
    const len = Math.min(CLUSTER_SIZE, size - off);
    const kind = r(10);
    if (kind < 3) randomBytes(len).copy(buf, off);
    else if (kind < 7) buf.write(`cluster ${off / CLUSTER_SIZE} seed ${seed} `.repeat(len / 16), off, len, 'latin1');
    else if (kind < 8) {
      // partly zero cluster: zero 4 KiB blocks inside data
      randomBytes(len).copy(buf, off);
      buf.fill(0, off, off + Math.min(len, 8192));
    }
    // else: all zero
  }
  return buf;
}

async function writeArchive(opts: {
  client: S3Client;
  bucket: string;
  prefix: string;
  hostId: string;
  devices: FixtureDevice[];
  parentUuid: string | null;
  compressor: Compressor;
  clusters: Array<{ deviceId: number; cluster: number; data: Buffer }>;
  encryptionKey?: Buffer;
}): Promise<{ uuid: string; key: string }> {
  // The key contains the uuid, so pick it before the writer (as the agent does).
  const uuid = uuidv7();
  const key = archiveKey(opts.prefix, opts.hostId, uuid);
  const sink = new S3ArchiveSink({
    client: opts.client,
    bucket: opts.bucket,
    key,
    expectedBytes: opts.devices.reduce((n, d) => n + d.size, 0),
    metadata: { uuid, parentUuid: opts.parentUuid, hostId: opts.hostId, deviceNames: opts.devices.map((d) => d.name) },
  });
  const w = await ArchiveWriter.create({
    hostId: opts.hostId,
    devices: opts.devices,
    parentUuid: opts.parentUuid,
    uuid,
    compressor: opts.compressor,
    output: sink,
    ...(opts.encryptionKey ? { encryptionKey: opts.encryptionKey } : {}),
  });
  // Any order is allowed: shuffle a little like CBW would.
  const order = [...opts.clusters].sort((a, b) => ((a.cluster * 7919) % 13) - ((b.cluster * 7919) % 13) || a.cluster - b.cluster);
  for (const c of order) await w.writeCluster(c.deviceId, c.cluster, c.data);
  await w.finish();
  return { uuid, key };
}

export async function buildChain(opts: {
  client: S3Client;
  bucket: string;
  prefix: string;
  hostId: string;
  devices: FixtureDevice[];
  incrementals: number;
  compressor: Compressor;
  seed?: number;
  encryptionKey?: Buffer;
}): Promise<ChainStep[]> {
  const r = rng(opts.seed ?? 42);
  const disks = new Map(opts.devices.map((d, i) => [d.name, makeDisk(d.size, (opts.seed ?? 42) + i)]));
  const all = (): Array<{ deviceId: number; cluster: number; data: Buffer }> =>
    opts.devices.flatMap((d) => {
      const buf = disks.get(d.name)!;
      const n = Math.ceil(d.size / CLUSTER_SIZE);
      return Array.from({ length: n }, (_, c) => ({ deviceId: d.id, cluster: c, data: Buffer.from(buf.subarray(c * CLUSTER_SIZE, Math.min(d.size, (c + 1) * CLUSTER_SIZE))) }));
    });
  const steps: ChainStep[] = [];
  const snapshot = (): Map<string, Buffer> => new Map([...disks].map(([k, v]) => [k, Buffer.from(v)]));
  const full = await writeArchive({ ...opts, parentUuid: null, clusters: all() });
  steps.push({ ...full, disks: snapshot(), changedClusters: all().length });
  for (let i = 0; i < opts.incrementals; i++) {
    const changed: Array<{ deviceId: number; cluster: number; data: Buffer }> = [];
    for (const d of opts.devices) {
      const buf = disks.get(d.name)!;
      const n = Math.ceil(d.size / CLUSTER_SIZE);
      const picks = new Set<number>();
      const count = 1 + r(Math.max(1, Math.floor(n / 6)));
      for (let k = 0; k < count; k++) picks.add(r(n));
      if (i === 0) picks.add(n - 1); // the partial last cluster changes at least once
      for (const c of picks) {
        const off = c * CLUSTER_SIZE;
        const len = Math.min(CLUSTER_SIZE, d.size - off);
        const mode = r(4);
        if (mode === 0) buf.fill(0, off, off + len); // zeroed (trim): must become a zero run
        else if (mode === 1) randomBytes(len).copy(buf, off);
        else buf.write(`step ${i} dev ${d.name} c ${c} `.repeat(len / 8), off, len, 'latin1');
        changed.push({ deviceId: d.id, cluster: c, data: Buffer.from(buf.subarray(off, off + len)) });
      }
    }
    const inc = await writeArchive({ ...opts, parentUuid: steps[steps.length - 1]!.uuid, clusters: changed });
    steps.push({ ...inc, disks: snapshot(), changedClusters: changed.length });
  }
  return steps;
}
