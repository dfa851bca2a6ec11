import type { Command } from 'commander';
import { createKeyFile } from '../../codec/crypto.js';
import { printJson } from '../output.js';

/** `cowstream key ...`: encryption key files (32 random bytes, mode 0600). */
export function registerKeyCommands(program: Command): void {
  const key = program.command('key').description('manage archive encryption keys (AES-256-GCM)');
  key
    .command('create')
    .description('write a new random 32-byte key file with mode 0600 (never overwrites) and print its fingerprint')
    .argument('<file>', 'path of the key file to create')
    .option('--json', 'print the result as JSON')
    .action(async (file: string, opts: { json?: boolean }) => {
      const info = await createKeyFile(file);
      if (opts.json) printJson({ ok: true, path: info.path, fingerprint: info.fingerprint, mode: '0600' });
      else process.stdout.write(`created key file ${info.path} (mode 0600)\nfingerprint ${info.fingerprint}\n`);
    });
}
