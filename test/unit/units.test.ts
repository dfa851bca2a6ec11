import { describe, expect, it } from 'vitest';
import { InvalidSizeError, formatBytes, formatRate, parseSize } from '../../src/units.js';

describe('parseSize', () => {
  it('reads bare and i-marked prefixes as binary, prefix + B as decimal', () => {
    expect(parseSize('4096')).toBe(4096);
    expect(parseSize('4096B')).toBe(4096);
    expect(parseSize('10M')).toBe(10 * 2 ** 20);
    expect(parseSize('10MiB')).toBe(10 * 2 ** 20);
    expect(parseSize('10mib')).toBe(10 * 2 ** 20);
    expect(parseSize('10MB')).toBe(10_000_000);
    expect(parseSize('1.5G')).toBe(1.5 * 2 ** 30);
    expect(parseSize('2TB')).toBe(2e12);
    expect(parseSize(' 8 KiB ')).toBe(8192);
  });

  it('refuses what it cannot read, naming the setting', () => {
    for (const bad of ['', 'M', '-1M', '10X', '10 MiBs', '1e3', '10iB', '0x10']) {
      expect(() => parseSize(bad, '--speed'), bad).toThrow(InvalidSizeError);
    }
    expect(() => parseSize('10Q', '--fleecing-max')).toThrow(/--fleecing-max/);
    expect(() => parseSize('99999999999P')).toThrow(/too large/);
  });
});

describe('formatBytes / formatRate', () => {
  it('prints binary units', () => {
    expect(formatBytes(512)).toBe('512 B');
    expect(formatBytes(1536)).toBe('1.5 KiB');
    expect(formatBytes(3 * 2 ** 30)).toBe('3.0 GiB');
    expect(formatRate(100 * 2 ** 20, 2)).toBe('50.0 MiB/s');
    expect(formatRate(1, 0)).toBe('-');
  });
});
