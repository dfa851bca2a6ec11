/**
 * Test TLS credentials made at test time with openssl: a CA, a server
 * certificate for 127.0.0.1/localhost, a client certificate, a client
 * certificate from another CA, and psktool-format key files. Laid out the
 * way QEMU's tls-creds-x509 (dir=) and libnbd's tls-certificates expect.
 */
import { execFile } from 'node:child_process';
import { mkdir, writeFile, chmod } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

async function openssl(args: string[], cwd: string): Promise<void> {
  await run('openssl', args, { cwd });
}

async function makeCa(dir: string, name: string): Promise<void> {
  await openssl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '2', '-subj', `/CN=${name}`, '-keyout', `${name}-key.pem`, '-out', `${name}-cert.pem`], dir);
}

async function issue(dir: string, ca: string, name: string, cn: string, ext: string): Promise<void> {
  await writeFile(join(dir, `${name}.ext`), ext);
  await openssl(['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-subj', `/CN=${cn}`, '-keyout', `${name}-key.pem`, '-out', `${name}.csr`], dir);
  await openssl(['x509', '-req', '-in', `${name}.csr`, '-CA', `${ca}-cert.pem`, '-CAkey', `${ca}-key.pem`, '-CAcreateserial', '-days', '2', '-extfile', `${name}.ext`, '-out', `${name}-cert.pem`], dir);
}

export interface TestCerts {
  /** Working dir with every file. */
  dir: string;
  caCert: string;
  serverCert: string;
  serverKey: string;
  /** ca-cert.pem, client-cert.pem, client-key.pem: a client trusted by the CA. */
  clientDir: string;
  /** Same layout, client certificate from a CA the server does not trust. */
  rogueClientDir: string;
  /** ca-cert.pem only: a client that presents no certificate. */
  anonClientDir: string;
}

export async function makeTestCerts(dir: string): Promise<TestCerts> {
  await mkdir(dir, { recursive: true });
  await makeCa(dir, 'ca');
  await makeCa(dir, 'rogue-ca');
  await issue(dir, 'ca', 'server', 'localhost', 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\nkeyUsage=digitalSignature\n');
  await issue(dir, 'ca', 'client', 'backup-client', 'extendedKeyUsage=clientAuth\nkeyUsage=digitalSignature\n');
  await issue(dir, 'rogue-ca', 'rogue', 'rogue-client', 'extendedKeyUsage=clientAuth\nkeyUsage=digitalSignature\n');
  const layout = async (name: string, certBase: string | null): Promise<string> => {
    const d = join(dir, name);
    await mkdir(d);
    await run('cp', [join(dir, 'ca-cert.pem'), join(d, 'ca-cert.pem')]);
    if (certBase) {
      await run('cp', [join(dir, `${certBase}-cert.pem`), join(d, 'client-cert.pem')]);
      await run('cp', [join(dir, `${certBase}-key.pem`), join(d, 'client-key.pem')]);
    }
    return d;
  };
  return {
    dir,
    caCert: join(dir, 'ca-cert.pem'),
    serverCert: join(dir, 'server-cert.pem'),
    serverKey: join(dir, 'server-key.pem'),
    clientDir: await layout('client', 'client'),
    rogueClientDir: await layout('rogue', 'rogue'),
    anonClientDir: await layout('anon', null),
  };
}

/**
 * A psktool-format file (`identity:hexkey`) named keys.psk in its own dir,
 * as QEMU's tls-creds-psk dir= wants; mode 0600.
 */
export async function makePskFile(dir: string, identity: string): Promise<{ dir: string; file: string; key: string }> {
  await mkdir(dir, { recursive: true });
  const key = randomBytes(32).toString('hex');
  const file = join(dir, 'keys.psk');
  await writeFile(file, `${identity}:${key}\n`, { mode: 0o600 });
  await chmod(file, 0o600);
  return { dir, file, key };
}
