import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { mkdir, unlink } from 'node:fs/promises';
import { dirname } from 'node:path';
import { ConflictError, CowstreamError, NotFoundError } from '../errors.js';
import { listenPrivateSocket } from '../nbd/unix-socket.js';
import { MethodNotAllowedError, readJsonBody, requestUrl, sendError, sendJson, sendText } from './http-util.js';
import { parseBackupRequest, type BackupRequest, type BackupStatus, type DiskStatus } from './backup-request.js';
import type { Logger } from './log.js';
import { parseExportRequest, type ArchiveExports } from './archive-exports.js';

/** What the control API drives; implemented by the agent's BackupManager. */
export interface ControlBackend {
  startBackup(req: BackupRequest): Promise<BackupStatus>;
  current(): BackupStatus | null;
  cancel(): Promise<BackupStatus>;
  disks(): Promise<DiskStatus[]>;
  /** Attaches the HTTP response as the consumer of a `-` (stream) target. */
  attachStream(res: ServerResponse): void;
  info(): Record<string, unknown>;
}

type Handler = (req: IncomingMessage, res: ServerResponse) => Promise<void>;
/** A handler of a route with path parameters (`/exports/{id}`). */
type ParamHandler = (req: IncomingMessage, res: ServerResponse, params: string[]) => Promise<void>;

/** The export routes (POST/GET /exports, GET/DELETE /exports/{id}), when the agent serves archives. */
function exportRoutes(exports: ArchiveExports): Array<[RegExp, Record<string, ParamHandler>]> {
  return [
    [
      /^\/exports$/,
      {
        GET: async (_q, s) => sendJson(s, 200, { exports: exports.list() }),
        POST: async (q, s) => sendJson(s, 201, await exports.add(parseExportRequest(await readJsonBody(q)))),
      },
    ],
    [
      /^\/exports\/([^/]+)$/,
      {
        GET: async (_q, s, [id]) => sendJson(s, 200, exports.get(id!)),
        DELETE: async (_q, s, [id]) => sendJson(s, 200, await exports.remove(id!)),
      },
    ],
  ];
}

/** Routes the agent adds beside the backup API (schedules, metrics). */
export interface ControlExtras {
  schedules?: () => Promise<unknown[]>;
  /** GET /metrics: the Prometheus exposition text (src/agent/metrics.ts). */
  metrics?: () => Promise<{ contentType: string; body: string }>;
  /** POST/GET /exports, GET/DELETE /exports/{id}: archives served over NBD (archive-exports.ts). */
  exports?: ArchiveExports;
}

/** GET /metrics: Prometheus text format (also served by the optional TCP listener, metrics-server.ts). */
export function metricsHandler(render: NonNullable<ControlExtras['metrics']>): Handler {
  return async (_q, s) => {
    const m = await render();
    sendText(s, 200, m.contentType, m.body);
  };
}

/**
 * HTTP+JSON control API on a Unix socket (usable with `curl --unix-socket`).
 * The socket is mode 0600 from the instant it exists (bound under umask
 * 0177, never chmod-ed after the fact): whoever can talk to it can read every
 * exported disk, so only the agent's user may ever connect.
 */
export class ControlServer {
  private constructor(
    private readonly server: Server,
    readonly socketPath: string,
  ) {}

  static async start(socketPath: string, backend: ControlBackend, log: Logger, extra: ControlExtras = {}): Promise<ControlServer> {
    await mkdir(dirname(socketPath), { recursive: true, mode: 0o700 });
    const routes: Record<string, Record<string, Handler>> = {
      '/': { GET: async (_q, s) => sendJson(s, 200, backend.info()) },
      '/backups': {
        POST: async (q, s) => {
          const req = parseBackupRequest(await readJsonBody(q));
          const st = await backend.startBackup(req);
          sendJson(s, 202, { uuid: st.uuid, mode: st.mode, ...(st.modeReason ? { modeReason: st.modeReason } : {}), ...(st.qemuGraph ? { qemuGraph: st.qemuGraph } : {}), parentUuid: st.parentUuid, target: st.target, ...(st.key ? { key: st.key, bucket: st.bucket } : {}) });
        },
      },
      '/backups/current': {
        GET: async (_q, s) => {
          const cur = backend.current();
          if (!cur) throw new NotFoundError('no backup has run since the agent started');
          sendJson(s, 200, cur);
        },
      },
      '/backups/current/cancel': {
        POST: async (q, s) => {
          await readJsonBody(q);
          sendJson(s, 200, await backend.cancel());
        },
      },
      '/backups/current/stream': {
        GET: async (_q, s) => backend.attachStream(s),
      },
      '/disks': { GET: async (_q, s) => sendJson(s, 200, { disks: await backend.disks() }) },
      '/schedules': { GET: async (_q, s) => sendJson(s, 200, { schedules: (await extra.schedules?.()) ?? [] }) },
      ...(extra.metrics ? { '/metrics': { GET: metricsHandler(extra.metrics) } } : {}),
    };

    const patterns = extra.exports ? exportRoutes(extra.exports) : [];
    const server = createServer((req, res) => {
      let path = '?';
      const method = req.method ?? 'GET';
      const run = async (): Promise<void> => {
        path = requestUrl(req).pathname;
        const key = path.replace(/\/+$/, '') || '/';
        let route: Record<string, ParamHandler> | undefined = routes[key];
        let params: string[] = [];
        for (const [re, r] of route ? [] : patterns) {
          const m = re.exec(key);
          if (m) [route, params] = [r, m.slice(1)];
          if (m) break;
        }
        if (!route) throw new NotFoundError(`unknown route ${path}`);
        const h = route[method];
        if (!h) throw new MethodNotAllowedError(method, path, Object.keys(route));
        await h(req, res, params);
      };
      run().catch((err: unknown) => {
        if (!(err instanceof CowstreamError) || err instanceof ConflictError) log.debug('control request failed', { method, path, error: String(err) });
        if (!res.headersSent) sendError(res, err);
        else res.destroy(err as Error);
      });
    });
    await listenPrivateSocket(server, socketPath);
    return new ControlServer(server, socketPath);
  }

  async close(): Promise<void> {
    await new Promise<void>((r) => {
      this.server.close(() => r());
      this.server.closeAllConnections();
    });
    await unlink(this.socketPath).catch(() => undefined);
  }
}
