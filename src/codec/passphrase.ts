/**
 * Where a key file's passphrase comes from (docs/security.md "Key files"):
 * an environment variable, a file named by one, or a prompt on the terminal,
 * in that order. The one place these variables are read.
 */
import { open, stat } from 'node:fs/promises';
import { EncryptionKeyError } from '../errors.js';

export const PASSPHRASE_ENV = 'COWSTREAM_KEY_PASSPHRASE';
export const PASSPHRASE_FILE_ENV = 'COWSTREAM_KEY_PASSPHRASE_FILE';
/** A passphrase file larger than this is not a passphrase. */
const MAX_PASSPHRASE_FILE = 4096;

/** Yields a passphrase; `purpose` is shown in a prompt ("passphrase for key file X"). */
export type PassphraseSource = (purpose: string) => Promise<string>;

/** Refuses a secret file that group or others may read, as ssh does for private keys. */
export function checkPrivateMode(path: string, mode: number, what: string): void {
  if ((mode & 0o077) !== 0) {
    const octal = (mode & 0o777).toString(8).padStart(4, '0');
    throw new EncryptionKeyError(`${what} ${path} is accessible by group or others (mode ${octal}); refusing to use it: run chmod 600 ${path}`);
  }
}

/** Reads a passphrase file (private mode, <= 4 KiB), without its trailing newline. */
export async function readPassphraseFile(path: string): Promise<string> {
  let st;
  try {
    st = await stat(path);
  } catch (err) {
    throw new EncryptionKeyError(`cannot read passphrase file ${path}: ${(err as Error).message}`, { cause: err });
  }
  if (!st.isFile()) throw new EncryptionKeyError(`passphrase file ${path} is not a regular file`);
  checkPrivateMode(path, st.mode, 'passphrase file');
  if (st.size > MAX_PASSPHRASE_FILE) throw new EncryptionKeyError(`passphrase file ${path} is larger than ${MAX_PASSPHRASE_FILE} bytes`);
  const fh = await open(path, 'r');
  try {
    return (await fh.readFile('utf8')).replace(/\r?\n$/, '');
  } finally {
    await fh.close();
  }
}

/** Reads a line from the terminal without echoing it. */
async function promptHidden(question: string): Promise<string> {
  const stdin = process.stdin;
  process.stderr.write(question);
  stdin.setRawMode(true);
  stdin.resume();
  stdin.setEncoding('utf8');
  try {
    return await new Promise<string>((resolve, reject) => {
      let line = '';
      const onData = (chunk: string): void => {
        for (const ch of chunk) {
          if (ch === '\r' || ch === '\n') {
            stdin.off('data', onData);
            resolve(line);
            return;
          }
          if (ch === '\u0003') {
            stdin.off('data', onData);
            reject(new EncryptionKeyError('passphrase entry cancelled'));
            return;
          }
          if (ch === '\u007f' || ch === '\b') line = line.slice(0, -1);
          else line += ch;
        }
      };
      stdin.on('data', onData);
    });
  } finally {
    stdin.setRawMode(false);
    stdin.pause();
    process.stderr.write('\n');
  }
}

/** `$COWSTREAM_KEY_PASSPHRASE`, else the file `$COWSTREAM_KEY_PASSPHRASE_FILE`, else a terminal prompt. */
export function passphraseFromEnvironment(env: NodeJS.ProcessEnv = process.env): PassphraseSource {
  return async (purpose) => {
    const direct = env[PASSPHRASE_ENV];
    if (direct !== undefined && direct !== '') return direct;
    const file = env[PASSPHRASE_FILE_ENV];
    if (file !== undefined && file !== '') return readPassphraseFile(file);
    if (process.stdin.isTTY) return promptHidden(`${purpose}: `);
    throw new EncryptionKeyError(`${purpose} is needed: set ${PASSPHRASE_ENV} or ${PASSPHRASE_FILE_ENV}, or run on a terminal`);
  };
}
