/**
 * Embedded mode against an unprivileged local user (uid 65534 through
 * setpriv): every catalogue route answers 401 without the token, the
 * embedded S3 refuses anonymous and wrongly signed requests, and the
 * credentials file cannot be read — even with the state directory open.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFile, spawnSync } from 'node:child_process';
import { promisify } from 'node:util';
import { chmodSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GetObjectCommand, ListObjectsV2Command, S3Client } from '@aws-sdk/client-s3';
import { ZstdPool } from '../../src/codec/zstd-pool.js';
import { startEmbeddedCatalog, type EmbeddedCatalog } from '../../src/catalog/embedded.js';
import { CatalogClient } from '../../src/catalog/client.js';
import { createS3Client } from '../../src/store/s3-client.js';
import { credentialsPath, loadOrCreateEmbeddedCredentials, type EmbeddedCredentials } from '../../src/store/embedded-credentials.js';
import { startEmbeddedS3, type EmbeddedS3 } from '../../src/store/embedded-s3.js';
import { buildChain, type ChainStep } from '../helpers/s3-chain-fixture.js';

const NOBODY = ['--reuid=65534', '--regid=65534', '--clear-groups'];
const canDropPrivileges = process.getuid?.() === 0 && spawnSync('setpriv', [...NOBODY, 'true']).status === 0;

let state: string;
let scripts: string;
let creds: EmbeddedCredentials;
let s3: EmbeddedS3;
let catalog: EmbeddedCatalog;
let archive: ChainStep;

/** Runs a Node script as uid/gid 65534 with no groups (asynchronously: the servers run in this process); returns its JSON output. */
async function runAsNobody(source: string, args: string[]): Promise<unknown> {
  const file = join(scripts, `probe-${Math.random().toString(36).slice(2)}.mjs`);
  writeFileSync(file, source, { mode: 0o644 });
  const { stdout } = await promisify(execFile)('setpriv', [...NOBODY, process.execPath, file, ...args], { encoding: 'utf8', timeout: 60_000 });
  return JSON.parse(stdout);
}

beforeAll(async () => {
  state = mkdtempSync(join(tmpdir(), 'cowstream-embauth-'));
  scripts = mkdtempSync(join(tmpdir(), 'cowstream-embauth-probe-'));
  chmodSync(scripts, 0o755);
  creds = await loadOrCreateEmbeddedCredentials(state);
  s3 = await startEmbeddedS3({ dir: join(state, 's3'), credentials: creds.s3 });
  catalog = await startEmbeddedCatalog({ stateDir: state, s3, token: creds.catalogToken, logger: 'quiet' });
  const client = createS3Client(s3.storeConfig(''));
  const pool = new ZstdPool({ workers: 1 });
  try {
    [archive] = await buildChain({ client, bucket: s3.bucket, prefix: '', hostId: 'victim', devices: [{ id: 0, name: 'vda', size: 1024 * 1024 }], incrementals: 0, compressor: pool });
  } finally {
    await pool.close();
    client.destroy();
  }
  await catalog.idle();
  // A careless admin opens the state directory: the file's own mode must still protect it.
  chmodSync(state, 0o755);
}, 60_000);

afterAll(async () => {
  await catalog?.close();
  await s3?.close();
  rmSync(state, { recursive: true, force: true });
  rmSync(scripts, { recursive: true, force: true });
});

const PROBE_CATALOG = `
const [base, id] = process.argv.slice(2);
const routes = [
  ['GET', '/archives'], ['GET', '/archives/' + id], ['GET', '/archives/' + id + '/chain'], ['DELETE', '/archives/' + id],
  ['POST', '/restores'], ['GET', '/restores/' + id], ['GET', '/hosts'], ['GET', '/hosts/victim/restores'],
  ['POST', '/restores/' + id + '/claim'], ['POST', '/restores/' + id + '/progress'], ['POST', '/restores/' + id + '/complete'],
  ['POST', '/restores/' + id + '/cancel'], ['GET', '/no-such-route'],
];
const out = [];
for (const [method, path] of routes) {
  for (const auth of [undefined, 'Bearer wrong-token-0123456789abcdef', 'Basic Zm9vOmJhcg==']) {
    const body = method === 'POST' ? JSON.stringify({ archiveId: id, hostId: 'victim', target: { path: '/tmp/x' }, agentId: 'evil', ok: true, bytesDone: 1, bytesTotal: 1 }) : undefined;
    const res = await fetch(base + path, { method, body, headers: { 'content-type': 'application/json', ...(auth ? { authorization: auth } : {}) } });
    out.push({ method, path, auth: auth ?? null, status: res.status });
  }
}
console.log(JSON.stringify(out));
`;

const PROBE_S3 = `
import { readFileSync } from 'node:fs';
const [endpoint, bucket, key, credFile] = process.argv.slice(2);
const out = {};
for (const [name, url] of [['get', endpoint + '/' + bucket + '/' + key], ['list', endpoint + '/' + bucket + '?list-type=2'], ['buckets', endpoint + '/']]) {
  const res = await fetch(url);
  out[name] = { status: res.status, body: (await res.text()).slice(0, 300) };
}
const del = await fetch(endpoint + '/' + bucket + '/' + key, { method: 'DELETE' });
out.delete = { status: del.status };
try { readFileSync(credFile); out.credentials = 'READ'; } catch (e) { out.credentials = e.code; }
console.log(JSON.stringify(out));
`;

describe.skipIf(!canDropPrivileges)('embedded mode and an unprivileged local user', () => {
  it('credentials.json is 0600, owned by the service user, and unreadable for uid 65534', async () => {
    const st = statSync(credentialsPath(state));
    expect(st.mode & 0o777).toBe(0o600);
    expect(st.uid).toBe(process.getuid!());
    const r = await runAsNobody(PROBE_S3, [s3.endpoint, s3.bucket, archive.key, credentialsPath(state)]) as { credentials: string };
    expect(r.credentials).toBe('EACCES');
  });

  it('every catalogue route answers 401 without the token; the victim record survives', async () => {
    const results = await runAsNobody(PROBE_CATALOG, [catalog.url, archive.uuid]) as { method: string; path: string; auth: string | null; status: number }[];
    expect(results.length).toBe(13 * 3);
    for (const r of results) expect(r, `${r.method} ${r.path} with ${r.auth}`).toMatchObject({ status: 401 });
    const owner = new CatalogClient({ url: catalog.url, token: creds.catalogToken });
    const rec = await owner.getArchive(archive.uuid);
    expect(rec.status).toBe('INDEXED');
    expect((await owner.listRestores('victim')).items).toEqual([]);
  });

  it('the embedded S3 refuses anonymous GET, LIST and DELETE from uid 65534', async () => {
    const r = await runAsNobody(PROBE_S3, [s3.endpoint, s3.bucket, archive.key, credentialsPath(state)]) as Record<string, { status: number; body?: string }>;
    expect(r.get!.status).toBe(403);
    expect(r.get!.body).toMatch(/AccessDenied/);
    expect(r.list!.status).toBe(403);
    expect(r.buckets!.status).toBe(403);
    expect(r.delete!.status).toBe(403);
    // The object is still there for its owner.
    const owner = createS3Client(s3.storeConfig(''));
    try {
      const got = await owner.send(new GetObjectCommand({ Bucket: s3.bucket, Key: archive.key }));
      expect((await got.Body!.transformToByteArray()).length).toBeGreaterThan(0);
    } finally {
      owner.destroy();
    }
  });
});

describe('embedded S3 signature checks', () => {
  const client = (accessKeyId: string, secretAccessKey: string): S3Client =>
    createS3Client({ bucket: s3.bucket, prefix: '', endpoint: s3.endpoint, region: 'us-east-1', credentials: { accessKeyId, secretAccessKey } }, { maxAttempts: 1 });

  it('refuses a wrong secret, an unknown key id and the old fixed S3RVER keys; accepts the generated keys', async () => {
    for (const [id, secret, code] of [
      [creds.s3.accessKeyId, 'not-the-secret-0123456789abcdefghijkl', 'SignatureDoesNotMatch'],
      ['AKIAIOSFODNN7EXAMPLE', creds.s3.secretAccessKey, 'InvalidAccessKeyId'],
      ['S3RVER', 'S3RVER', 'InvalidAccessKeyId'],
    ] as const) {
      const c = client(id, secret);
      try {
        await expect(c.send(new ListObjectsV2Command({ Bucket: s3.bucket }))).rejects.toMatchObject({ name: code, $metadata: { httpStatusCode: 403 } });
        await expect(c.send(new GetObjectCommand({ Bucket: s3.bucket, Key: archive.key }))).rejects.toMatchObject({ $metadata: { httpStatusCode: 403 } });
      } finally {
        c.destroy();
      }
    }
    const good = client(creds.s3.accessKeyId, creds.s3.secretAccessKey);
    try {
      const list = await good.send(new ListObjectsV2Command({ Bucket: s3.bucket }));
      expect(list.Contents?.map((o) => o.Key)).toContain(archive.key);
    } finally {
      good.destroy();
    }
  });

  it('refuses a signed request whose path or query was changed after signing', async () => {
    const c = client(creds.s3.accessKeyId, creds.s3.secretAccessKey);
    // Rewrites the request after the signer ran: the signature no longer covers what is sent.
    c.middlewareStack.add(
      (next) => async (args) => {
        const req = args.request as { path: string; query: Record<string, string> };
        req.query = { ...req.query, 'max-keys': '7' };
        return next(args);
      },
      { step: 'deserialize', priority: 'low', name: 'tamperAfterSigning' },
    );
    try {
      await expect(c.send(new ListObjectsV2Command({ Bucket: s3.bucket }))).rejects.toMatchObject({ name: 'SignatureDoesNotMatch' });
    } finally {
      c.destroy();
    }
  });
});
