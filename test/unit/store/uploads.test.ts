/**
 * ListMultipartUploads / AbortMultipartUpload as real AWS S3 answers them.
 * Neither local server implements listing (s3rver: 501; fauxqs: answers with
 * ListObjects), so — per "mock only real AWS" — a tiny HTTP server returns
 * AWS's documented XML (paginated) and records the aborts.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createS3Client } from '../../../src/store/s3-client.js';
import { StoreCapabilityError } from '../../../src/store/errors.js';
import { abortIncompleteUploads, listIncompleteUploads } from '../../../src/store/uploads.js';

const uploads = [
  { key: 'p/archives/h/a.cwa', id: 'id-a', initiated: '2026-11-20T00:00:00.000Z' },
  { key: 'p/archives/h/b.cwa', id: 'id-b', initiated: '2026-11-21T23:00:00.000Z' },
  { key: 'p/archives/h2/c.cwa', id: 'id-c', initiated: '2026-11-19T00:00:00.000Z' },
];

function page(marker: string | null, prefix: string): string {
  const start = marker ? uploads.findIndex((u) => u.key === marker) + 1 : 0;
  const items = uploads.filter((u) => u.key.startsWith(prefix)).slice(start, start + 2);
  const truncated = start + 2 < uploads.length;
  const last = items[items.length - 1];
  return `<?xml version="1.0" encoding="UTF-8"?>
<ListMultipartUploadsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Bucket>bkt</Bucket><KeyMarker>${marker ?? ''}</KeyMarker><UploadIdMarker></UploadIdMarker>
  <NextKeyMarker>${last?.key ?? ''}</NextKeyMarker><NextUploadIdMarker>${last?.id ?? ''}</NextUploadIdMarker>
  <Prefix>${prefix}</Prefix><MaxUploads>2</MaxUploads><IsTruncated>${truncated}</IsTruncated>
  ${items
    .map(
      (u) => `<Upload><Key>${u.key}</Key><UploadId>${u.id}</UploadId><Initiator><ID>x</ID></Initiator><Owner><ID>x</ID></Owner>
      <StorageClass>STANDARD</StorageClass><Initiated>${u.initiated}</Initiated></Upload>`,
    )
    .join('')}
</ListMultipartUploadsResult>`;
}

describe('multipart upload listing and cleanup (AWS-shaped answers)', () => {
  let server: http.Server;
  let endpoint: string;
  const aborted: string[] = [];
  let mode: 'aws' | 'listobjects' | '501' = 'aws';

  beforeAll(async () => {
    server = http.createServer((req, res) => {
      const url = new URL(req.url!, 'http://x');
      if (req.method === 'GET' && url.searchParams.has('uploads')) {
        if (mode === '501') {
          res.writeHead(501, { 'content-type': 'application/xml' });
          res.end('<Error><Code>NotImplemented</Code><Message>nope</Message></Error>');
          return;
        }
        res.writeHead(200, { 'content-type': 'application/xml' });
        if (mode === 'listobjects') {
          res.end('<?xml version="1.0"?><ListBucketResult><Name>bkt</Name><Prefix></Prefix><MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated></ListBucketResult>');
          return;
        }
        res.end(page(url.searchParams.get('key-marker'), url.searchParams.get('prefix') ?? ''));
        return;
      }
      if (req.method === 'DELETE' && url.searchParams.has('uploadId')) {
        aborted.push(`${decodeURIComponent(url.pathname)}#${url.searchParams.get('uploadId')}`);
        res.writeHead(204);
        res.end();
        return;
      }
      res.writeHead(400);
      res.end();
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    endpoint = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(async () => {
    await new Promise((r) => server.close(r));
  });

  const client = () => createS3Client({ bucket: 'bkt', prefix: 'p', endpoint, credentials: { accessKeyId: 'a', secretAccessKey: 'b' } });

  it('lists across pages with ages', async () => {
    mode = 'aws';
    const now = Date.parse('2026-11-22T00:00:00.000Z');
    const list = await listIncompleteUploads(client(), 'bkt', 'p/', now);
    expect(list.map((u) => [u.key, u.uploadId, u.ageSeconds])).toEqual([
      ['p/archives/h/a.cwa', 'id-a', 2 * 86400],
      ['p/archives/h/b.cwa', 'id-b', 3600],
      ['p/archives/h2/c.cwa', 'id-c', 3 * 86400],
    ]);
  });

  it('aborts only uploads older than the threshold', async () => {
    mode = 'aws';
    aborted.length = 0;
    const res = await abortIncompleteUploads(client(), 'bkt', 'p/', { olderThanSeconds: 86400, now: Date.parse('2026-11-22T00:00:00.000Z') });
    expect(res.aborted.map((u) => u.uploadId)).toEqual(['id-a', 'id-c']);
    expect(res.failed).toEqual([]);
    expect(aborted).toEqual(['/bkt/p/archives/h/a.cwa#id-a', '/bkt/p/archives/h2/c.cwa#id-c']);
  });

  it('refuses to mistake a non-answer for an empty list', async () => {
    mode = 'listobjects';
    await expect(listIncompleteUploads(client(), 'bkt', 'p/')).rejects.toThrow(StoreCapabilityError);
    mode = '501';
    await expect(listIncompleteUploads(client(), 'bkt', 'p/')).rejects.toThrow(/this S3 server cannot list multipart uploads \(ListMultipartUploads answered 501\)/);
  });
});
