import { describe, expect, it } from 'vitest';
import { ChecksumError, CowstreamError, FormatError, describeError } from '../../src/errors.js';

describe('error hierarchy', () => {
  it('subclasses keep name, code and cause', () => {
    const cause = new Error('disk on fire');
    const err = new ChecksumError('extent 3 payload checksum mismatch', { cause });
    expect(err).toBeInstanceOf(FormatError);
    expect(err).toBeInstanceOf(CowstreamError);
    expect(err.name).toBe('ChecksumError');
    expect(err.code).toBe('CHECKSUM');
    expect(err.cause).toBe(cause);
    expect(describeError(err)).toBe('extent 3 payload checksum mismatch: disk on fire');
  });

  it('describeError names each cause once, even when a wrapper already quotes it', () => {
    const enoent = new Error("ENOENT: no such file or directory, open '/nope.json'");
    const wrapped = new FormatError(`cannot read agent config "/nope.json": ${enoent.message}`, { cause: enoent });
    expect(describeError(wrapped)).toBe(`cannot read agent config "/nope.json": ENOENT: no such file or directory, open '/nope.json'`);
    expect(describeError(new CowstreamError('outer', { cause: new Error('inner') }))).toBe('outer: inner');
  });
});
