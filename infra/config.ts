/**
 * Deployment configuration of the cowstream stack, read from CDK context
 * (`cdk deploy -c hosts=pve1,pve2 -c objectLock=governance:30 ...` or the
 * `context` block of cdk.json). Values from `-c` are always strings, values
 * from cdk.json may be arrays/objects, so every key accepts both forms.
 * Anything invalid fails synthesis with an InfraConfigError naming the key.
 */
import { z } from 'zod';
import { ConfigError } from '../src/errors.js';
import { parseSize } from '../src/units.js';
import { retentionConfigSchema, type RetentionConfig, type RetentionPolicy } from '../src/catalog/retention.js';
import { formatZodIssues } from '../src/zod-issues.js';
import { isHostId } from '../src/names.js';

/** A context value that does not validate; `key` is the context key. */
export class InfraConfigError extends ConfigError {
  override readonly code: string = 'INFRA_CONFIG';
  readonly key: string;
  constructor(key: string, message: string, options?: { cause?: unknown }) {
    super(`invalid context "${key}": ${message}`, options);
    this.key = key;
  }
}

export type ObjectLockMode = 'GOVERNANCE' | 'COMPLIANCE';
export interface ObjectLockConfig {
  mode: ObjectLockMode;
  days: number;
}

export type { RetentionConfig, RetentionPolicy };

export interface CowstreamConfig {
  stackName: string;
  hosts: string[];
  /** null = no Object Lock (the bucket can't get it later without replacement). */
  objectLock: ObjectLockConfig | null;
  kmsKeyArn: string | null;
  retention: RetentionConfig;
  pruneDryRun: boolean;
  alarmEmail: string | null;
  /** Freshness alarm threshold: a host without a new archive for this long alarms. */
  freshnessHours: number;
  /** Bytes the scheduled verify reads per run. */
  verifyByteBudget: number;
}

/** Reads one context key; `undefined` when not set. */
export type ContextGetter = (key: string) => unknown;

export const CONTEXT_KEYS = [
  'stackName',
  'hosts',
  'objectLock',
  'kmsKey',
  'retention',
  'pruneDryRun',
  'alarmEmail',
  'freshnessHours',
  'verifyByteBudget',
] as const;

const DEFAULT_FRESHNESS_HOURS = 26;
const DEFAULT_VERIFY_BYTE_BUDGET = 1024 ** 3;
/** S3 Object Lock accepts up to 100 years of default retention. */
const MAX_LOCK_DAYS = 36_500;

function asString(key: string, raw: unknown): string {
  if (typeof raw !== 'string') throw new InfraConfigError(key, `expected a string, got ${JSON.stringify(raw)}`);
  return raw.trim();
}

function parseBoolean(key: string, raw: unknown, dflt: boolean): boolean {
  if (raw === undefined) return dflt;
  if (typeof raw === 'boolean') return raw;
  if (raw === 'true') return true;
  if (raw === 'false') return false;
  throw new InfraConfigError(key, `expected true or false, got ${JSON.stringify(raw)}`);
}

function parseIntInRange(key: string, raw: unknown, dflt: number, min: number, max: number): number {
  if (raw === undefined) return dflt;
  const n = typeof raw === 'number' ? raw : typeof raw === 'string' && /^\d+$/.test(raw.trim()) ? Number(raw) : NaN;
  if (!Number.isInteger(n) || n < min || n > max) {
    throw new InfraConfigError(key, `expected an integer between ${min} and ${max}, got ${JSON.stringify(raw)}`);
  }
  return n;
}

/**
 * The key an output or construct id is derived from: CloudFormation logical
 * ids are alphanumeric only, so `pve-1` and `pve1` would collide.
 */
export function hostOutputSuffix(host: string): string {
  return host.replace(/[^A-Za-z0-9]/g, '');
}

export function parseHosts(raw: unknown): string[] {
  if (raw === undefined || raw === '') return [];
  let list: unknown[];
  if (Array.isArray(raw)) list = raw;
  else if (typeof raw === 'string') list = raw.split(',');
  else throw new InfraConfigError('hosts', `expected a comma-separated list or an array, got ${JSON.stringify(raw)}`);
  const hosts: string[] = [];
  const bySuffix = new Map<string, string>();
  for (const item of list) {
    if (typeof item !== 'string') throw new InfraConfigError('hosts', `host ids must be strings, got ${JSON.stringify(item)}`);
    const host = item.trim();
    if (host === '') continue;
    // The agent's and the catalogue's host id rule (src/names.ts): a host id ends up in S3 keys
    // (`archives/<host>/`), in IAM resource ARNs (where `*` and `?` would be wildcards) and in DynamoDB keys.
    if (!isHostId(host)) {
      throw new InfraConfigError('hosts', `host id "${host}" must be 1-128 chars of [A-Za-z0-9._-] starting with a letter or digit`);
    }
    if (hosts.includes(host)) throw new InfraConfigError('hosts', `duplicate host id "${host}"`);
    const suffix = hostOutputSuffix(host);
    const clash = bySuffix.get(suffix.toLowerCase());
    if (clash !== undefined) {
      throw new InfraConfigError('hosts', `host ids "${clash}" and "${host}" map to the same stack output name; rename one`);
    }
    bySuffix.set(suffix.toLowerCase(), host);
    hosts.push(host);
  }
  return hosts;
}

export function parseObjectLock(raw: unknown): ObjectLockConfig | null {
  if (raw === undefined || raw === 'off' || raw === false || raw === 'false' || raw === '') return null;
  let mode: unknown;
  let days: unknown;
  if (typeof raw === 'string') {
    const m = /^(governance|compliance):(\d{1,6})$/i.exec(raw.trim());
    if (!m) {
      throw new InfraConfigError('objectLock', `expected off, governance:<days> or compliance:<days>, got "${raw}"`);
    }
    mode = m[1]!.toUpperCase();
    days = Number(m[2]);
  } else if (typeof raw === 'object' && raw !== null) {
    const o = raw as { mode?: unknown; days?: unknown };
    mode = typeof o.mode === 'string' ? o.mode.toUpperCase() : o.mode;
    days = o.days;
  } else {
    throw new InfraConfigError('objectLock', `expected off, governance:<days> or compliance:<days>, got ${JSON.stringify(raw)}`);
  }
  if (mode !== 'GOVERNANCE' && mode !== 'COMPLIANCE') {
    throw new InfraConfigError('objectLock', `mode must be governance or compliance, got ${JSON.stringify(mode)}`);
  }
  if (typeof days !== 'number' || !Number.isInteger(days) || days < 1 || days > MAX_LOCK_DAYS) {
    throw new InfraConfigError('objectLock', `days must be an integer between 1 and ${MAX_LOCK_DAYS}, got ${JSON.stringify(days)}`);
  }
  return { mode, days };
}

/** A KMS *key* ARN: S3 default encryption and IAM grants need the key, not an alias. */
const KMS_KEY_ARN_RE = /^arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:key\/[A-Za-z0-9-]{1,128}$/;

export function parseKmsKey(raw: unknown): string | null {
  if (raw === undefined || raw === '') return null;
  const arn = asString('kmsKey', raw);
  if (!KMS_KEY_ARN_RE.test(arn)) {
    throw new InfraConfigError('kmsKey', `expected a KMS key ARN (arn:aws:kms:<region>:<account>:key/<id>), got "${arn}"`);
  }
  return arn;
}

/**
 * `retention` as JSON (`{"keepDaily":7,"hosts":{"pve1":{"keepLast":3}}}`), as
 * a `k=v` list (`keepLast=3,keepDaily=14`) or as an object in cdk.json.
 * Not set = an empty policy, which keeps everything: deleting backups is
 * opt-in.
 */
export function parseRetention(raw: unknown): RetentionConfig {
  if (raw === undefined || raw === '') return {};
  let value: unknown = raw;
  if (typeof raw === 'string') {
    const text = raw.trim();
    if (text.startsWith('{')) {
      try {
        value = JSON.parse(text);
      } catch (err) {
        throw new InfraConfigError('retention', `not valid JSON: ${(err as Error).message}`, { cause: err });
      }
    } else {
      const obj: Record<string, number> = {};
      for (const part of text.split(',')) {
        const m = /^\s*([A-Za-z]+)\s*=\s*(\d+)\s*$/.exec(part);
        if (!m) throw new InfraConfigError('retention', `expected JSON or k=v pairs like keepLast=7,keepDaily=14, got "${part}"`);
        obj[m[1]!] = Number(m[2]);
      }
      value = obj;
    }
  }
  const parsed = retentionConfigSchema.safeParse(value);
  if (!parsed.success) throw new InfraConfigError('retention', formatZodIssues(parsed.error.issues));
  return parsed.data;
}

export function parseAlarmEmail(raw: unknown): string | null {
  if (raw === undefined || raw === '') return null;
  const email = asString('alarmEmail', raw);
  const parsed = z.email().safeParse(email);
  if (!parsed.success) throw new InfraConfigError('alarmEmail', `expected an e-mail address, got "${email}"`);
  return email;
}

function parseStackName(raw: unknown): string {
  if (raw === undefined) return 'Cowstream';
  const name = asString('stackName', raw);
  // CloudFormation stack names: letters, digits, hyphens, starting with a letter, max 128.
  if (!/^[A-Za-z][A-Za-z0-9-]{0,127}$/.test(name)) {
    throw new InfraConfigError('stackName', `expected [A-Za-z][A-Za-z0-9-]{0,127}, got "${name}"`);
  }
  return name;
}

function parseByteBudget(raw: unknown): number {
  if (raw === undefined) return DEFAULT_VERIFY_BYTE_BUDGET;
  const text = typeof raw === 'number' ? String(raw) : asString('verifyByteBudget', raw);
  let n: number;
  try {
    n = parseSize(text, 'verifyByteBudget');
  } catch (err) {
    throw new InfraConfigError('verifyByteBudget', `expected a size like 10G, got "${text}"`, { cause: err });
  }
  if (n < 1) throw new InfraConfigError('verifyByteBudget', 'must be at least 1 byte');
  return n;
}

/** Validates every context key; throws InfraConfigError on the first bad one. */
export function parseCowstreamConfig(get: ContextGetter): CowstreamConfig {
  return {
    stackName: parseStackName(get('stackName')),
    hosts: parseHosts(get('hosts')),
    objectLock: parseObjectLock(get('objectLock')),
    kmsKeyArn: parseKmsKey(get('kmsKey')),
    retention: parseRetention(get('retention')),
    pruneDryRun: parseBoolean('pruneDryRun', get('pruneDryRun'), false),
    alarmEmail: parseAlarmEmail(get('alarmEmail')),
    freshnessHours: parseIntInRange('freshnessHours', get('freshnessHours'), DEFAULT_FRESHNESS_HOURS, 1, 24 * 90),
    verifyByteBudget: parseByteBudget(get('verifyByteBudget')),
  };
}

/** Test/programmatic helper: a config from a plain object of context values. */
export function configFromContext(ctx: Record<string, unknown>): CowstreamConfig {
  return parseCowstreamConfig((k) => ctx[k]);
}
