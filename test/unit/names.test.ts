import { describe, expect, it } from 'vitest';
import { DEVICE_NAME_MAX, HOST_DISK_PATTERN, HOST_ID_MAX, isDeviceName, isHostId } from '../../src/names.js';

describe('name rules (src/names.ts)', () => {
  it('accepts the safe alphabet up to the limit and nothing else', () => {
    for (const ok of ['a', 'web-1', 'pve1.example.org', 'A_b-c.d', 'x'.repeat(HOST_ID_MAX)]) expect(isHostId(ok), ok).toBe(true);
    for (const bad of ['', '.', '..', '.hidden', '-opt', '_x', 'a/b', 'a b', 'ü', 'x'.repeat(HOST_ID_MAX + 1), 'a\nb']) expect(isHostId(bad), bad).toBe(false);
    expect(isDeviceName('x'.repeat(DEVICE_NAME_MAX))).toBe(true);
    expect(isDeviceName('x'.repeat(DEVICE_NAME_MAX + 1))).toBe(false);
    expect(isDeviceName('../etc')).toBe(false);
    expect(HOST_DISK_PATTERN.test('web-1/vda')).toBe(true);
    expect(HOST_DISK_PATTERN.test('web-1/../vda')).toBe(false);
  });
});
