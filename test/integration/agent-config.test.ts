import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { AgentConfigError, loadAgentConfig, parseAgentConfig } from '../../src/agent/config.js';
import { ConfigError } from '../../src/errors.js';
import { parseBackupRequest, BackupRequestError } from '../../src/agent/backup-request.js';
import { makeTempDir, runCli } from '../helpers/agent-process.js';

let tmp: { dir: string; cleanup(): Promise<void> };
let img: string;

beforeAll(async () => {
  tmp = await makeTempDir();
  img = join(tmp.dir, 'vda.raw');
  await writeFile(img, Buffer.alloc(1024 * 1024));
});
afterAll(async () => tmp.cleanup());

function expectField(input: unknown, field: string, msg?: RegExp): void {
  let err: unknown;
  try {
    parseAgentConfig(input, tmp.dir);
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(AgentConfigError);
  expect(err).toBeInstanceOf(ConfigError);
  expect((err as AgentConfigError).field).toBe(field);
  expect((err as Error).message).toContain(field);
  if (msg) expect((err as Error).message).toMatch(msg);
}

describe('agent config', () => {
  const base = (): Record<string, unknown> => ({ hostId: 'h1', stateDir: 'state', disks: [{ name: 'vda', path: 'vda.raw' }] });

  it('applies defaults and resolves relative paths against the config dir', () => {
    const c = parseAgentConfig(base(), tmp.dir);
    // No TCP unless configured: a private Unix socket in the state directory.
    expect(c.nbd).toEqual({ socket: join(tmp.dir, 'state', 'nbd.sock'), socketMode: 0o600 });
    expect(c.stateDir).toBe(join(tmp.dir, 'state'));
    expect(c.control.socket).toBe(join(tmp.dir, 'state', 'agent.sock'));
    expect(c.disks[0]).toEqual({ name: 'vda', path: img, readOnly: false });
    expect(c.store).toBeUndefined();
    expect(c.warnings).toEqual([]);
  });

  it('nbd: TCP, socket mode and group, TLS credentials and limits are resolved', async () => {
    const psk = join(tmp.dir, 'keys.psk');
    await writeFile(psk, `alice:${'ab'.repeat(32)}\n`, { mode: 0o600 });
    const c = parseAgentConfig(
      { ...base(), nbd: { listen: '[::1]:0', socket: 'run/nbd.sock', socketMode: '0660', socketGroup: 65534, tlsPsk: 'keys.psk', handshakeTimeoutMs: 5000, idleTimeoutMs: 60000, maxConnections: 8, maxConnectionsPerPeer: 2 } },
      tmp.dir,
    );
    expect(c.nbd).toMatchObject({ tcp: { host: '::1', port: 0 }, socket: join(tmp.dir, 'run', 'nbd.sock'), socketMode: 0o660, socketGid: 65534, handshakeTimeoutMs: 5000, idleTimeoutMs: 60000, maxConnections: 8, maxConnectionsPerPeer: 2 });
    expect(c.nbd.tls?.mode).toBe('require');
    expect(c.nbd.tls?.psk?.get('alice')).toEqual(Buffer.alloc(32, 0xab));
    expect(parseAgentConfig({ ...base(), nbd: { listen: '127.0.0.1:0', socket: false } }, tmp.dir).nbd.socket).toBeUndefined();
  });

  it('catalog.retention: the embedded catalogue\'s policy is parsed, a bad one named', () => {
    const retention = { keepLast: 2, hosts: { h1: { keepDaily: 7 } } };
    expect(parseAgentConfig({ ...base(), catalog: { embedded: true, retention } }, tmp.dir).catalog).toEqual({ embedded: true, retention });
    expectField({ ...base(), catalog: { embedded: true, retention: { keepLast: -1 } } }, 'catalog.retention.keepLast');
    expectField({ ...base(), catalog: { embedded: true, retention: { keepLots: 1 } } }, 'catalog.retention.keepLots', /unknown field/);
  });

  it('names the bad field', () => {
    expectField({ ...base(), hostId: 'bad host' }, 'hostId');
    expectField({ ...base(), disks: [] }, 'disks', /at least one disk/);
    expectField({ ...base(), disks: [{ name: 'a/b', path: 'vda.raw' }] }, 'disks[0].name', /export name/);
    expectField({ ...base(), disks: [{ name: 'vda', path: 'vda.raw' }, { name: 'vda', path: 'vda.raw' }] }, 'disks[1].name', /duplicate/);
    expectField({ ...base(), disks: [{ name: 'vda', path: 'missing.raw' }] }, 'disks[0].path', /cannot open/);
    expectField({ ...base(), disks: [{ name: 'vda', path: '.' }] }, 'disks[0].path', /not a regular file/);
    expectField({ ...base(), nbd: { listen: 'localhost' } }, 'nbd.listen', /host:port/);
    expectField({ ...base(), nbd: { listen: '127.0.0.1:99999' } }, 'nbd.listen');
    expectField({ ...base(), nbd: { socketMode: '0666' } }, 'nbd.socketMode', /other users/);
    expectField({ ...base(), nbd: { tls: 'require' } }, 'nbd', /tlsPsk/);
    expectField({ ...base(), nbd: { socket: false } }, 'nbd', /nbd\.listen/);
    expectField({ ...base(), nbd: { tlsCert: 'vda.raw' } }, 'nbd', /tlsKey/);
    expectField({ ...base(), nbd: { tls: 'off', tlsPsk: 'vda.raw' } }, 'nbd', /credentials/);
    expectField({ ...base(), nbd: { socketGroup: 'no-such-group-xyz' } }, 'nbd', /no group/);
    expectField({ ...base(), store: { bucket: 'b' } }, 'store.bucket');
    expectField({ ...base(), catalog: { url: 'not a url' } }, 'catalog.url');
    expectField({ ...base(), bogus: 1 }, 'bogus', /unknown field/);
    expectField({ ...base(), disks: [{ name: 'vda', path: 'vda.raw', size: 3 }] }, 'disks[0].size', /unknown field/);
    expectField({ stateDir: 's', disks: [{ name: 'vda', path: 'vda.raw' }] }, 'hostId');
  });

  it('notifications: defaults, resolved paths, warnings, and the bad field named', async () => {
    const hook = join(tmp.dir, 'hook.sh');
    await writeFile(hook, '#!/bin/sh\n', { mode: 0o700 });
    const c = parseAgentConfig(
      { ...base(), notifications: { staleAfter: '2d', webhooks: [{ url: 'http://alerts.example:8080/x', bearerTokenFile: 'token' }], commands: [{ argv: ['./hook.sh', '--flag'] }] } },
      tmp.dir,
    );
    expect(c.notifications).toEqual({
      webhooks: [{ url: 'http://alerts.example:8080/x', events: ['backup.failed', 'restore.failed', 'retention.failed', 'disk.stale'], headers: {}, bearerTokenFile: join(tmp.dir, 'token'), timeoutMs: 10_000, retries: 5 }],
      commands: [{ argv: [hook, '--flag'], events: ['backup.failed', 'restore.failed', 'retention.failed', 'disk.stale'], timeoutMs: 30_000 }],
      staleAfterMs: 2 * 86_400_000,
      queueSize: 100,
    });
    expect(c.warnings.join('\n')).toMatch(/notifications\.webhooks\[0\]\.url: plain http to alerts\.example:8080/);
    const onSuccess = parseAgentConfig({ ...base(), notifications: { onSuccess: true, webhooks: [{ url: 'http://127.0.0.1:1/x' }] } }, tmp.dir);
    expect(onSuccess.notifications!.webhooks[0]!.events).toEqual(['backup.failed', 'backup.succeeded', 'restore.failed', 'restore.succeeded', 'retention.failed', 'retention.succeeded']);
    expect(onSuccess.warnings).toEqual([]); // loopback http stays on the machine
    const n = (notifications: unknown): Record<string, unknown> => ({ ...base(), notifications });
    expectField(n({ webhooks: [{ url: 'ftp://x/y' }] }), 'notifications.webhooks[0].url', /http:\/\/ or https:\/\//);
    expectField(n({ webhooks: [{ url: 'https://u:p@x/y' }] }), 'notifications.webhooks[0].url', /user or password/);
    expectField(n({ webhooks: [{ url: 'https://x/y', headers: { 'X-A': 'a\r\nX-Injected: 1' } }] }), 'notifications.webhooks[0].headers.X-A', /control characters/);
    expectField(n({ webhooks: [{ url: 'https://x/y', headers: { 'Content-Length': '1' } }] }), 'notifications.webhooks[0].headers.Content-Length', /set by the agent/);
    expectField(n({ webhooks: [{ url: 'https://x/y', headers: { Authorization: 'Bearer a' }, bearerTokenFile: 't' }] }), 'notifications.webhooks[0].headers.Authorization', /one or the other/);
    expectField(n({ webhooks: [{ url: 'https://x/y', events: ['backup.succeeded'] }] }), 'notifications.webhooks[0].events[0]', /onSuccess/);
    expectField(n({ webhooks: [{ url: 'https://x/y', events: ['disk.stale'] }] }), 'notifications.webhooks[0].events[0]', /staleAfter/);
    expectField(n({ webhooks: [{ url: 'https://x/y', events: ['backup.exploded'] }] }), 'notifications.webhooks[0].events[0]');
    expectField(n({ webhooks: [{ url: 'https://x/y', retries: 99 }] }), 'notifications.webhooks[0].retries');
    expectField(n({ staleAfter: 'soon' }), 'notifications.staleAfter', /positive duration/);
    expectField(n({ staleAfter: '10ms' }), 'notifications.staleAfter', /at least 1s/);
    expectField(n({ commands: [{ argv: [] }] }), 'notifications.commands[0].argv', /program/);
    expectField(n({ commands: [{ argv: ['sh'] }] }), 'notifications.commands[0].argv[0]', /must be a path/);
    expectField(n({ commands: [{ argv: ['./missing.sh'] }] }), 'notifications.commands[0].argv[0]', /not an executable file/);
    expectField(n({ commands: [{ argv: ['./hook.sh'], shell: true }] }), 'notifications.commands[0].shell', /unknown field/);
  });

  it('validates the qemu section and names the bad field', () => {
    const c = parseAgentConfig({ ...base(), qemu: [{ qmpSocket: 'q.sock', drives: ['d0=vm0', { node: 'd1' }] }] }, tmp.dir);
    expect(c.qemu[0]!.drives).toEqual([{ node: 'd0', name: 'vm0' }, { node: 'd1', name: 'd1' }]);
    expectField({ ...base(), qemu: [{ socket: '/x' }] }, 'qemu[0].qmpSocket');
    expectField({ ...base(), qemu: [{ qmpSocket: 'q', drives: ['d0=vda'] }] }, 'qemu[0].drives[0]', /duplicate/);
  });

  it('rejects unreadable and non-JSON files', async () => {
    const p = join(tmp.dir, 'bad.json');
    await writeFile(p, '{ "hostId": ');
    expect(() => loadAgentConfig(p)).toThrow(/not valid JSON/);
    expect(() => loadAgentConfig(join(tmp.dir, 'nope.json'))).toThrow(ConfigError);
  });

  it('refuses two disk entries on one file: same path, symlink, hard link (naming both entries)', async () => {
    const { link, symlink } = await import('node:fs/promises');
    await symlink(img, join(tmp.dir, 'vda-sym.raw'));
    await link(img, join(tmp.dir, 'vda-hard.raw'));
    for (const other of [img, 'vda.raw', 'vda-sym.raw', 'vda-hard.raw', `${tmp.dir}/./vda.raw`]) {
      expectField({ ...base(), disks: [{ name: 'vda', path: 'vda.raw' }, { name: 'vdb', path: other }] }, 'disks[1].path', /disks\[1\] "vdb" .* and disks\[0\] "vda" .* are the same file/);
    }
    // A different file is fine.
    await writeFile(join(tmp.dir, 'vdb.raw'), Buffer.alloc(65536));
    expect(parseAgentConfig({ ...base(), disks: [{ name: 'vda', path: 'vda.raw' }, { name: 'vdb', path: 'vdb.raw' }] }, tmp.dir).disks).toHaveLength(2);
    const dir = join(tmp.dir, 'cli-dup');
    await mkdir(dir);
    const p = join(dir, 'agent.json');
    await writeFile(p, JSON.stringify({ ...base(), stateDir: join(dir, 'state'), disks: [{ name: 'a', path: img }, { name: 'b', path: join(tmp.dir, 'vda-hard.raw') }] }));
    const r = await runCli(['agent', '--config', p]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/disks\[1\] "b" .* and disks\[0\] "a" .* are the same file/);
  });

  it('the CLI exits 2 naming the field for a webhook token file others can read, with --check-config too', async () => {
    const dir = join(tmp.dir, 'cli-token');
    await mkdir(dir);
    await writeFile(join(dir, 'token'), 'secret\n', { mode: 0o644 });
    const p = join(dir, 'agent.json');
    await writeFile(p, JSON.stringify({ ...base(), stateDir: join(dir, 'state'), disks: [{ name: 'vda', path: img }], notifications: { webhooks: [{ url: 'https://x.example/h', bearerTokenFile: 'token' }] } }));
    for (const extra of [[], ['--check-config']]) {
      const r = await runCli(['agent', '--config', p, ...extra]);
      expect(r.code, extra.join(' ')).toBe(2);
      expect(r.stderr).toMatch(/notifications\.webhooks\[0\]\.bearerTokenFile: .*chmod 600/);
    }
  });

  it('the CLI exits 2 with the field named for a malformed config', async () => {
    const dir = join(tmp.dir, 'cli');
    await mkdir(dir);
    const p = join(dir, 'agent.json');
    await writeFile(p, JSON.stringify({ ...base(), disks: [{ name: 'vda', path: img }], nbd: { listen: 'nope' } }));
    const r = await runCli(['agent', '--config', p]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/nbd\.listen/);
  });
});

describe('backup request body', () => {
  const bad = (body: unknown, field: string): void => {
    let err: unknown;
    try {
      parseBackupRequest(body);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(BackupRequestError);
    expect((err as BackupRequestError).field).toBe(field);
    expect((err as Error).message).toContain(field);
  };

  it('validates and names fields', () => {
    expect(parseBackupRequest({ mode: 'full' }).target).toEqual({ kind: 's3' });
    expect(parseBackupRequest({ mode: 'incremental', target: 'file:/x/y.cwa', speed: '50M' })).toMatchObject({ target: { kind: 'file', path: '/x/y.cwa' }, speed: 50 * 1024 * 1024 });
    expect(parseBackupRequest({ mode: 'full', target: '-' }).target).toEqual({ kind: 'stream' });
    bad({ mode: 'fast' }, 'mode');
    bad({}, 'mode');
    bad({ mode: 'full', target: 'ftp://x' }, 'target');
    bad({ mode: 'full', target: 'file:relative.cwa' }, 'target');
    bad({ mode: 'full', disks: [] }, 'disks');
    bad({ mode: 'full', disks: ['a', 'a'] }, 'disks');
    bad({ mode: 'full', fleecing: { dir: '/tmp' } }, 'fleecing.maxBytes');
    bad({ mode: 'full', fleecing: { dir: '/tmp', maxBytes: 'lots' } }, 'fleecing.maxBytes');
    bad({ mode: 'full', speed: -1 }, 'speed');
    bad({ mode: 'full', cbwTimeoutMs: 1.5 }, 'cbwTimeoutMs');
    bad({ mode: 'full', onCbwError: 'ignore' }, 'onCbwError');
    bad({ mode: 'full', extra: true }, 'extra');
    bad(undefined, '(body)');
    bad([1, 2], '(root)');
  });
});
