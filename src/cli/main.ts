import { Command, CommanderError } from 'commander';
import { CowstreamError, UsageError, describeError } from '../errors.js';

type Registrar = (program: Command) => void;

/**
 * Command groups, loaded on demand: a CLI call imports only the group it
 * runs (the S3 SDK alone costs ~0.5 s of start-up), `--help` imports all.
 */
const GROUPS: Record<string, () => Promise<Registrar>> = {
  archive: async () => (await import('./commands/archive.js')).registerArchiveCommands,
  key: async () => (await import('./commands/key.js')).registerKeyCommands,
  agent: async () => (await import('./commands/agent.js')).registerAgentCommands,
  backup: async () => (await import('./commands/backup.js')).registerBackupCommands,
  restore: async () => (await import('./commands/restore.js')).registerRestoreCommands,
  serve: async () => (await import('./commands/serve.js')).registerServeCommands,
  store: async () => (await import('./commands/store.js')).registerStoreCommands,
  catalog: async () => (await import('./commands/catalog.js')).registerCatalogCommands,
  bucket: async () => (await import('./commands/bucket.js')).registerBucketCommands,
  console: async () => (await import('./commands/console.js')).registerConsoleCommands,
  export: async () => (await import('./commands/export.js')).registerExportCommands,
};

/** Which group defines each top-level command. */
const COMMAND_GROUP: Record<string, string> = {
  archive: 'archive',
  key: 'key',
  agent: 'agent',
  backup: 'backup',
  status: 'backup',
  cancel: 'backup',
  restore: 'restore',
  serve: 'serve',
  verify: 'store',
  uploads: 'store',
  s3: 'store',
  list: 'catalog',
  show: 'catalog',
  catalog: 'catalog',
  snapshots: 'bucket',
  forget: 'bucket',
  console: 'console',
  export: 'export',
};

/**
 * Builds the `cowstream` program. With `command`, only the group defining it
 * is loaded; with `versionOnly` none; otherwise (help, unknown command) every group is.
 */
export async function buildProgram(command?: string, versionOnly = false): Promise<Command> {
  const program = new Command();
  program
    .name('cowstream')
    .description('Live block-level backups of disks and VMs to S3 (copy-before-write, incremental, fleecing)')
    .version('0.1.0')
    .showHelpAfterError()
    .exitOverride();
  const group = command !== undefined ? COMMAND_GROUP[command] : undefined;
  const names = group !== undefined ? [group] : versionOnly ? [] : Object.keys(GROUPS);
  const registrars = await Promise.all(names.map((n) => GROUPS[n]!()));
  for (const register of registrars) register(program);
  return program;
}

/** Exit codes: 0 ok, 1 operation failed, 2 bad usage. */
export async function main(argv: string[]): Promise<void> {
  // argv = [node, script, command, ...]: the first word after the script picks the group.
  const command = argv.slice(2).find((a) => !a.startsWith('-'));
  // `cowstream --version` needs no command group at all.
  const versionOnly = command === undefined && argv.slice(2).some((a) => a === '--version' || a === '-V');
  const program = await buildProgram(command, versionOnly);
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
