import type { Command } from 'commander';
import { printJson } from '../output.js';

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
    .option('--check-config', 'validate the config, check the store and the catalogue, print one line per check and exit (0 all pass, 1 a check failed, 2 bad config)')
    .option('--json', 'with --check-config: print JSON')
    .action(async (o: { config: string; checkConfig?: boolean; json?: boolean }) => {
      // Loaded lazily: the agent pulls in the S3 SDK, s3rver and the NBD server,
      // which every other CLI command would otherwise pay for at startup.
      const { loadAgentConfig } = await import('../../agent/config.js');
      const { runStartupChecks, checkResultJson } = await import('../../agent/startup-checks.js');
      const config = loadAgentConfig(o.config);
      // Secret files named by the config are part of it: a loose or missing one is a bad config (exit 2).
      await (await import('../../agent/notify.js')).readWebhookTokens(config);
      const checks = await runStartupChecks(config);
      const failed = checks.filter((c) => c.status === 'failed');
      if (o.checkConfig) {
        if (o.json) printJson({ ok: failed.length === 0, checks: checks.map(checkResultJson) });
        else process.stdout.write(checks.map((c) => `${c.status.padEnd(7)} ${c.name}: ${c.detail}`).join('\n') + '\n');
        process.exitCode = failed.length === 0 ? 0 : 1;
        return;
      }
      const { startAgent } = await import('../../agent/agent.js');
      const { createLogger } = await import('../../agent/log.js');
      const log = createLogger(config.logLevel);
      for (const c of failed) log.error('start-up check failed', { check: c.name, field: c.error?.field, error: c.detail, ...(config.startDegraded ? { degraded: true } : {}) });
      // Without the opt-in the first failure stops the start (exit 1), naming the setting and the fix.
      if (failed.length > 0 && !config.startDegraded) throw failed[0]!.error!;
      const agent = await startAgent(config, { log, ...(failed.length > 0 ? { degraded: failed.map(checkResultJson) } : {}) });
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
