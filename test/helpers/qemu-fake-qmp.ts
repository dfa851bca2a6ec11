/**
 * A scripted QMP server on a Unix socket, for what a real QEMU cannot be made
 * to do: an old version, split/garbled lines, late replies, events.
 */
import { createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';

export interface FakeQmpOptions {
  version?: { major: number; minor: number; micro: number };
  /** Reply for a command (return value), or an {error} object, or undefined = never reply. */
  handle?: (cmd: string, args: Record<string, unknown>, sock: Socket, id: unknown) => unknown;
  /** Write the greeting byte by byte (exercises partial-chunk parsing). */
  dribble?: boolean;
  /** Raw greeting override. */
  greeting?: string;
}

export interface FakeQmp {
  path: string;
  server: Server;
  sockets: Set<Socket>;
  close(): Promise<void>;
}

export async function startFakeQmp(dir: string, o: FakeQmpOptions = {}): Promise<FakeQmp> {
  const path = join(dir, `fake-qmp-${Math.random().toString(36).slice(2)}.sock`);
  const sockets = new Set<Socket>();
  const server = createServer((sock) => {
    sockets.add(sock);
    sock.on('close', () => sockets.delete(sock));
    sock.on('error', () => undefined);
    const v = o.version ?? { major: 7, minor: 2, micro: 0 };
    const greeting = o.greeting ?? JSON.stringify({ QMP: { version: { qemu: v, package: 'fake' }, capabilities: ['oob'] } }) + '\r\n';
    if (o.dribble) {
      let i = 0;
      const tick = (): void => {
        if (i >= greeting.length || sock.destroyed) return;
        sock.write(greeting.slice(i, i + 3));
        i += 3;
        setImmediate(tick);
      };
      tick();
    } else sock.write(greeting);
    let buf = '';
    sock.on('data', (c) => {
      buf += c.toString();
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        const msg = JSON.parse(line) as { execute: string; arguments?: Record<string, unknown>; id?: unknown };
        if (msg.execute === 'qmp_capabilities') {
          sock.write(JSON.stringify({ return: {}, id: msg.id }) + '\r\n');
          continue;
        }
        const r = o.handle?.(msg.execute, msg.arguments ?? {}, sock, msg.id);
        if (r === undefined) continue;
        const reply = typeof r === 'object' && r !== null && 'error' in r ? { ...(r as object), id: msg.id } : { return: r, id: msg.id };
        sock.write(JSON.stringify(reply) + '\r\n');
      }
    });
  });
  await new Promise<void>((r) => server.listen(path, r));
  return {
    path,
    server,
    sockets,
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

/** A query-qmp-schema answer shaped like QEMU 6.2's: copy-before-write but no snapshot-access. */
export function oldSchema(): unknown[] {
  return [
    { name: 'blockdev-add', 'meta-type': 'command' },
    { name: 'blockdev-reopen', 'meta-type': 'command' },
    { name: 'block-export-add', 'meta-type': 'command' },
    { name: 'x-debug-query-block-graph', 'meta-type': 'command' },
    { name: '123', 'meta-type': 'enum', values: ['file', 'qcow2', 'raw', 'copy-before-write'] },
    { name: '124', 'meta-type': 'object', members: [{ name: 'target' }, { name: 'bitmap' }] },
  ];
}
