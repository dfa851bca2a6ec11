import { describe, expect, it } from 'vitest';
import { createServer, type IncomingHttpHeaders } from 'node:http';
import type { AddressInfo } from 'node:net';
import { CatalogClient, executeApiRegion, signRequest } from '../../../src/catalog/client.js';
import { CatalogError, ConflictError, ForbiddenError, NotFoundError, UsageError } from '../../../src/errors.js';

const CREDS = { accessKeyId: 'AKIDEXAMPLE', secretAccessKey: 'wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY' };

describe('catalogue client', () => {
  it('recognises API Gateway URLs and their region', () => {
    expect(executeApiRegion('https://abc123.execute-api.eu-west-1.amazonaws.com/prod')).toBe('eu-west-1');
    expect(executeApiRegion('http://127.0.0.1:8080')).toBeNull();
    expect(executeApiRegion('not a url')).toBeNull();
  });

  it('signs with SigV4 for execute-api: Authorization names the scope, signature depends on the body', async () => {
    const url = new URL('https://abc123.execute-api.eu-west-1.amazonaws.com/restores?x=1');
    const a = await signRequest({ method: 'POST', url, headers: { 'content-type': 'application/json' }, body: '{"a":1}' }, 'eu-west-1', CREDS);
    const b = await signRequest({ method: 'POST', url, headers: { 'content-type': 'application/json' }, body: '{"a":2}' }, 'eu-west-1', CREDS);
    expect(a.authorization).toMatch(/^AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE\/\d{8}\/eu-west-1\/execute-api\/aws4_request, SignedHeaders=[^,]*host[^,]*, Signature=[0-9a-f]{64}$/);
    expect(a['x-amz-date']).toMatch(/^\d{8}T\d{6}Z$/);
    expect(a.authorization).not.toBe(b.authorization);
  });

  it('sends signed requests when forced, plain ones to a local catalogue, and maps HTTP errors to the hierarchy', async () => {
    const seen: IncomingHttpHeaders[] = [];
    const statuses = [200, 400, 403, 404, 409, 500];
    let i = 0;
    const server = createServer((req, res) => {
      seen.push(req.headers);
      const status = statuses[i++ % statuses.length]!;
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end(JSON.stringify(status === 200 ? { items: [] } : { error: { code: 'X', message: `status ${status}` } }));
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    try {
      const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
      const signed = new CatalogClient({ url, sign: 'always', region: 'us-east-1', credentials: CREDS });
      expect(signed.signed).toBe(true);
      await expect(signed.listArchives({ host: 'h1' })).resolves.toEqual({ items: [] });
      expect(seen[0]!.authorization).toMatch(/^AWS4-HMAC-SHA256 /);
      await expect(signed.listArchives()).rejects.toBeInstanceOf(UsageError);
      await expect(signed.listArchives()).rejects.toBeInstanceOf(ForbiddenError);
      await expect(signed.listArchives()).rejects.toBeInstanceOf(NotFoundError);
      await expect(signed.listArchives()).rejects.toBeInstanceOf(ConflictError);
      await expect(signed.listArchives()).rejects.toBeInstanceOf(CatalogError);
      const plain = new CatalogClient({ url });
      expect(plain.signed).toBe(false);
      await plain.listArchives();
      expect(seen[seen.length - 1]!.authorization).toBeUndefined();
    } finally {
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    }
    await expect(new CatalogClient({ url: 'http://127.0.0.1:1' }).listArchives()).rejects.toBeInstanceOf(CatalogError);
    expect(() => new CatalogClient({ url: 'ftp://x' })).toThrow(UsageError);
  });
});
