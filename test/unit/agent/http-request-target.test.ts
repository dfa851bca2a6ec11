/**
 * A request target that Node's HTTP parser accepts but URL rejects
 * ("GET http://[ HTTP/1.1") must get a 400, not an exception thrown in the
 * request listener (uncaught: it would end the agent). Anyone who can reach
 * the metrics port can send one.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ControlServer, type ControlBackend } from '../../../src/agent/control-server.js';
import type { Logger } from '../../../src/agent/log.js';
import { startMetricsListener } from '../../../src/agent/metrics-server.js';

const quiet = { debug() {}, info() {}, warn() {}, error() {} } as unknown as Logger;
const render = async (): Promise<{ contentType: string; body: string }> => ({ contentType: 'text/plain; version=0.0.4', body: 'up 1\n' });

/** Sends raw bytes; resolves with what came back by the time the peer closed, or after 3 s. */
function raw(open: () => Socket, request: string): Promise<string> {
  return new Promise((resolve) => {
    const s = open();
    let got = '';
    const end = (): void => {
      clearTimeout(t);
      s.destroy();
      resolve(got);
    };
    const t = setTimeout(end, 3_000);
    s.on('connect', () => s.write(request));
    s.on('data', (d: Buffer) => {
      got += d.toString('latin1');
      if (/\r\n\r\n/.test(got) && /content-length: \d+/i.test(got)) {
        const len = Number(/content-length: (\d+)/i.exec(got)![1]);
        if (got.length - got.indexOf('\r\n\r\n') - 4 >= len) end();
      }
    });
    s.on('close', end);
    s.on('error', end);
  });
}

const BAD = 'GET http://[ HTTP/1.1\r\nHost: a\r\n\r\n';
const GOOD = 'GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n';

describe('a malformed request target', () => {
  it('gets 400 from the metrics TCP listener, which keeps serving', async () => {
    const l = await startMetricsListener({ host: '127.0.0.1', port: 0 }, render, quiet);
    try {
      const open = (): Socket => connect(l.address.port, '127.0.0.1');
      expect(await raw(open, BAD)).toMatch(/^HTTP\/1\.1 400 /);
      expect(await raw(open, GOOD)).toMatch(/^HTTP\/1\.1 200 [\s\S]*up 1/);
    } finally {
      await l.close();
    }
  });

  it('gets 400 from the control socket, which keeps serving', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'cowstream-ctl-'));
    const sock = join(dir, 'control.sock');
    const srv = await ControlServer.start(sock, {} as ControlBackend, quiet, { metrics: render });
    try {
      const open = (): Socket => connect(sock);
      expect(await raw(open, BAD)).toMatch(/^HTTP\/1\.1 400 /);
      expect(await raw(open, GOOD)).toMatch(/^HTTP\/1\.1 200 [\s\S]*up 1/);
    } finally {
      await srv.close();
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('(metrics listener) connections that never send a byte are closed, so they cannot hold every slot for good', async () => {
    const l = await startMetricsListener({ host: '127.0.0.1', port: 0 }, render, quiet);
    try {
      // Every slot (16) held by a silent connection; the server must drop them and serve a scrape.
      const idle = Array.from({ length: 16 }, () => connect(l.address.port, '127.0.0.1'));
      const closed = idle.map((s) => new Promise<void>((r) => s.on('close', () => r())));
      for (const s of idle) s.on('error', () => undefined);
      const t0 = Date.now();
      await Promise.race([Promise.all(closed), new Promise((r) => setTimeout(r, 20_000))]);
      expect(idle.every((s) => s.destroyed)).toBe(true);
      expect(Date.now() - t0).toBeLessThan(20_000);
      expect(await raw(() => connect(l.address.port, '127.0.0.1'), GOOD)).toMatch(/^HTTP\/1\.1 200 /);
      for (const s of idle) s.destroy();
    } finally {
      await l.close();
    }
  }, 30_000);
});
