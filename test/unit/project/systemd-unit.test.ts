/**
 * The shipped systemd unit: `systemd-analyze verify` finds nothing to say
 * (an unknown or misspelt directive is only a warning there, so any output
 * fails), the hardening directives are all present, and systemd's own
 * exposure score stays at "OK" or better.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';

const UNIT = resolve(import.meta.dirname, '../../../packaging/systemd/cowstream-agent.service');
const hasSystemd = spawnSync('systemd-analyze', ['--version']).status === 0;
const dir = mkdtempSync(join(tmpdir(), 'cowstream-unit-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** verify needs ExecStart's program to exist here: point it at this node, keep everything else. */
function localCopy(text: string): string {
  const path = join(dir, 'cowstream-agent.service');
  writeFileSync(path, text.replace('/usr/local/bin/cowstream', process.execPath));
  return path;
}

function verify(path: string): string {
  const r = spawnSync('systemd-analyze', ['verify', path], { encoding: 'utf8' });
  return `${r.stdout}${r.stderr}`.trim() + (r.status === 0 ? '' : `\nexit ${r.status}`);
}

describe.skipIf(!hasSystemd)('systemd unit', () => {
  const text = readFileSync(UNIT, 'utf8');

  it('verifies without a single warning', () => {
    expect(verify(localCopy(text))).toBe('');
    // The check can fail: a misspelt directive is reported.
    expect(verify(localCopy(text.replace('NoNewPrivileges=', 'NoNewPrivilegez=')))).toMatch(/Unknown key/);
  });

  it('has the hardening it documents', () => {
    for (const line of ['NoNewPrivileges=yes', 'PrivateTmp=yes', 'ProtectSystem=strict', 'StateDirectory=cowstream', 'StateDirectoryMode=0700', 'UMask=0077', 'RestartPreventExitStatus=2']) {
      expect(text.split('\n')).toContain(line);
    }
  });

  it('scores OK or better in systemd-analyze security', () => {
    const out = execFileSync('systemd-analyze', ['security', '--offline=yes', localCopy(text)], { encoding: 'utf8' });
    const score = Number(/Overall exposure level for \S+: ([\d.]+)/.exec(out)?.[1]);
    expect(score).toBeLessThanOrEqual(5.0);
  });
});
