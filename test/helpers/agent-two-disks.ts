/**
 * The agent configuration shared by the control, exports and export-jobs
 * tests: host h1 with disks `a` (dir/a.raw) and `b` (dir/b.raw), state in
 * dir/state, plus each test's own settings.
 */
import { join } from 'node:path';
import { parseAgentConfig, type AgentConfig } from '../../src/agent/config.js';

export function twoDiskAgentConfig(dir: string, extra: Record<string, unknown>): AgentConfig {
  return parseAgentConfig({
    hostId: 'h1',
    stateDir: join(dir, 'state'),
    disks: [
      { name: 'a', path: join(dir, 'a.raw') },
      { name: 'b', path: join(dir, 'b.raw') },
    ],
    ...extra,
  });
}
