import { describe, expect, it } from 'vitest';
import { ConfigError } from '../../../src/errors.js';
import { parseListenAddress } from '../../../src/nbd/address.js';

describe('parseListenAddress', () => {
  it('accepts the usual forms', () => {
    expect(parseListenAddress('127.0.0.1:10809')).toEqual({ host: '127.0.0.1', port: 10809 });
    expect(parseListenAddress('[::1]:7000')).toEqual({ host: '::1', port: 7000 });
    expect(parseListenAddress('[::]')).toEqual({ host: '::', port: 10809 });
    expect(parseListenAddress('localhost')).toEqual({ host: 'localhost', port: 10809 });
    expect(parseListenAddress(':0')).toEqual({ host: '127.0.0.1', port: 0 });
    expect(parseListenAddress('10810')).toEqual({ host: '127.0.0.1', port: 10810 });
  });

  it('rejects bad input with ConfigError', () => {
    for (const bad of ['::1:10809', 'host:99999', 'host:abc', 'host:-1', '[::1]:x', 'a b:1']) {
      expect(() => parseListenAddress(bad), bad).toThrow(ConfigError);
    }
  });
});
