/**
 * A fault-injecting HTTP proxy for S3 tests. It sits on 127.0.0.1 in front
 * of s3rver or fauxqs and forwards requests unchanged (the Host header too,
 * so SigV4 signatures made for the proxy's address stay valid), except where
 * a rule says otherwise:
 *   - answer with an HTTP status (500/503 with an S3 XML error body),
 *   - reset the connection before answering,
 *   - delay the request (slow endpoint),
 *   - cut a GET response body in the middle (connection dies mid-transfer).
 * Rules match an S3 operation and either specific occurrences (1-based) or
 * every occurrence (persistent failure). Every request's headers are recorded.
 */
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';

export type S3Op =
  | 'CreateMultipartUpload'
  | 'UploadPart'
  | 'CompleteMultipartUpload'
  | 'AbortMultipartUpload'
  | 'ListMultipartUploads'
  | 'PutObject'
  | 'DeleteObject'
  | 'GetObject'
  | 'HeadObject'
  | 'ListObjects'
  | 'Other';

export type FaultAction =
  | { status: number; code?: string }
  | { reset: true }
  | { delayMs: number }
  | { cutBodyAfter: number };

export interface FaultRule {
  op: S3Op | 'any';
  /** 1-based occurrence numbers of this op to hit; omit for every occurrence. */
  nth?: number[];
  action: FaultAction;
}

export function classify(req: IncomingMessage): S3Op {
  const url = new URL(req.url ?? '/', 'http://x');
  const q = url.searchParams;
  const path = url.pathname.replace(/^\/+/, '');
  const hasKey = path.includes('/') && !path.endsWith('/');
  switch (req.method) {
    case 'PUT':
      if (q.has('partNumber') && q.has('uploadId')) return 'UploadPart';
      return hasKey ? 'PutObject' : 'Other';
    case 'POST':
      if (q.has('uploads')) return 'CreateMultipartUpload';
      if (q.has('uploadId')) return 'CompleteMultipartUpload';
      return 'Other';
    case 'DELETE':
      if (q.has('uploadId')) return 'AbortMultipartUpload';
      return hasKey ? 'DeleteObject' : 'Other';
    case 'GET':
      if (q.has('uploads')) return 'ListMultipartUploads';
      return hasKey ? 'GetObject' : 'ListObjects';
    case 'HEAD':
      return hasKey ? 'HeadObject' : 'Other';
    default:
      return 'Other';
  }
}

/** One request as the proxy saw it (headers lower-cased by node:http). */
export interface RecordedRequest {
  op: S3Op;
  method: string;
  url: string;
  headers: Record<string, string | string[] | undefined>;
}

export class S3FaultProxy {
  readonly counts = new Map<S3Op, number>();
  /** Every request received, in order: tests assert on the headers a client really sent. */
  readonly requests: RecordedRequest[] = [];
  /** Faults actually injected, for assertions that the test really exercised them. */
  readonly injected: { op: S3Op; n: number; action: string }[] = [];
  private rules: FaultRule[] = [];
  private readonly sockets = new Set<Socket>();
  private constructor(
    private readonly server: http.Server,
    readonly endpoint: string,
  ) {}

  static async start(target: string): Promise<S3FaultProxy> {
    const t = new URL(target);
    let self!: S3FaultProxy;
    const server = http.createServer((req, res) => void self.handle(req, res, t));
    server.keepAliveTimeout = 1000;
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const port = (server.address() as AddressInfo).port;
    self = new S3FaultProxy(server, `http://127.0.0.1:${port}`);
    server.on('connection', (s) => {
      self.sockets.add(s);
      s.on('close', () => self.sockets.delete(s));
    });
    return self;
  }

  addRule(rule: FaultRule): void {
    this.rules.push(rule);
  }

  clearRules(): void {
    this.rules = [];
  }

  count(op: S3Op): number {
    return this.counts.get(op) ?? 0;
  }

  private pick(op: S3Op, n: number): FaultAction[] {
    return this.rules.filter((r) => (r.op === 'any' || r.op === op) && (r.nth === undefined || r.nth.includes(n))).map((r) => r.action);
  }

  private async handle(req: IncomingMessage, res: ServerResponse, target: URL): Promise<void> {
    const op = classify(req);
    this.requests.push({ op, method: req.method ?? '', url: req.url ?? '', headers: { ...req.headers } });
    const n = this.count(op) + 1;
    this.counts.set(op, n);
    let cutAfter: number | undefined;
    for (const action of this.pick(op, n)) {
      if ('delayMs' in action) {
        await new Promise((r) => setTimeout(r, action.delayMs));
      } else if ('reset' in action) {
        this.injected.push({ op, n, action: 'reset' });
        req.socket.destroy();
        return;
      } else if ('status' in action) {
        this.injected.push({ op, n, action: `status ${action.status}` });
        // Drain the request body first so the client sees a clean HTTP answer.
        req.resume();
        await new Promise((r) => req.on('end', r));
        const code = action.code ?? (action.status === 503 ? 'SlowDown' : 'InternalError');
        res.writeHead(action.status, { 'content-type': 'application/xml', connection: 'close' });
        res.end(`<?xml version="1.0" encoding="UTF-8"?><Error><Code>${code}</Code><Message>injected fault</Message></Error>`);
        return;
      } else if ('cutBodyAfter' in action) {
        cutAfter = action.cutBodyAfter;
      }
    }
    const upstream = http.request(
      { host: target.hostname, port: target.port, method: req.method, path: req.url, headers: req.headers },
      (up) => {
        res.writeHead(up.statusCode ?? 502, up.headers);
        if (cutAfter === undefined) {
          up.pipe(res);
          return;
        }
        this.injected.push({ op, n, action: `cut body after ${cutAfter}` });
        let sent = 0;
        const limit = cutAfter;
        up.on('data', (chunk: Buffer) => {
          if (sent >= limit) return;
          const part = chunk.subarray(0, limit - sent);
          sent += part.length;
          res.write(part);
          if (sent >= limit) {
            up.destroy();
            res.socket?.destroy();
          }
        });
        up.on('end', () => res.end());
      },
    );
    upstream.on('error', () => res.socket?.destroy());
    req.pipe(upstream);
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}
