import { describe, expect, it } from 'vitest';
import {
  InfraConfigError,
  configFromContext,
  parseHosts,
  parseKmsKey,
  parseObjectLock,
  parseRetention,
} from '../../../infra/config.js';
import { ConfigError } from '../../../src/errors.js';

function errorOf(fn: () => unknown): InfraConfigError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(InfraConfigError);
    expect(err).toBeInstanceOf(ConfigError);
    return err as InfraConfigError;
  }
  throw new Error('expected an InfraConfigError');
}

describe('infra context parsing', () => {
  it('has safe defaults with no context at all', () => {
    const c = configFromContext({});
    expect(c).toEqual({
      stackName: 'Cowstream',
      hosts: [],
      objectLock: null,
      kmsKeyArn: null,
      retention: {},
      pruneDryRun: false,
      alarmEmail: null,
      freshnessHours: 26,
      verifyByteBudget: 1024 ** 3,
    });
  });

  it('reads hosts from a comma list (-c) or an array (cdk.json)', () => {
    expect(parseHosts('pve1, pve2,,')).toEqual(['pve1', 'pve2']);
    expect(parseHosts(['a.example', 'b_2'])).toEqual(['a.example', 'b_2']);
    expect(parseHosts('')).toEqual([]);
  });

  it('rejects host ids that would be IAM wildcards, paths or duplicates', () => {
    expect(errorOf(() => parseHosts('pve*')).key).toBe('hosts');
    expect(errorOf(() => parseHosts('a/b')).message).toMatch(/"a\/b"/);
    expect(errorOf(() => parseHosts('-x')).message).toMatch(/starting with a letter or digit/);
    expect(errorOf(() => parseHosts('a,a')).message).toMatch(/duplicate/);
    // Both become the output name AgentRoleArnpve1.
    expect(errorOf(() => parseHosts('pve-1,pve1')).message).toMatch(/same stack output name/);
    expect(errorOf(() => parseHosts(42)).message).toMatch(/comma-separated/);
  });

  it('parses objectLock as off or mode:days, string or object', () => {
    expect(parseObjectLock(undefined)).toBeNull();
    expect(parseObjectLock('off')).toBeNull();
    expect(parseObjectLock('governance:30')).toEqual({ mode: 'GOVERNANCE', days: 30 });
    expect(parseObjectLock('COMPLIANCE:365')).toEqual({ mode: 'COMPLIANCE', days: 365 });
    expect(parseObjectLock({ mode: 'governance', days: 7 })).toEqual({ mode: 'GOVERNANCE', days: 7 });
    expect(errorOf(() => parseObjectLock('forever')).message).toMatch(/invalid context "objectLock": expected off, governance:<days>/);
    expect(errorOf(() => parseObjectLock('governance:0')).message).toMatch(/between 1 and 36500/);
    expect(errorOf(() => parseObjectLock({ mode: 'legal', days: 1 })).message).toMatch(/mode must be/);
  });

  it('accepts only KMS key ARNs', () => {
    const arn = 'arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab';
    expect(parseKmsKey(arn)).toBe(arn);
    expect(errorOf(() => parseKmsKey('alias/backup')).key).toBe('kmsKey');
    expect(errorOf(() => parseKmsKey('arn:aws:kms:eu-west-1:123456789012:alias/backup')).message).toMatch(/KMS key ARN/);
  });

  it('parses retention from JSON, k=v pairs or an object', () => {
    expect(parseRetention('keepLast=3, keepDaily=14')).toEqual({ keepLast: 3, keepDaily: 14 });
    expect(parseRetention('{"keepWeekly":4,"hosts":{"pve1":{"keepLast":2}}}')).toEqual({
      keepWeekly: 4,
      hosts: { pve1: { keepLast: 2 } },
    });
    expect(parseRetention({ keepMonthly: 6, disks: { 'pve1/vda': { keepLast: 1 } } })).toEqual({
      keepMonthly: 6,
      disks: { 'pve1/vda': { keepLast: 1 } },
    });
    expect(errorOf(() => parseRetention('keepForever=1')).message).toMatch(/retention/);
    expect(errorOf(() => parseRetention('{"keepLast":-1}')).message).toMatch(/keepLast/);
    expect(errorOf(() => parseRetention('{nope')).message).toMatch(/not valid JSON/);
    expect(errorOf(() => parseRetention('keepLast')).message).toMatch(/k=v pairs/);
  });

  it('validates the other keys and names the key in the message', () => {
    expect(configFromContext({ alarmEmail: 'ops@example.com' }).alarmEmail).toBe('ops@example.com');
    expect(errorOf(() => configFromContext({ alarmEmail: 'not-an-email' })).key).toBe('alarmEmail');
    expect(configFromContext({ freshnessHours: '48' }).freshnessHours).toBe(48);
    expect(errorOf(() => configFromContext({ freshnessHours: '0' })).key).toBe('freshnessHours');
    expect(configFromContext({ pruneDryRun: 'true' }).pruneDryRun).toBe(true);
    expect(errorOf(() => configFromContext({ pruneDryRun: 'yes' })).key).toBe('pruneDryRun');
    expect(configFromContext({ verifyByteBudget: '10G' }).verifyByteBudget).toBe(10 * 1024 ** 3);
    expect(errorOf(() => configFromContext({ verifyByteBudget: 'lots' })).key).toBe('verifyByteBudget');
    expect(errorOf(() => configFromContext({ stackName: '1bad' })).key).toBe('stackName');
  });
});
