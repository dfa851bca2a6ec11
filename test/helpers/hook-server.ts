/**
 * A real HTTP server that records every request (arrival time, headers,
 * body) and answers with what the test's handler says; for webhook tests.
 */
import { createServer, type IncomingHttpHeaders, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface HookRequest {
  at: number;
  method: string;
  path: string;
  headers: IncomingHttpHeaders;
  body: string;
}

export interface HookServer {
  url: string;
  requests: HookRequest[];
  /** Decides the answer to request number `n` (0-based); default 200. */
  handler: (req: HookRequest, res: ServerResponse, n: number) => void;
  close(): Promise<void>;
}

export async function startHookServer(): Promise<HookServer> {
  const hs: HookServer = {
    url: '',
    requests: [],
    handler: (_req, res) => void res.writeHead(200).end('ok'),
    close: async () => undefined,
  };
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const r: HookRequest = { at: performance.now(), method: req.method ?? '', path: req.url ?? '', headers: req.headers, body: Buffer.concat(chunks).toString('utf8') };
      const n = hs.requests.push(r) - 1;
      hs.handler(r, res, n);
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  hs.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/hook`;
  hs.close = () =>
    new Promise<void>((r) => {
      server.closeAllConnections();
      server.close(() => r());
    });
  return hs;
}

export async function until(what: string, cond: () => boolean | Promise<boolean>, timeoutMs = 20_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
