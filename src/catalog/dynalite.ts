/**
 * Runs dynalite (a DynamoDB implementation on LevelDB) in-process for the
 * embedded catalogue and tests. With `path` the data persists under that
 * directory; without, it lives in memory.
 */
import { createRequire } from 'node:module';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdir } from 'node:fs/promises';
import { CatalogError } from '../errors.js';

interface DynaliteOptions {
  path?: string;
  createTableMs?: number;
  deleteTableMs?: number;
  updateTableMs?: number;
}

const require = createRequire(import.meta.url);
const dynalite = require('dynalite') as (opts: DynaliteOptions) => Server;

export interface RunningDynalite {
  endpoint: string;
  port: number;
  close(): Promise<void>;
}

export async function startDynalite(opts: { path?: string; port?: number; host?: string } = {}): Promise<RunningDynalite> {
  if (opts.path) await mkdir(opts.path, { recursive: true });
  // Table state transitions are instant: nothing here needs to simulate AWS latency.
  const server = dynalite({ path: opts.path, createTableMs: 0, deleteTableMs: 0, updateTableMs: 0 });
  const host = opts.host ?? '127.0.0.1';
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err) => reject(new CatalogError(`dynalite cannot listen on ${host}:${opts.port ?? 0}`, { cause: err })));
    server.listen(opts.port ?? 0, host, () => resolve());
  });
  const port = (server.address() as AddressInfo).port;
  let closed = false;
  return {
    endpoint: `http://${host}:${port}`,
    port,
    async close(): Promise<void> {
      if (closed) return;
      closed = true;
      // The SDK keeps sockets alive; without this, close waits for them to idle out.
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
