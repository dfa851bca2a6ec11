import { request, type IncomingMessage } from 'node:http';
import {
  BackupRunningError,
  ConflictError,
  CowstreamError,
  ForbiddenError,
  NotFoundError,
  UsageError,
} from '../errors.js';
import type { BackupStatus, DiskStatus } from './backup-request.js';
import type { ScheduleReport } from './scheduled-backups.js';

/** The agent could not be reached on its control socket. */
export class AgentUnreachableError extends CowstreamError {
  override readonly code: string = 'AGENT_UNREACHABLE';
}

/** An error answer of the control API, mapped back onto the error hierarchy. */
function errorFromResponse(status: number, body: unknown): CowstreamError {
  const e = (body as { error?: { code?: string; message?: string } } | undefined)?.error;
  const msg = e?.message ?? `agent answered HTTP ${status}`;
  if (status === 400 || status === 405) return new UsageError(msg);
  if (status === 404) return new NotFoundError(msg);
  if (status === 409) return e?.code === 'BACKUP_RUNNING' ? new BackupRunningError(msg) : new ConflictError(msg);
  if (status === 403) return new ForbiddenError(msg);
  return new CowstreamError(msg);
}

export interface StartBackupResponse {
  uuid: string;
  mode: 'full' | 'incremental';
  modeReason?: string;
  qemuGraph?: { kind: 'filter' | 'job'; reason: string };
  parentUuid: string | null;
  target: string;
  key?: string;
  bucket?: string;
}

/** A small client of the agent's control API (used by the CLI and tests). */
export class AgentClient {
  constructor(readonly socketPath: string) {}

  async call<T>(method: string, path: string, body?: unknown): Promise<T> {
    const res = await this.raw(method, path, body);
    const chunks: Buffer[] = [];
    for await (const c of res) chunks.push(c as Buffer);
    const text = Buffer.concat(chunks).toString('utf8');
    let json: unknown;
    try {
      json = text ? JSON.parse(text) : undefined;
    } catch (err) {
      throw new CowstreamError(`agent answered ${res.statusCode} with non-JSON body`, { cause: err });
    }
    const status = res.statusCode ?? 500;
    if (status >= 400) throw errorFromResponse(status, json);
    return json as T;
  }

  /** Sends a request and returns the response stream (for `/backups/current/stream`). */
  raw(method: string, path: string, body?: unknown): Promise<IncomingMessage> {
    return new Promise((resolve, reject) => {
      const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
      const req = request(
        {
          socketPath: this.socketPath,
          method,
          path,
          headers: payload ? { 'content-type': 'application/json', 'content-length': payload.length } : {},
        },
        resolve,
      );
      req.on('error', (err: NodeJS.ErrnoException) => {
        if (err.code === 'ENOENT' || err.code === 'ECONNREFUSED' || err.code === 'EACCES') {
          reject(new AgentUnreachableError(`cannot reach the agent on ${this.socketPath} (${err.code}); is \`cowstream agent\` running? (--agent / COWSTREAM_AGENT_SOCKET)`, { cause: err }));
        } else reject(new AgentUnreachableError(`control request to ${this.socketPath} failed: ${err.message}`, { cause: err }));
      });
      req.end(payload);
    });
  }

  startBackup(body: Record<string, unknown>): Promise<StartBackupResponse> {
    return this.call('POST', '/backups', body);
  }
  status(): Promise<BackupStatus> {
    return this.call('GET', '/backups/current');
  }
  cancel(): Promise<BackupStatus> {
    return this.call('POST', '/backups/current/cancel');
  }
  async disks(): Promise<DiskStatus[]> {
    return (await this.call<{ disks: DiskStatus[] }>('GET', '/disks')).disks;
  }
  async schedules(): Promise<ScheduleReport[]> {
    return (await this.call<{ schedules: ScheduleReport[] }>('GET', '/schedules')).schedules;
  }

  /** Polls until the current backup leaves `active`; `onProgress` sees every sample. */
  async waitForBackup(uuid: string, onProgress?: (s: BackupStatus) => void, intervalMs = 200): Promise<BackupStatus> {
    for (;;) {
      const st = await this.status();
      if (st.uuid !== uuid) throw new ConflictError(`backup ${uuid} is no longer the current backup (now ${st.uuid})`);
      onProgress?.(st);
      if (st.status !== 'active') return st;
      await new Promise((r) => setTimeout(r, intervalMs));
    }
  }
}
