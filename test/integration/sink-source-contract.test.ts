/**
 * One ByteSink suite and one RangeSource suite, run over every
 * implementation: memory, local file, stdout, the agent's HTTP stream, and
 * S3 on both real peers (s3rver, fauxqs).
 */
import { randomUUID } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer, get, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { GetObjectCommand, PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { HttpStreamSink } from '../../src/agent/stream-sink.js';
import { BufferRangeSource, MemoryByteSink } from '../../src/format/memory.js';
import { FileByteSink, FileRangeSource } from '../../src/store/file.js';
import { S3ArchiveSink } from '../../src/store/s3-sink.js';
import { S3RangeSource } from '../../src/store/s3-source.js';
import { runByteSinkContract, type OpenedSink } from '../helpers/byte-sink-contract.js';
import { runRangeSourceContract } from '../helpers/range-source-contract.js';
import { startFauxqs, startS3rver, type TestS3Server } from '../helpers/s3-servers.js';

let dir = '';
const tempDir = {
  setup: async (): Promise<void> => {
    dir = await mkdtemp(join(tmpdir(), 'cowstream-contract-'));
  },
  teardown: async (): Promise<void> => rm(dir, { recursive: true, force: true }),
};

runByteSinkContract('memory', {
  retractsOnAbort: true,
  async open(): Promise<OpenedSink> {
    const sink = new MemoryByteSink();
    return { sink, visible: async () => (sink.closed ? sink.toBuffer() : null) };
  },
});

runByteSinkContract('file', {
  retractsOnAbort: true,
  ...tempDir,
  async open(): Promise<OpenedSink> {
    const path = join(dir, `${randomUUID()}.cwa`);
    const sink = await FileByteSink.create(path);
    return { sink, visible: async () => readFile(path).catch(() => null) };
  },
});

runByteSinkContract('stdout (-)', {
  retractsOnAbort: false,
  async open(): Promise<OpenedSink> {
    const stream = new PassThrough({ highWaterMark: 64 * 1024 });
    const got: Buffer[] = [];
    stream.on('data', (c: Buffer) => got.push(c));
    const sink = await FileByteSink.create('-', { stdout: stream });
    return { sink, visible: async () => Buffer.concat(got) };
  },
});

/** The agent's `-` target: a real HTTP server whose response is the sink, read by a real client. */
function httpStreamHarness(): Parameters<typeof runByteSinkContract>[1] {
  let server: Server;
  let port = 0;
  const waiting = new Map<string, (res: ServerResponse) => void>();
  return {
    retractsOnAbort: true,
    async setup(): Promise<void> {
      server = createServer((req, res) => waiting.get(req.url ?? '')?.(res));
      await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
      port = (server.address() as AddressInfo).port;
    },
    async teardown(): Promise<void> {
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    },
    async open(): Promise<OpenedSink> {
      const sink = new HttpStreamSink(5_000);
      const path = `/${randomUUID()}`;
      waiting.set(path, (res) => sink.attach(res));
      // A complete body is visible only when the response ended normally.
      const body = new Promise<Buffer | null>((resolve) => {
        get({ host: '127.0.0.1', port, path }, (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => resolve(res.complete ? Buffer.concat(chunks) : null));
          res.on('error', () => resolve(null));
          res.on('aborted', () => resolve(null));
        }).on('error', () => resolve(null));
      });
      return { sink, visible: () => body };
    },
  };
}
runByteSinkContract('agent HTTP stream', httpStreamHarness());

function s3Harnesses(name: string, start: () => Promise<TestS3Server>): void {
  let server: TestS3Server;
  let client: S3Client;
  const setup = async (): Promise<void> => {
    server = await start();
    client = server.client();
  };
  const teardown = async (): Promise<void> => server?.close();
  const getObject = async (key: string): Promise<Buffer | null> => {
    try {
      const res = await client.send(new GetObjectCommand({ Bucket: server.bucket, Key: key }));
      return Buffer.from(await res.Body!.transformToByteArray());
    } catch {
      return null;
    }
  };
  runByteSinkContract(`S3 multipart (${name})`, {
    retractsOnAbort: true,
    setup,
    teardown,
    async open(): Promise<OpenedSink> {
      const key = `contract/${randomUUID()}.cwa`;
      const sink = new S3ArchiveSink({ client, bucket: server.bucket, key, partSize: 5 * 1024 * 1024, queueSize: 2 });
      return { sink, visible: () => getObject(key) };
    },
  });
  runRangeSourceContract(`S3 ranged GETs (${name})`, {
    setup,
    teardown,
    async open(data: Buffer) {
      const key = `contract/${randomUUID()}.bin`;
      await client.send(new PutObjectCommand({ Bucket: server.bucket, Key: key, Body: data }));
      return S3RangeSource.open(client, server.bucket, key);
    },
  });
}
s3Harnesses('s3rver', () => startS3rver());
s3Harnesses('fauxqs', () => startFauxqs());

runRangeSourceContract('memory', { open: async (data) => new BufferRangeSource(data) });

runRangeSourceContract('file', {
  ...tempDir,
  async open(data: Buffer) {
    const path = join(dir, 'source.bin');
    await writeFile(path, data);
    return FileRangeSource.open(path);
  },
});
