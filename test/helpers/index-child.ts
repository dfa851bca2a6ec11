/**
 * Child process for memory-limit tests: runs the embedded catalogue (embedded
 * S3 + dynalite + the Indexer the agent and the Lambda run), uploads one
 * archive file under `archives/<host>/<uuid>.cwa`, waits until it is indexed
 * and prints the catalogue record as JSON.
 *
 *   node --max-old-space-size=N --import tsx test/helpers/index-child.ts FILE STATE_DIR HOST UUID
 */
import { createReadStream, statSync } from 'node:fs';
import { join } from 'node:path';
import { PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { startEmbeddedCatalog } from '../../src/catalog/embedded.js';
import { objectIdForKey } from '../../src/catalog/indexer.js';
import { startEmbeddedS3 } from '../../src/store/embedded-s3.js';

const [file, stateDir, host, uuid] = process.argv.slice(2) as [string, string, string, string];
const s3 = await startEmbeddedS3({ dir: join(stateDir, 's3') });
const catalog = await startEmbeddedCatalog({ stateDir, s3, logger: 'quiet', scanOnStart: false });
const key = `archives/${host}/${uuid}.cwa`;
try {
  // WHEN_REQUIRED: a streamed body with a trailing checksum is aws-chunked, which s3rver stores verbatim.
  const client = new S3Client({ endpoint: s3.endpoint, region: 'us-east-1', forcePathStyle: true, credentials: s3.credentials, requestChecksumCalculation: 'WHEN_REQUIRED' });
  await client.send(
    new PutObjectCommand({ Bucket: s3.bucket, Key: key, Body: createReadStream(file), ContentLength: statSync(file).size }),
  );
  client.destroy();
  // An archive whose header cannot be checked is recorded under an id derived from its key, not the uuid it claims.
  const find = async (): Promise<unknown> => (await catalog.repo.getArchive(uuid)) ?? (await catalog.repo.getArchive(objectIdForKey(s3.bucket, key)));
  for (let i = 0; i < 600 && (await find()) === null; i++) {
    await catalog.idle();
    await new Promise((r) => setTimeout(r, 100));
  }
  process.stdout.write(JSON.stringify(await find()) + '\n');
} finally {
  await catalog.close();
  await s3.close();
}
