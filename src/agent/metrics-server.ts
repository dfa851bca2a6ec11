/**
 * The optional TCP listener for Prometheus (`metrics.listen`): GET /metrics
 * and nothing else. The control API never listens on TCP; this server has no
 * route that reads or changes anything but the metrics.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { ConfigError, NotFoundError } from '../errors.js';
import { metricsHandler, type ControlExtras } from './control-server.js';
import { MethodNotAllowedError, requestUrl, sendError } from './http-util.js';
import type { Logger } from './log.js';

/**
 * A scraper needs one or two connections; bound what anyone who can reach
 * the port can hold open, and how long a slow request may take.
 */
const MAX_CONNECTIONS = 16;
const REQUEST_TIMEOUT_MS = 10_000;

export interface MetricsListener {
  readonly address: { host: string; port: number };
  close(): Promise<void>;
}

export async function startMetricsListener(
  listen: { host: string; port: number },
  render: NonNullable<ControlExtras['metrics']>,
  log: Logger,
): Promise<MetricsListener> {
  const handler = metricsHandler(render);
  const server: Server = createServer((req, res) => {
    let path = '?';
    const run = async (): Promise<void> => {
      path = requestUrl(req).pathname;
      if (path !== '/metrics') throw new NotFoundError(`unknown route ${path} (only GET /metrics is served here)`);
      if (req.method !== 'GET') throw new MethodNotAllowedError(req.method ?? '?', path, ['GET']);
      await handler(req, res);
    };
    run().catch((err: unknown) => {
      log.debug('metrics request failed', { method: req.method, path, error: String(err) });
      if (!res.headersSent) sendError(res, err);
      else res.destroy(err as Error);
    });
  });
  server.maxConnections = MAX_CONNECTIONS;
  server.requestTimeout = REQUEST_TIMEOUT_MS;
  server.headersTimeout = REQUEST_TIMEOUT_MS;
  // requestTimeout and headersTimeout start with a request's first byte: without an
  // idle timeout, MAX_CONNECTIONS connections that never send one shut the scraper out for good.
  server.timeout = REQUEST_TIMEOUT_MS;
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(listen.port, listen.host, () => {
        server.off('error', reject);
        resolve();
      });
    });
  } catch (err) {
    throw new ConfigError(`metrics.listen: cannot listen on ${listen.host}:${listen.port}: ${(err as Error).message}`, { cause: err });
  }
  const a = server.address() as AddressInfo;
  return {
    address: { host: a.address, port: a.port },
    close: () =>
      new Promise<void>((r) => {
        server.close(() => r());
        server.closeAllConnections();
      }),
  };
}
