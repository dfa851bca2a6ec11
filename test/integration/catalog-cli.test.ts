/**
 * The catalogue CLI commands as a user runs them (node bin/cowstream.js),
 * against an embedded catalogue with records written through the repository.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import { startEmbeddedS3, type EmbeddedS3 } from '../../src/store/embedded-s3.js';
import { startEmbeddedCatalog, type EmbeddedCatalog } from '../../src/catalog/embedded.js';
import type { ArchiveRecord } from '../../src/catalog/records.js';
import { runCli } from '../helpers/agent-process.js';

let dir: string;
let s3: EmbeddedS3;
let catalog: EmbeddedCatalog;
const recs: ArchiveRecord[] = [];

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'cowstream-catalog-cli-'));
  s3 = await startEmbeddedS3({ dir: join(dir, 's3') });
  catalog = await startEmbeddedCatalog({ stateDir: dir, s3, logger: 'quiet' });
  let parent: ArchiveRecord | null = null;
  for (let i = 0; i < 3; i++) {
    const uuid = randomUUID();
    const r: ArchiveRecord = {
      uuid,
      hostId: 'clihost',
      devices: [{ name: 'vda', size: 10 << 20 }],
      createdAt: new Date(Date.UTC(2026, 5, 1 + i)).toISOString(),
      parentUuid: parent?.uuid ?? null,
      chainDepth: i,
      bytesStored: 1000 * (i + 1),
      zeroBytes: 0,
      dataBytes: 3000,
      compressionRatio: 3,
      status: 'INDEXED',
      bucket: s3.bucket,
      key: `archives/clihost/${uuid}.cwa`,
      indexedAt: new Date().toISOString(),
    };
    await catalog.repo.putArchive(r);
    recs.push(r);
    parent = r;
  }
});

afterAll(async () => {
  await catalog?.close();
  await s3?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('catalogue CLI', () => {
  it('list --json, list (table), show --json', async () => {
    const env = { COWSTREAM_CATALOG_URL: catalog.url, COWSTREAM_CATALOG_TOKEN: catalog.token };
    const json = await runCli(['list', '--host', 'clihost', '--json'], env);
    expect(json.code, json.stderr).toBe(0);
    expect(JSON.parse(json.stdout.toString()).items.map((a: ArchiveRecord) => a.uuid)).toEqual([...recs].reverse().map((r) => r.uuid));
    const table = await runCli(['list', '--host', 'clihost', '--limit', '2', '--catalog', catalog.url, '--catalog-token', catalog.token], {});
    expect(table.code, table.stderr).toBe(0);
    const text = table.stdout.toString();
    expect(text).toMatch(/^UUID\s+HOST\s+CREATED/m);
    expect(text).toContain(recs[2]!.uuid);
    expect(text).not.toContain(recs[0]!.uuid);
    expect(text).toMatch(/more: --cursor \S+/);
    const show = await runCli(['show', recs[2]!.uuid, '--json'], env);
    expect(show.code, show.stderr).toBe(0);
    const shown = JSON.parse(show.stdout.toString());
    expect(shown.archive.uuid).toBe(recs[2]!.uuid);
    expect(shown.chain.map((a: ArchiveRecord) => a.uuid)).toEqual([recs[2]!.uuid, recs[1]!.uuid, recs[0]!.uuid]);
  });

  it('bad flags: exit 2 with a JSON error', async () => {
    const env = { COWSTREAM_CATALOG_URL: catalog.url, COWSTREAM_CATALOG_TOKEN: catalog.token };
    const bad = await runCli(['list', '--disk', 'vda', '--json'], env);
    expect(bad.code).toBe(2);
    expect(JSON.parse(bad.stdout.toString()).error.code).toBe('USAGE');
  });
});
