/**
 * NBD over TLS (NBD_OPT_STARTTLS) against real GnuTLS clients: qemu-io and
 * qemu-img (--object tls-creds-psk / tls-creds-x509), nbdinfo and nbdcopy
 * (nbds:// URIs with tls-psk-file / tls-certificates). With tls "require",
 * plaintext clients are refused (NBD_REP_ERR_TLS_REQD, or a disconnect for
 * NBD_OPT_EXPORT_NAME); wrong keys and untrusted certificates are refused.
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MemoryDevice } from '../../src/device/memory-device.js';
import { NbdServer } from '../../src/nbd/server.js';
import { loadPskFile } from '../../src/nbd/tls.js';
import {
  NBD_OPT_EXPORT_NAME, NBD_OPT_GO, NBD_OPT_LIST, NBD_OPT_STARTTLS, NBD_REP_ERR_TLS_REQD, NBD_REP_ERR_UNSUP,
  encodeInfoRequest, encodeOption,
} from '../../src/nbd/protocol.js';
import type { NbdExport } from '../../src/nbd/types.js';
import { RawNbdClient } from '../helpers/nbd-raw.js';
import { CaptureLogger, runTool } from '../helpers/nbd-tools.js';
import { makePskFile, makeTestCerts, type TestCerts } from '../helpers/tls-certs.js';

const SIZE = 4 * 1024 * 1024;

function exportsOf(content: Buffer): Map<string, NbdExport> {
  return new Map([['d', { device: new MemoryDevice(Buffer.from(content)) }]]);
}

function qemuOk(r: { code: number; stdout: string; stderr: string }): boolean {
  return r.code === 0 && !/failed|error|Pattern verification|mismatch/i.test(r.stdout + r.stderr);
}

describe('NBD over TLS with real clients', () => {
  let dir: string;
  let content: Buffer;
  let certs: TestCerts;
  let psk: { dir: string; file: string };
  let wrongPsk: { dir: string; file: string };
  let bobPsk: { dir: string; file: string };
  let allowPort: number;
  const servers: NbdServer[] = [];
  let pskPort: number;
  let x509Port: number;
  let plainPort: number;
  const logger = new CaptureLogger();

  const start = async (opts: Partial<ConstructorParameters<typeof NbdServer>[0]>): Promise<number> => {
    const s = new NbdServer({ exports: exportsOf(content), tcp: { host: '127.0.0.1', port: 0 }, logger, ...opts });
    servers.push(s);
    return (await s.listen()).tcp!.port;
  };

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'cowstream-nbd-tls-'));
    content = randomBytes(SIZE);
    certs = await makeTestCerts(join(dir, 'pki'));
    psk = await makePskFile(join(dir, 'psk'), 'alice');
    wrongPsk = await makePskFile(join(dir, 'psk-wrong'), 'alice');
    bobPsk = await makePskFile(join(dir, 'psk-bob'), 'bob');
    allowPort = await start({ tls: { mode: 'allow', psk: loadPskFile(psk.file) } });
    pskPort = await start({ tls: { mode: 'require', psk: loadPskFile(psk.file) } });
    x509Port = await start({
      tls: { mode: 'require', cert: await readFile(certs.serverCert), key: await readFile(certs.serverKey), ca: await readFile(certs.caCert) },
    });
    plainPort = await start({});
  });

  afterAll(async () => {
    for (const s of servers) await s.close();
    await rm(dir, { recursive: true, force: true });
  });

  const pskObj = (d: string): string => `tls-creds-psk,id=tls0,endpoint=client,dir=${d},username=alice`;
  const x509Obj = (d: string): string => `tls-creds-x509,id=tls0,endpoint=client,dir=${d}`;
  const imageOpts = (port: number): string => `driver=nbd,host=127.0.0.1,port=${port},export=d,tls-creds=tls0`;

  it('qemu-io and qemu-img work over TLS-PSK', async () => {
    const w = await runTool('qemu-io', ['--object', pskObj(psk.dir), '--image-opts', imageOpts(pskPort), '-c', 'write -P 0x5a 64k 64k', '-c', 'read -P 0x5a 64k 64k']);
    expect(qemuOk(w), w.stdout + w.stderr).toBe(true);
    const out = join(dir, 'psk-copy.raw');
    const c = await runTool('qemu-img', ['convert', '--object', pskObj(psk.dir), '--image-opts', imageOpts(pskPort), '-O', 'raw', out]);
    expect(c.code, c.stderr).toBe(0);
    const copy = await readFile(out);
    expect(copy.subarray(0, 65536).equals(content.subarray(0, 65536))).toBe(true);
    expect(copy.subarray(65536, 131072).equals(Buffer.alloc(65536, 0x5a))).toBe(true);
  });

  it('nbdinfo and nbdcopy work over TLS-PSK', async () => {
    const uri = `nbds://alice@127.0.0.1:${pskPort}/d?tls-psk-file=${psk.file}`;
    const info = await runTool('nbdinfo', ['--json', uri]);
    expect(info.code, info.stderr).toBe(0);
    expect(JSON.parse(info.stdout).TLS).toBe(true);
    const out = join(dir, 'nbdcopy-psk.raw');
    const c = await runTool('nbdcopy', [uri, out]);
    expect(c.code, c.stderr).toBe(0);
    expect((await readFile(out)).length).toBe(SIZE);
  });

  it('a wrong PSK, an unknown identity and plaintext are refused', async () => {
    const wrong = await runTool('qemu-io', ['--object', pskObj(wrongPsk.dir), '--image-opts', imageOpts(pskPort), '-c', 'read 0 4k']);
    expect(qemuOk(wrong)).toBe(false);
    const bob = await runTool('nbdinfo', [`nbds://bob@127.0.0.1:${pskPort}/d?tls-psk-file=${bobPsk.file}`]);
    expect(bob.code).not.toBe(0);
    expect(bob.stderr).toMatch(/TLS|tls|handshake/);
    const plain = await runTool('nbdinfo', [`nbd://127.0.0.1:${pskPort}/d`]);
    expect(plain.code).not.toBe(0);
    const plainQemu = await runTool('qemu-io', ['-f', 'raw', `nbd://127.0.0.1:${pskPort}/d`, '-c', 'read 0 4k']);
    expect(qemuOk(plainQemu)).toBe(false);
  });

  it('"require": every option before STARTTLS gets NBD_REP_ERR_TLS_REQD; EXPORT_NAME ends the session', async () => {
    const c = await RawNbdClient.connect({ port: pskPort });
    await c.greeting();
    for (const [opt, data] of [[NBD_OPT_LIST, undefined], [NBD_OPT_GO, encodeInfoRequest('d', [])]] as const) {
      const r = await c.option(opt, data);
      expect(r.at(-1)!.replyType).toBe(NBD_REP_ERR_TLS_REQD);
    }
    c.write(encodeOption(NBD_OPT_EXPORT_NAME, Buffer.from('d')));
    expect(await c.closedWithin(5000)).toBe(true);
  });

  it('"allow": plaintext and TLS clients both get in', async () => {
    const plain = await runTool('nbdinfo', ['--json', `nbd://127.0.0.1:${allowPort}/d`]);
    expect(plain.code, plain.stderr).toBe(0);
    expect(JSON.parse(plain.stdout).TLS).toBe(false);
    const secure = await runTool('nbdinfo', ['--json', `nbds://alice@127.0.0.1:${allowPort}/d?tls-psk-file=${psk.file}`]);
    expect(secure.code, secure.stderr).toBe(0);
    expect(JSON.parse(secure.stdout).TLS).toBe(true);
  });

  it('without TLS configured, STARTTLS is answered NBD_REP_ERR_UNSUP (NOTLS mode)', async () => {
    const c = await RawNbdClient.connect({ port: plainPort });
    await c.greeting();
    const r = await c.option(NBD_OPT_STARTTLS);
    expect(r.at(-1)!.replyType).toBe(NBD_REP_ERR_UNSUP);
    c.destroy();
  });

  it('X.509: qemu-io, qemu-img, nbdinfo and nbdcopy with a client certificate from the trusted CA', async () => {
    const w = await runTool('qemu-io', ['--object', x509Obj(certs.clientDir), '--image-opts', imageOpts(x509Port), '-c', 'write -P 0x77 0 4k', '-c', 'read -P 0x77 0 4k']);
    expect(qemuOk(w), w.stdout + w.stderr).toBe(true);
    const i = await runTool('qemu-img', ['info', '--object', x509Obj(certs.clientDir), '--image-opts', imageOpts(x509Port)]);
    expect(i.code, i.stderr).toBe(0);
    expect(i.stdout).toMatch(/4 MiB/);
    const uri = `nbds://127.0.0.1:${x509Port}/d?tls-certificates=${certs.clientDir}`;
    const info = await runTool('nbdinfo', ['--json', uri]);
    expect(info.code, info.stderr).toBe(0);
    expect(JSON.parse(info.stdout).TLS).toBe(true);
    const out = join(dir, 'nbdcopy-x509.raw');
    const c = await runTool('nbdcopy', [uri, out]);
    expect(c.code, c.stderr).toBe(0);
    expect((await readFile(out)).subarray(0, 4096).equals(Buffer.alloc(4096, 0x77))).toBe(true);
  });

  it('X.509: no client certificate, or one from another CA, is refused', async () => {
    for (const d of [certs.anonClientDir, certs.rogueClientDir]) {
      const q = await runTool('qemu-io', ['--object', x509Obj(d), '--image-opts', imageOpts(x509Port), '-c', 'read 0 4k']);
      expect(qemuOk(q), `${d}: ${q.stdout}${q.stderr}`).toBe(false);
      const n = await runTool('nbdinfo', [`nbds://127.0.0.1:${x509Port}/d?tls-certificates=${d}`]);
      expect(n.code, d).not.toBe(0);
    }
  });

  it('a PSK file that other users can read is refused', async () => {
    const f = join(dir, 'open.psk');
    await writeFile(f, `alice:${'ab'.repeat(32)}\n`, { mode: 0o644 });
    expect(() => loadPskFile(f)).toThrow(/other users/);
  });
});
