/**
 * The agent's `metrics` config section: an optional TCP listener for
 * `GET /metrics` (the control socket always serves it, to the agent's user).
 *
 * The listener has no authentication, and the metrics name the host's disks
 * and when they were last backed up; so it binds loopback unless the config
 * says, with `allowRemote`, that a wider address is wanted (e.g. behind a
 * firewall that only lets the Prometheus server in).
 */
import { isIP } from 'node:net';
import { z } from 'zod';
import { ConfigError } from '../errors.js';
import { listenSchema, parseListen } from './nbd-config.js';

export const metricsConfigSchema = z
  .strictObject({
    /** TCP listener, e.g. "127.0.0.1:9464"; none unless set. */
    listen: listenSchema.optional(),
    /** Allow a non-loopback `listen` address (the metrics are served without authentication). */
    allowRemote: z.boolean().optional(),
  })
  .optional();

export interface AgentMetricsConfig {
  /** The TCP listener for GET /metrics; absent: the control socket only. */
  listen?: { host: string; port: number };
}

/**
 * Only literal loopback addresses and `localhost` count: a host name such as
 * "127.example.net" resolves to whatever DNS says.
 */
export function isLoopbackHost(host: string): boolean {
  if (host === 'localhost') return true;
  const v = isIP(host);
  if (v === 4) return host.startsWith('127.');
  if (v === 6) return host === '::1' || /^(0{0,4}:){7}0{0,3}1$/.test(host);
  return false;
}

/** Validates the listener; ConfigError names `metrics.listen`. Non-fatal remarks go to `warnings`. */
export function resolveMetricsConfig(raw: z.output<typeof metricsConfigSchema>, warnings: string[]): AgentMetricsConfig {
  if (raw?.listen === undefined) {
    if (raw?.allowRemote !== undefined) warnings.push('metrics.allowRemote has no effect without metrics.listen');
    return {};
  }
  const listen = parseListen(raw.listen);
  if (!isLoopbackHost(listen.host)) {
    if (raw.allowRemote !== true) {
      throw new ConfigError(
        `invalid agent config: metrics.listen: "${raw.listen}" is not a loopback address; the metrics are served without authentication ` +
          `and name the host's disks: use "127.0.0.1:${listen.port}" (and let Prometheus scrape through a local proxy or the control socket), ` +
          'or set metrics.allowRemote: true to serve them to every host that can reach the port',
      );
    }
    warnings.push(`metrics.listen "${raw.listen}" is not loopback: every host that can reach port ${listen.port} can read the metrics (no authentication)`);
  }
  return { listen };
}
