import { describe, expect, it } from 'vitest';
import { UsageError } from '../../../src/errors.js';
import { parseDeviceSpecs, parseLevel } from '../../../src/cli/commands/archive.js';

describe('archive create argument validation', () => {
  it('parses NAME=IMAGE pairs, keeping "=" inside the path', () => {
    expect(parseDeviceSpecs(['disk0=/dev/vg/a', 'efi.vars=/tmp/x=y.img'])).toEqual([
      { name: 'disk0', path: '/dev/vg/a' },
      { name: 'efi.vars', path: '/tmp/x=y.img' },
    ]);
  });

  it.each([
    [[], /no devices given/],
    [['disk0'], /expected NAME=IMAGE/],
    [['=img'], /expected NAME=IMAGE/],
    [['disk0='], /expected NAME=IMAGE/],
    [['a/b=img'], /bad device name/],
    [['.hidden=img'], /bad device name/],
    [['-x=img'], /bad device name/],
    [[`${'n'.repeat(129)}=img`], /bad device name/],
    [['a=1', 'b=2', 'a=3'], /duplicate device name "a"/],
    [Array.from({ length: 256 }, (_, i) => `d${i}=img`), /too many devices: 256 given, an archive holds at most 255/],
  ])('%j → UsageError', (specs, message) => {
    expect(() => parseDeviceSpecs(specs as string[])).toThrow(UsageError);
    expect(() => parseDeviceSpecs(specs as string[])).toThrow(message);
  });

  it('accepts exactly 255 devices', () => {
    expect(parseDeviceSpecs(Array.from({ length: 255 }, (_, i) => `d${i}=img`))).toHaveLength(255);
  });

  it('--level is an integer 1..19', () => {
    expect(parseLevel('1')).toBe(1);
    expect(parseLevel('19')).toBe(19);
    for (const bad of ['0', '20', '-1', '3.5', 'fast', '']) expect(() => parseLevel(bad)).toThrow(UsageError);
  });
});
