/**
 * How `--state` (and the local agent's state directory) completes the CLI's
 * store and catalogue flags from endpoints.json, and when it must not: flags
 * given by hand win, a file others could have written is refused, and the
 * local agent's endpoints are used only when they are loopback.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { chmod, mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { catalogUrlWithState, storeFlagsWithState } from '../../../src/cli/state-defaults.js';
import { endpointsPath, readEndpointsFile, writeEndpointsFile } from '../../../src/store/embedded-endpoints.js';

let dir: string;
let env: NodeJS.ProcessEnv;
const LOCAL = { s3: { endpoint: 'http://127.0.0.1:4567', bucket: 'cowstream', prefix: 'p' }, catalog: 'http://127.0.0.1:4568' };

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cowstream-state-'));
  // The "local agent" of these tests: its socket lives in `dir`.
  env = { COWSTREAM_AGENT_SOCKET: join(dir, 'agent.sock') };
});
afterEach(async () => rm(dir, { recursive: true, force: true }));

describe('endpoints.json', () => {
  it('is written 0600 and read back', async () => {
    await writeEndpointsFile(dir, LOCAL);
    expect((await stat(endpointsPath(dir))).mode & 0o777).toBe(0o600);
    expect(await readEndpointsFile(dir)).toEqual(LOCAL);
  });

  it('absent: undefined; readable by others or malformed: a clear error', async () => {
    expect(await readEndpointsFile(dir)).toBeUndefined();
    await writeEndpointsFile(dir, LOCAL);
    await chmod(endpointsPath(dir), 0o644);
    await expect(readEndpointsFile(dir)).rejects.toThrow(/group or others can access it/);
    await writeFile(endpointsPath(dir), '{"s3":{"endpoint":"file:///etc"},"catalog":null}', { mode: 0o600 });
    await chmod(endpointsPath(dir), 0o600);
    await expect(readEndpointsFile(dir)).rejects.toThrow(/does not hold agent endpoints/);
  });
});

describe('--state fills in what the command line does not give', () => {
  it('explicit --state: endpoint, bucket, prefix and catalogue URL', async () => {
    await writeEndpointsFile(dir, LOCAL);
    expect(await storeFlagsWithState({ state: dir }, {})).toEqual({ state: dir, endpoint: LOCAL.s3.endpoint, bucket: 'cowstream', prefix: 'p' });
    expect(await catalogUrlWithState({ state: dir }, {})).toEqual({ url: LOCAL.catalog, state: dir });
  });

  it('the local agent\'s directory by default, for loopback endpoints', async () => {
    await writeEndpointsFile(dir, LOCAL);
    expect(await storeFlagsWithState({}, env)).toMatchObject({ state: dir, endpoint: LOCAL.s3.endpoint, bucket: 'cowstream' });
    expect(await catalogUrlWithState({}, env)).toEqual({ url: LOCAL.catalog, state: dir });
  });

  it('flags and environment win; the keys follow only the same embedded endpoint', async () => {
    await writeEndpointsFile(dir, LOCAL);
    expect(await storeFlagsWithState({ bucket: 'mine' }, env)).toEqual({ bucket: 'mine' });
    expect(await storeFlagsWithState({}, { ...env, COWSTREAM_S3_BUCKET: 'mine' })).toEqual({});
    expect(await storeFlagsWithState({ endpoint: LOCAL.s3.endpoint, bucket: 'cowstream' }, env)).toMatchObject({ state: dir });
    expect(await storeFlagsWithState({ prefix: 'other' }, env)).toMatchObject({ prefix: 'other' });
    expect(await catalogUrlWithState({ catalog: 'https://x.example' }, env)).toEqual({ url: 'https://x.example', state: undefined });
    expect(await catalogUrlWithState({}, { ...env, COWSTREAM_CATALOG_URL: 'https://y.example' })).toEqual({ url: 'https://y.example', state: undefined });
  });

  it('never sends the local keys or token to a non-loopback endpoint named in the local file', async () => {
    await writeEndpointsFile(dir, { s3: { endpoint: 'http://198.51.100.7:9000', bucket: 'cowstream', prefix: '' }, catalog: 'http://198.51.100.7:9001' });
    expect(await storeFlagsWithState({}, env)).toEqual({});
    expect(await catalogUrlWithState({}, env)).toEqual({ url: undefined, state: undefined });
  });

  it('a local file others may write is ignored by default and refused when named', async () => {
    await writeEndpointsFile(dir, LOCAL);
    await chmod(endpointsPath(dir), 0o666);
    expect(await storeFlagsWithState({}, env)).toEqual({});
    expect(await catalogUrlWithState({}, env)).toEqual({ url: undefined, state: undefined });
    await expect(storeFlagsWithState({ state: dir }, {})).rejects.toThrow(/group or others/);
  });

  it('no file: nothing changes', async () => {
    expect(await storeFlagsWithState({ state: dir }, {})).toEqual({ state: dir });
    expect(await storeFlagsWithState({}, env)).toEqual({});
  });
});
