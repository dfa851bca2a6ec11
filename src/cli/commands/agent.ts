import type { Command } from 'commander';

/**
 * `cowstream agent --config FILE`: the long-running host agent. Logs JSON
 * lines on stderr; SIGINT/SIGTERM stop it cleanly (running backup cancelled,
 * dirty bitmaps persisted with the clean-shutdown marker).
 */
export function registerAgentCommands(program: Command): void {
  program
    .command('agent')
    .description('run the host agent: NBD exports of the disks, copy-before-write backups, control API')
    .requiredOption('--config <file>', 'agent config (JSON); see docs/agent.md')
    .action(async (o: { config: string }) => {
      // Loaded lazily: the agent pulls in the S3 SDK, s3rver and the NBD server,
      // which every other CLI command would otherwise pay for at startup.
      const { loadAgentConfig } = await import('../../agent/config.js');
      const { startAgent } = await import('../../agent/agent.js');
      const { createLogger } = await import('../../agent/log.js');
      const config = loadAgentConfig(o.config);
      const log = createLogger(config.logLevel);
      const agent = await startAgent(config, { log });
      await new Promise<void>((resolve) => {
        let stopping = false;
        const onSignal = (sig: NodeJS.Signals): void => {
          if (stopping) {
            log.warn('second signal: exiting without waiting', { signal: sig });
            process.exit(1);
          }
          stopping = true;
          log.info('stopping', { signal: sig });
          agent
            .stop()
            .catch((err: unknown) => log.error('clean shutdown failed', { error: String(err) }))
            .finally(() => {
              process.off('SIGINT', onSignal);
              process.off('SIGTERM', onSignal);
              resolve();
            });
        };
        process.on('SIGINT', onSignal);
        process.on('SIGTERM', onSignal);
      });
      log.info('agent stopped');
      // Everything is closed; a lingering keep-alive socket or worker must not keep a stopped daemon alive.
      setTimeout(() => process.exit(process.exitCode ?? 0), 2000).unref();
    });
}
