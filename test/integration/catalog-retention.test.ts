/**
 * The embedded catalogue's retention: after each indexed archive the
 * configured policy is applied to that archive's host with the prune
 * Lambda's code (runPrune → planPrune + applyDeletions), against real peers
 * (s3rver + dynalite). Chains stay whole, children go before parents, other
 * hosts are untouched, and a bad policy stops start-up naming the field.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { HeadObjectCommand } from '@aws-sdk/client-s3';
import { ZstdPool } from '../../src/codec/zstd-pool.js';
import { CLUSTER_SIZE } from '../../src/format/constants.js';
import { startEmbeddedS3, type EmbeddedS3 } from '../../src/store/embedded-s3.js';
import { startEmbeddedCatalog, type EmbeddedCatalog } from '../../src/catalog/embedded.js';
import type { Logger } from '../../src/catalog/log.js';
import { ConfigError } from '../../src/errors.js';
import { buildChain, type ChainStep } from '../helpers/s3-chain-fixture.js';
import { runCli } from '../helpers/agent-process.js';

let dir: string;
let s3: EmbeddedS3;
let catalog: EmbeddedCatalog | undefined;
let pool: ZstdPool;
const devices = [{ id: 0, name: 'vda', size: 3 * CLUSTER_SIZE }];

/** Records what the catalogue logs, to see the order of deletions and that no run failed. */
function captureLogger(lines: Array<{ level: string; message: string; extra: Record<string, unknown> }>): Logger {
  const at = (level: string) => (message: string, extra: Record<string, unknown> = {}) => lines.push({ level, message, extra });
  const logger: Logger = { debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error'), child: () => logger };
  return logger;
}

async function objectExists(key: string): Promise<boolean> {
  try {
    await catalog!.s3Client.send(new HeadObjectCommand({ Bucket: s3.bucket, Key: key }));
    return true;
  } catch (err) {
    if ((err as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode === 404) return false;
    throw err;
  }
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'cowstream-catalog-retention-'));
  s3 = await startEmbeddedS3({ dir: join(dir, 's3') });
  pool = new ZstdPool({ workers: 1 });
});

afterAll(async () => {
  await catalog?.close();
  await pool?.close();
  await s3?.close();
  rmSync(dir, { recursive: true, force: true });
});

describe('embedded catalogue retention', () => {
  it('refuses a bad policy at start, naming the field', async () => {
    for (const [policy, field] of [
      [{ keepLast: -1 }, 'keepLast'],
      [{ keepLots: 2 }, 'keepLots'],
      [{ hosts: { h1: { keepDaily: 'x' } } }, 'keepDaily'],
    ] as const) {
      const err = await startEmbeddedCatalog({ stateDir: join(dir, 'bad'), s3, logger: 'quiet', console: false, retention: policy as never }).then(
        async (c) => {
          await c.close();
          return null;
        },
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(ConfigError);
      expect((err as Error).message).toContain(field);
    }
  });

  it('with keepLast 2, indexing a host\'s chains leaves what the policy keeps, child before parent, other hosts untouched', async () => {
    // Another host's archives, indexed by a catalogue without a policy: a run scoped to h1 must not touch them.
    catalog = await startEmbeddedCatalog({ stateDir: dir, s3, logger: 'quiet', console: false });
    const other: ChainStep[] = [];
    for (let i = 0; i < 3; i++) other.push(...(await buildChain({ client: catalog.s3Client, bucket: s3.bucket, prefix: '', hostId: 'h2', devices, incrementals: 0, compressor: pool, seed: 10 + i })));
    await catalog.idle();
    for (const a of other) expect((await catalog.repo.getArchive(a.uuid))?.status).toBe('INDEXED');
    await catalog.close();

    const log: Array<{ level: string; message: string; extra: Record<string, unknown> }> = [];
    catalog = await startEmbeddedCatalog({ stateDir: dir, s3, logger: captureLogger(log), console: false, retention: { keepLast: 2 } });
    const older = await buildChain({ client: catalog.s3Client, bucket: s3.bucket, prefix: '', hostId: 'h1', devices, incrementals: 1, compressor: pool, seed: 1 });
    await catalog.idle();
    // Two archives: both kept.
    for (const a of older) expect((await catalog.repo.getArchive(a.uuid))?.status).toBe('INDEXED');
    const newer = await buildChain({ client: catalog.s3Client, bucket: s3.bucket, prefix: '', hostId: 'h1', devices, incrementals: 2, compressor: pool, seed: 2 });
    await catalog.idle();

    // keepLast 2 keeps the two newest incrementals; their full comes with them as an ancestor. The older chain goes.
    for (const a of newer) {
      expect((await catalog.repo.getArchive(a.uuid))?.status).toBe('INDEXED');
      expect(await objectExists(a.key)).toBe(true);
    }
    for (const a of older) {
      const r = await catalog.repo.getArchive(a.uuid);
      expect(r?.status).toBe('DELETED');
      expect(r?.reason).toBe('pruned by retention policy');
      expect(await objectExists(a.key)).toBe(false);
    }
    const deletions = log.filter((l) => l.message === 'deleted archive').map((l) => l.extra.uuid);
    expect(deletions).toEqual([older[1]!.uuid, older[0]!.uuid]);
    expect(log.filter((l) => l.level === 'error')).toEqual([]);
    for (const a of other) {
      expect((await catalog.repo.getArchive(a.uuid))?.status).toBe('INDEXED');
      expect(await objectExists(a.key)).toBe(true);
    }
  });

  it('catalog serve --retention / --retention-file: a bad policy exits 2 naming the field, before anything starts', async () => {
    const state = join(dir, 'cli-state');
    const file = join(dir, 'policy.json');
    writeFileSync(file, JSON.stringify({ disks: { 'h1/vda': { keepWeekly: 1.5 } } }));
    for (const [args, want] of [
      [['--retention', '{"keepLast":-1}'], /--retention: invalid retention policy: .*keepLast/],
      [['--retention', '{"keepLots":1}'], /keepLots/],
      [['--retention', 'keepLast=2'], /--retention is not valid JSON/],
      [['--retention-file', file], /--retention-file: invalid retention policy: .*keepWeekly/],
      [['--retention-file', join(dir, 'missing.json')], /--retention-file: cannot read/],
      [['--retention', '{}', '--retention-file', file], /not both/],
    ] as const) {
      const r = await runCli(['catalog', 'serve', '--state', state, '--json', ...args]);
      expect(r.code, r.stderr).toBe(2);
      const out = JSON.parse(r.stdout.toString()) as { error: { code: string; message: string } };
      expect(out.error.code).toBe('USAGE');
      expect(out.error.message).toMatch(want);
    }
    expect(existsSync(state)).toBe(false);
  });
});
