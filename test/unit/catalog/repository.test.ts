import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { archiveRecord, startTestCatalog, type TestCatalog } from './fixtures.js';
import { ConflictError, NotFoundError, UsageError } from '../../../src/errors.js';
import { compareSequencer } from '../../../src/catalog/repository.js';
import type { RestoreJob } from '../../../src/catalog/records.js';

let cat: TestCatalog;
beforeAll(async () => {
  cat = await startTestCatalog();
});
afterAll(async () => {
  await cat?.close();
});

function job(hostId: string): RestoreJob {
  const now = new Date().toISOString();
  const id = randomUUID();
  return {
    id,
    archiveId: randomUUID(),
    hostId,
    target: { path: '/restore/x' },
    status: 'PENDING',
    planKey: `restore-plans/${id}.json`,
    progress: { bytesDone: 0, bytesTotal: 0 },
    createdAt: now,
    updatedAt: now,
  };
}

describe('CatalogRepository on dynalite', () => {
  it('lists a host newest first across pages with opaque cursors, and per disk', async () => {
    const host = 'pageh';
    const recs = [];
    for (let i = 0; i < 7; i++) {
      const devices = i % 2 === 0 ? [{ name: 'vda', size: 10 }, { name: 'vdb', size: 20 }] : [{ name: 'vda', size: 10 }];
      recs.push(archiveRecord({ hostId: host, createdAt: new Date(Date.UTC(2026, 0, 1 + i)).toISOString(), devices }));
    }
    // Insert out of order: listing order must come from the index, not insertion.
    for (const r of [...recs].reverse()) expect(await cat.repo.putArchive(r)).toBe('created');
    await cat.repo.putArchive(archiveRecord({ hostId: 'otherhost', createdAt: '2026-02-01T00:00:00.000Z' }));

    const seen: string[] = [];
    let cursor: string | undefined;
    let pages = 0;
    do {
      const page = await cat.repo.listArchives({ hostId: host, limit: 3, cursor });
      seen.push(...page.items.map((a) => a.uuid));
      cursor = page.cursor;
      pages++;
    } while (cursor && pages < 10);
    expect(seen).toEqual([...recs].reverse().map((r) => r.uuid));
    expect(pages).toBeGreaterThanOrEqual(3);

    const vdb = await cat.repo.listArchives({ hostId: host, disk: 'vdb' });
    expect(vdb.items.map((a) => a.uuid)).toEqual([recs[6]!.uuid, recs[4]!.uuid, recs[2]!.uuid, recs[0]!.uuid]);

    const all = await cat.repo.listArchives({ limit: 500 });
    expect(all.items[0]!.hostId).toBe('otherhost');
  });

  it('rejects forged or foreign cursors', async () => {
    const page = await cat.repo.listArchives({ hostId: 'pageh', limit: 1 });
    expect(page.cursor).toBeDefined();
    await expect(cat.repo.listArchives({ hostId: 'otherhost', cursor: page.cursor })).rejects.toBeInstanceOf(UsageError);
    await expect(cat.repo.listArchives({ hostId: 'pageh', cursor: 'not*base64' })).rejects.toBeInstanceOf(UsageError);
    const forged = Buffer.from(JSON.stringify({ pk: { S: 'x' } })).toString('base64url');
    await expect(cat.repo.listArchives({ hostId: 'pageh', cursor: forged })).rejects.toBeInstanceOf(UsageError);
  });

  it('indexing is idempotent and ordered by sequencer; deletes hide archives', async () => {
    const rec = archiveRecord({ hostId: 'idem', createdAt: '2026-03-01T00:00:00.000Z', sequencer: '0A' });
    expect(await cat.repo.putArchive(rec)).toBe('created');
    await cat.repo.recordVerification(rec.uuid, true);
    expect(await cat.repo.putArchive(rec)).toBe('unchanged');
    expect((await cat.repo.getArchive(rec.uuid))!.status).toBe('VERIFIED'); // re-index did not reset state
    expect(await cat.repo.markDeleted(rec.uuid, '09')).toBe('stale'); // older event than the applied one
    expect(await cat.repo.markDeleted(rec.uuid, '0B')).toBe('deleted');
    expect(await cat.repo.markDeleted(rec.uuid, '0C')).toBe('unchanged');
    expect(['stale', 'unchanged']).toContain(await cat.repo.putArchive({ ...rec, sequencer: '0A' })); // late created event
    expect((await cat.repo.getArchive(rec.uuid))!.status).toBe('DELETED');
    expect((await cat.repo.listArchives({ hostId: 'idem' })).items).toEqual([]);
    expect((await cat.repo.listArchives({ hostId: 'idem', includeDeleted: true })).items).toHaveLength(1);
    expect(compareSequencer('FF', '0100')).toBeLessThan(0);
  });

  it('resolves chains and children', async () => {
    const full = archiveRecord({ hostId: 'chain', createdAt: '2026-04-01T00:00:00.000Z' });
    const inc1 = archiveRecord({ hostId: 'chain', createdAt: '2026-04-02T00:00:00.000Z', parentUuid: full.uuid, chainDepth: 1 });
    const inc2 = archiveRecord({ hostId: 'chain', createdAt: '2026-04-03T00:00:00.000Z', parentUuid: inc1.uuid, chainDepth: 2 });
    for (const r of [full, inc1, inc2]) await cat.repo.putArchive(r);
    expect((await cat.repo.getChain(inc2.uuid)).map((a) => a.uuid)).toEqual([inc2.uuid, inc1.uuid, full.uuid]);
    expect((await cat.repo.listChildren(full.uuid)).map((a) => a.uuid)).toEqual([inc1.uuid]);
    await expect(cat.repo.getChain(randomUUID())).rejects.toBeInstanceOf(NotFoundError);
  });

  it('10 concurrent claims of one job: exactly one wins', async () => {
    const j = job('claimhost');
    await cat.repo.createRestore(j);
    const results = await Promise.allSettled(Array.from({ length: 10 }, (_, i) => cat.repo.claimRestore(j.id, `agent-${i}`)));
    const won = results.filter((r) => r.status === 'fulfilled');
    const lost = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
    expect(won).toHaveLength(1);
    expect(lost).toHaveLength(9);
    for (const l of lost) expect(l.reason).toBeInstanceOf(ConflictError);
    const winner = (won[0] as PromiseFulfilledResult<RestoreJob>).value.claimedBy!;
    expect((await cat.repo.requireRestore(j.id)).claimedBy).toBe(winner);
    expect((await cat.repo.listRestores('claimhost', 'PENDING')).items).toEqual([]);
    expect((await cat.repo.listRestores('claimhost', 'CLAIMED')).items.map((x) => x.id)).toEqual([j.id]);
    // Progress from a loser is refused; from the winner it moves the job to RUNNING.
    await expect(cat.repo.reportProgress(j.id, { bytesDone: 1, bytesTotal: 2 }, 'intruder')).rejects.toBeInstanceOf(ConflictError);
    expect((await cat.repo.reportProgress(j.id, { bytesDone: 1, bytesTotal: 2 }, winner)).status).toBe('RUNNING');
    await expect(cat.repo.completeRestore(j.id, true, undefined, 'intruder')).rejects.toBeInstanceOf(ConflictError);
    expect((await cat.repo.completeRestore(j.id, true, undefined, winner)).status).toBe('SUCCEEDED');
    await expect(cat.repo.cancelRestore(j.id)).rejects.toBeInstanceOf(ConflictError);
    await expect(cat.repo.claimRestore(randomUUID(), 'a')).rejects.toBeInstanceOf(NotFoundError);
  });
});
