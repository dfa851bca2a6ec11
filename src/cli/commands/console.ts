/**
 * `cowstream console`: serves the web console on loopback and proxies its
 * API calls to the catalogue (src/console/server.ts).
 */
import type { Command } from 'commander';
import { UsageError } from '../../errors.js';
import { resolveCatalogToken } from '../embedded-auth.js';
import { parsePositiveInt, printJson } from '../output.js';
import { untilInterrupted } from '../signals.js';

export function registerConsoleCommands(program: Command): void {
  program
    .command('console')
    .description('serve the web console on 127.0.0.1 for a catalogue (AWS calls are signed with your AWS credentials), until interrupted')
    .option('--catalog <url>', 'catalogue URL (default $COWSTREAM_CATALOG_URL)')
    .option('--catalog-token <token>', 'bearer token of an embedded catalogue (default $COWSTREAM_CATALOG_TOKEN, else from --state)')
    .option('--state <dir>', "an embedded catalogue's state directory: its token is read from <dir>/credentials.json")
    .option('--port <p>', 'loopback port (default: ephemeral)')
    .option('--json', 'print the console URL as JSON')
    .action(async (o: { catalog?: string; catalogToken?: string; state?: string; port?: string; json?: boolean }) => {
      const catalogUrl = o.catalog ?? process.env.COWSTREAM_CATALOG_URL;
      if (!catalogUrl) throw new UsageError('no catalogue: give --catalog <url> or set COWSTREAM_CATALOG_URL');
      const port = o.port !== undefined ? parsePositiveInt(o.port, '--port', 65535) : 0;
      const catalogToken = await resolveCatalogToken({ ...(o.catalogToken ? { catalogToken: o.catalogToken } : {}), ...(o.state ? { state: o.state } : {}) }, catalogUrl);
      const { startConsoleServer } = await import('../../console/server.js');
      const server = await startConsoleServer({ catalogUrl, port, ...(catalogToken ? { catalogToken } : {}) });
      if (o.json) printJson({ url: server.pageUrl, catalog: catalogUrl });
      else process.stdout.write(`cowstream console for ${catalogUrl}\nopen ${server.pageUrl}\n(the link holds this run's access token; press Ctrl-C to stop)\n`);
      await untilInterrupted();
      await server.close();
    });
}
