/**
 * One client cannot starve the others: a per-peer connection limit, an idle
 * timeout and a handshake timeout (TLS handshake included).
 */
import { once } from 'node:events';
import { connect as tlsConnect } from 'node:tls';
import { afterEach, describe, expect, it } from 'vitest';
import { MemoryDevice } from '../../src/device/memory-device.js';
import { NbdServer, type NbdServerOptions } from '../../src/nbd/server.js';
import { NBD_CMD_READ, NBD_OPT_STARTTLS, NBD_REP_ACK } from '../../src/nbd/protocol.js';
import { RawNbdClient } from '../helpers/nbd-raw.js';
import { CaptureLogger, waitFor } from '../helpers/nbd-tools.js';

const logger = new CaptureLogger();
let server: NbdServer | null = null;
const clients: RawNbdClient[] = [];

async function start(opts: Partial<NbdServerOptions> = {}): Promise<number> {
  server = new NbdServer({ exports: new Map([['d', { device: new MemoryDevice(Buffer.alloc(1 << 20, 3)) }]]), tcp: { host: '127.0.0.1', port: 0 }, logger, ...opts });
  return (await server.listen()).tcp!.port;
}

/** Connects and enters transmission; null if the server refused or closed the connection. */
async function handshaken(port: number, localAddress = '127.0.0.1'): Promise<RawNbdClient | null> {
  const c = await RawNbdClient.connect({ port, localAddress });
  clients.push(c);
  try {
    await c.handshake('d');
    return c;
  } catch {
    return null;
  }
}

async function readOk(c: RawNbdClient): Promise<boolean> {
  c.send(NBD_CMD_READ, 0, 4096);
  const r = await c.simpleReply(4096);
  return r.error === 0 && r.data.equals(Buffer.alloc(4096, 3));
}

afterEach(async () => {
  for (const c of clients.splice(0)) c.destroy();
  await server?.close();
  server = null;
});

describe('NBD connection limits', () => {
  it('one peer holding 64 idle handshaken connections does not lock another peer out', async () => {
    const port = await start(); // defaults: 64 connections, 16 per peer
    const hog = await Promise.all(Array.from({ length: 64 }, () => handshaken(port)));
    const held = hog.filter((c): c is RawNbdClient => c !== null);
    expect(held.length).toBe(16);
    // The hog's connections that did get in still work.
    expect(await readOk(held[0]!)).toBe(true);
    // Another peer (a different address) gets in and is served.
    const other = await handshaken(port, '127.0.0.2');
    expect(other).not.toBeNull();
    expect(await readOk(other!)).toBe(true);
    expect(logger.warnings.some((w) => /already has 16 connections/.test(w))).toBe(true);
    // Slots come back when the hog lets go.
    held[0]!.destroy();
    await held[0]!.closed;
    await new Promise((r) => setTimeout(r, 50));
    expect(await handshaken(port)).not.toBeNull();
  });

  it('an idle handshaken connection is closed after idleTimeoutMs; a busy one is not', async () => {
    const port = await start({ idleTimeoutMs: 300 });
    const idle = await handshaken(port);
    const busy = await handshaken(port);
    expect(idle && busy).toBeTruthy();
    const t0 = Date.now();
    while (Date.now() - t0 < 1200) {
      expect(await readOk(busy!)).toBe(true);
      await new Promise((r) => setTimeout(r, 100));
    }
    expect(await idle!.closedWithin(100)).toBe(true);
    expect(await busy!.closedWithin(0)).toBe(false);
    expect(await busy!.closedWithin(2000)).toBe(true);
  });

  it('a client that stalls in the handshake, or in the TLS handshake, is closed after handshakeTimeoutMs', async () => {
    const port = await start({ handshakeTimeoutMs: 300, tls: { mode: 'require', psk: new Map([['alice', Buffer.alloc(32, 1)]]) } });
    const silent = await RawNbdClient.connect({ port });
    clients.push(silent);
    expect(await silent.closedWithin(3000)).toBe(true);
    const midTls = await RawNbdClient.connect({ port });
    clients.push(midTls);
    await midTls.greeting();
    const r = await midTls.option(NBD_OPT_STARTTLS);
    expect(r.at(-1)!.replyType).toBe(NBD_REP_ACK);
    // ... and never sends a ClientHello.
    expect(await midTls.closedWithin(3000)).toBe(true);
    expect(await waitFor(() => server!.connectionCount === 0, 2000)).toBe(true);
  });

  it('a client that leaves in the middle of STARTTLS frees its slot at once, not at the handshake timeout', async () => {
    const port = await start({ handshakeTimeoutMs: 60_000, tls: { mode: 'require', psk: new Map([['alice', Buffer.alloc(32, 1)]]) } });
    const c = await RawNbdClient.connect({ port });
    await c.greeting();
    expect((await c.option(NBD_OPT_STARTTLS)).at(-1)!.replyType).toBe(NBD_REP_ACK);
    c.destroy();
    expect(await waitFor(() => server!.connectionCount === 0, 2000)).toBe(true);
  });

  it('once authenticated, connections count against the TLS identity, whatever address they come from', async () => {
    const key = Buffer.alloc(32, 9);
    const port = await start({ maxConnectionsPerPeer: 2, tls: { mode: 'require', psk: new Map([['alice', key], ['bob', key]]) } });
    const open = async (identity: string, localAddress: string): Promise<boolean> => {
      const c = await RawNbdClient.connect({ port, localAddress });
      clients.push(c);
      await c.greeting();
      expect((await c.option(NBD_OPT_STARTTLS)).at(-1)!.replyType).toBe(NBD_REP_ACK);
      const t = tlsConnect({ socket: c.socket, maxVersion: 'TLSv1.2', ciphers: 'PSK-AES128-GCM-SHA256', pskCallback: () => ({ identity, psk: key }), checkServerIdentity: () => undefined });
      t.on('error', () => undefined);
      await once(t, 'secureConnect');
      // Over its limit, the server closes right after the handshake.
      const closed = await Promise.race([once(t, 'close').then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), 1000))]);
      if (!closed) clients.push({ destroy: () => t.destroy() } as unknown as RawNbdClient);
      return !closed;
    };
    expect(await open('alice', '127.0.0.2')).toBe(true);
    expect(await open('alice', '127.0.0.3')).toBe(true);
    expect(await open('alice', '127.0.0.4')).toBe(false);
    expect(await open('bob', '127.0.0.4')).toBe(true);
    expect(logger.warnings.some((w) => /psk:alice: it already has 2 connections/.test(w))).toBe(true);
  });
});
