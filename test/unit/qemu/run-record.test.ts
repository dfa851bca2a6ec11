/**
 * Ownership records of pull-mode runs: names a later run recognises, and a
 * liveness check that a dead, reused or forged owner cannot fool into
 * keeping (or removing) the wrong objects.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fleecePath, ownerAlive, parseFleecePath, processStart, readRecord, recordPath, runTag, tagOf, writeRecord } from '../../../src/qemu/run-record.js';

const dir = mkdtempSync(join(tmpdir(), 'cowstream-runrec-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const UUID = '01938a7e-5b2c-7d11-8f00-0123456789ab';

describe('run record', () => {
  it('names: tag = last 8 hex digits of the uuid; only our patterns parse', () => {
    expect(runTag(UUID)).toBe('456789ab');
    expect(tagOf('cowstream-456789ab-fl0')).toBe('456789ab');
    expect(tagOf('cowstream-456789ab-0')).toBe('456789ab');
    expect(tagOf('d0')).toBeNull();
    expect(tagOf('cowstream-export')).toBeNull();
    expect(parseFleecePath(fleecePath('/var/tmp', UUID, 3))).toEqual({ uuid: UUID, dir: '/var/tmp' });
    expect(parseFleecePath('/var/tmp/disk.qcow2')).toBeNull();
    expect(parseFleecePath(`/var/tmp/cowstream-${UUID}-0.fleece.bak`)).toBeNull();
    expect(parseFleecePath(`json:{"file": "/x/cowstream-${UUID}-0.fleece"}`)).toBeNull();
  });

  it('is written 0600 and exclusively; read back; this process is alive', async () => {
    await writeRecord(dir, { uuid: UUID, pid: process.pid, pidStart: processStart(process.pid), nbdSocket: null });
    expect(statSync(recordPath(dir, UUID)).mode & 0o777).toBe(0o600);
    await expect(writeRecord(dir, { uuid: UUID, pid: 1, pidStart: null, nbdSocket: null })).rejects.toThrow(/EEXIST/);
    const r = await readRecord(dir, UUID);
    expect(r).toMatchObject({ uuid: UUID, pid: process.pid, nbdSocket: null });
    expect(ownerAlive(r!)).toBe(true);
  });

  it('a dead pid, or a live pid with another start time (reused), is not the owner', async () => {
    const child = spawn('sleep', ['30']);
    try {
      const start = processStart(child.pid!);
      expect(start).toMatch(/^\d+$/);
      expect(ownerAlive({ uuid: UUID, pid: child.pid!, pidStart: start, nbdSocket: null })).toBe(true);
      expect(ownerAlive({ uuid: UUID, pid: child.pid!, pidStart: String(Number(start) + 1), nbdSocket: null })).toBe(false);
    } finally {
      child.kill('SIGKILL');
      await new Promise((r) => child.once('exit', r));
    }
    expect(ownerAlive({ uuid: UUID, pid: child.pid!, pidStart: null, nbdSocket: null })).toBe(false);
  });

  it('a symlink or a malformed file in place of the record is ignored', async () => {
    const other = '01938a7e-5b2c-7d11-8f00-00000000cafe';
    writeFileSync(join(dir, 'elsewhere.json'), JSON.stringify({ pid: process.pid, pidStart: null, nbdSocket: '/run/x' }));
    symlinkSync(join(dir, 'elsewhere.json'), recordPath(dir, other));
    expect(await readRecord(dir, other)).toBeNull();
    const third = '01938a7e-5b2c-7d11-8f00-00000000beef';
    writeFileSync(recordPath(dir, third), '{"pid": "1; rm -rf /"}', { mode: 0o600 });
    expect(await readRecord(dir, third)).toBeNull();
    expect(await readRecord(dir, '01938a7e-5b2c-7d11-8f00-000000000000')).toBeNull();
  });
});
