import type { Command } from 'commander';
import { changeKeyPassphrase, createKeyFile } from '../../codec/crypto.js';
import { PASSPHRASE_ENV, PASSPHRASE_FILE_ENV, passphraseFromEnvironment, readPassphraseFile } from '../../codec/passphrase.js';
import { EncryptionKeyError, UsageError } from '../../errors.js';
import { printJson } from '../output.js';

/** Env var for the new passphrase of `key passwd` (the current one comes from COWSTREAM_KEY_PASSPHRASE). */
const NEW_PASSPHRASE_ENV = 'COWSTREAM_NEW_KEY_PASSPHRASE';

/** A new passphrase: from a file, an env var, or typed twice on the terminal. */
async function newPassphrase(file: string | undefined, envName: string): Promise<string> {
  if (file !== undefined) return readPassphraseFile(file);
  const fromEnv = process.env[envName];
  if (fromEnv !== undefined && fromEnv !== '') return fromEnv;
  if (!process.stdin.isTTY) throw new UsageError(`a new passphrase is needed: pass --passphrase-file / --new-passphrase-file, set ${envName}, or run on a terminal`);
  const ask = passphraseFromEnvironment({});
  const a = await ask('new passphrase');
  const b = await ask('repeat the new passphrase');
  if (a !== b) throw new EncryptionKeyError('the two passphrases differ');
  return a;
}

function report(info: { path: string; fingerprint: string; wrapped: boolean }, verb: string, json: boolean | undefined): void {
  if (json) printJson({ ok: true, path: info.path, fingerprint: info.fingerprint, mode: '0600', passphrase: info.wrapped });
  else process.stdout.write(`${verb} key file ${info.path} (mode 0600${info.wrapped ? ', passphrase-protected' : ''})\nfingerprint ${info.fingerprint}\n`);
}

/** `cowstream key ...`: encryption key files (32 random bytes, mode 0600, optionally passphrase-wrapped). */
export function registerKeyCommands(program: Command): void {
  const key = program.command('key').description('manage archive encryption keys (AES-256-GCM)');
  key
    .command('create')
    .description('write a new random 32-byte key file with mode 0600 (never overwrites) and print its fingerprint')
    .argument('<file>', 'path of the key file to create')
    .option('--passphrase', `wrap the key under a passphrase (scrypt); read from --passphrase-file, $${PASSPHRASE_ENV}, $${PASSPHRASE_FILE_ENV} or a prompt`)
    .option('--passphrase-file <file>', 'read the new passphrase from this file (mode 0600); implies --passphrase')
    .option('--json', 'print the result as JSON')
    .action(async (file: string, opts: { json?: boolean; passphrase?: boolean; passphraseFile?: string }) => {
      let passphrase: string | undefined;
      if (opts.passphrase || opts.passphraseFile !== undefined) {
        passphrase = opts.passphraseFile !== undefined ? await readPassphraseFile(opts.passphraseFile) : undefined;
        if (passphrase === undefined) {
          const direct = process.env[PASSPHRASE_ENV];
          const viaFile = process.env[PASSPHRASE_FILE_ENV];
          passphrase = direct ? direct : viaFile ? await readPassphraseFile(viaFile) : await newPassphrase(undefined, PASSPHRASE_ENV);
        }
      }
      report(await createKeyFile(file, passphrase !== undefined ? { passphrase } : {}), 'created', opts.json);
    });
  key
    .command('passwd')
    .description('change the passphrase of a key file (the key and its fingerprint stay the same)')
    .argument('<file>', 'key file')
    .option('--new-passphrase-file <file>', `read the new passphrase from this file (mode 0600); else $${NEW_PASSPHRASE_ENV} or a prompt`)
    .option('--remove', 'store the key without a passphrase')
    .option('--json', 'print the result as JSON')
    .action(async (file: string, opts: { json?: boolean; newPassphraseFile?: string; remove?: boolean }) => {
      if (opts.remove && opts.newPassphraseFile !== undefined) throw new UsageError('--remove and --new-passphrase-file exclude each other');
      // The current passphrase (if the file is wrapped) comes from the usual sources.
      const next = opts.remove ? null : await newPassphrase(opts.newPassphraseFile, NEW_PASSPHRASE_ENV);
      report(await changeKeyPassphrase(file, passphraseFromEnvironment(), next), 'updated', opts.json);
    });
}
