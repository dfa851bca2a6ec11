/**
 * The strict exposition-format reader the metrics tests rely on: it must
 * reject what Prometheus would, or those tests could not fail.
 */
import { describe, expect, it } from 'vitest';
import { AgentMetrics } from '../../../src/agent/metrics.js';
import { parsePromText } from '../../helpers/prom-text.js';

const OK = '# HELP x_total A counter.\n# TYPE x_total counter\nx_total{disk="a"} 3\n';

describe('parsePromText', () => {
  it('reads a valid exposition, and the agent registry as rendered', async () => {
    expect(parsePromText(OK).get('x_total', { disk: 'a' })).toBe(3);
    const m = new AgentMetrics({ hostId: 'h', disks: ['a', 'b'], degradedChecks: ['store'] });
    const text = parsePromText((await m.render()).body);
    expect(text.get('cowstream_agent_degraded')).toBe(1);
    expect(text.get('cowstream_agent_startup_check_failed', { check: 'store' })).toBe(1);
    expect(text.get('cowstream_backup_read_bytes_total', { disk: 'b' })).toBe(0);
  });

  it.each([
    ['no final newline', OK.slice(0, -1)],
    ['a sample before its TYPE', 'x_total 1\n'],
    ['a bad label set', '# TYPE x gauge\nx{disk=a} 1\n'],
    ['an unescaped quote', '# TYPE x gauge\nx{disk="a"b"} 1\n'],
    ['a bad value', '# TYPE x gauge\nx 1,5\n'],
    ['a duplicate series', '# TYPE x gauge\nx{a="1",b="2"} 1\nx{b="2",a="1"} 2\n'],
    ['a second TYPE', '# TYPE x gauge\n# TYPE x gauge\n'],
    ['an unknown type', '# TYPE x meter\n'],
    ['a stray comment', '# hello\n'],
    ['a non-cumulative histogram', '# TYPE h histogram\nh_bucket{le="1"} 2\nh_bucket{le="+Inf"} 1\nh_sum 1\nh_count 1\n'],
    ['a histogram whose +Inf bucket is not its count', '# TYPE h histogram\nh_bucket{le="1"} 1\nh_bucket{le="+Inf"} 1\nh_sum 1\nh_count 2\n'],
  ])('rejects %s', (_what, text) => {
    expect(() => parsePromText(text)).toThrow();
  });
});
