import { Command, CommanderError } from 'commander';
import { CowstreamError, UsageError, describeError } from '../errors.js';
import { registerArchiveCommands } from './commands/archive.js';
import { registerKeyCommands } from './commands/key.js';
import { registerAgentCommands } from './commands/agent.js';
import { registerBackupCommands } from './commands/backup.js';
import { registerRestoreCommands } from './commands/restore.js';
import { registerStoreCommands } from './commands/store.js';
import { registerCatalogCommands } from './commands/catalog.js';

/** Builds the `cowstream` program. Each command group lives in its own module. */
export function buildProgram(): Command {
  const program = new Command();
  program
    .name('cowstream')
    .description('Live block-level backups of disks and VMs to S3 (copy-before-write, incremental, fleecing)')
    .version('0.1.0')
    .showHelpAfterError()
    .exitOverride();
  registerArchiveCommands(program);
  registerKeyCommands(program);
  registerAgentCommands(program);
  registerBackupCommands(program);
  registerRestoreCommands(program);
  registerStoreCommands(program);
  registerCatalogCommands(program);
  return program;
}

/** Exit codes: 0 ok, 1 operation failed, 2 bad usage. */
export async function main(argv: string[]): Promise<void> {
  const program = buildProgram();
  try {
    await program.parseAsync(argv);
  } catch (err) {
    if (err instanceof CommanderError) {
      // --help and --version exit through here with code 0.
      process.exitCode = err.exitCode === 0 ? 0 : 2;
      return;
    }
    const json = argv.includes('--json');
    const code = err instanceof UsageError ? 2 : 1;
    if (json) {
      const body = err instanceof CowstreamError ? err.toJSON() : { name: 'Error', code: 'INTERNAL', message: describeError(err) };
      process.stdout.write(JSON.stringify({ ok: false, error: { ...body, detail: describeError(err) } }) + '\n');
    } else {
      process.stderr.write(`cowstream: ${describeError(err)}\n`);
      if (!(err instanceof CowstreamError) && process.env.COWSTREAM_DEBUG) {
        process.stderr.write(String((err as Error)?.stack) + '\n');
      }
    }
    process.exitCode = code;
  }
}
