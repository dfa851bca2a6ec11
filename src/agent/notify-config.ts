/**
 * The agent config's `notifications` section (docs/notifications.md): webhooks
 * and command hooks told about failed (and, with `onSuccess`, succeeded)
 * backups, restores and retention runs, and about disks whose last good
 * backup is older than `staleAfter`.
 */
import { accessSync, constants as fsc, statSync } from 'node:fs';
import { z } from 'zod';
import { parseDuration } from '../units.js';
import { describeError } from '../errors.js';

export const NOTIFY_EVENTS = [
  'backup.failed',
  'backup.succeeded',
  'restore.failed',
  'restore.succeeded',
  'retention.failed',
  'retention.succeeded',
  'disk.stale',
] as const;
export type NotifyEvent = (typeof NOTIFY_EVENTS)[number];

const SUCCESS_EVENTS: readonly NotifyEvent[] = ['backup.succeeded', 'restore.succeeded', 'retention.succeeded'];

export const DEFAULT_WEBHOOK_TIMEOUT_MS = 10_000;
export const DEFAULT_WEBHOOK_RETRIES = 5;
export const DEFAULT_COMMAND_TIMEOUT_MS = 30_000;
/** Pending notifications per hook; the oldest is dropped (and logged) beyond it. */
export const DEFAULT_QUEUE_SIZE = 100;

/** RFC 9110 field-name token. */
const HEADER_NAME = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
/** Framing and identity headers are the agent's: a config must not be able to break the request. */
const RESERVED_HEADERS = new Set(['host', 'content-length', 'content-type', 'transfer-encoding', 'connection', 'te', 'upgrade', 'expect']);

const eventsField = z.array(z.enum(NOTIFY_EVENTS)).min(1, 'list at least one event, or leave "events" out').optional();

const durationField = z.string().transform((text, ctx): number => {
  try {
    return parseDuration(text, 'duration');
  } catch (err) {
    ctx.addIssue({ code: 'custom', message: describeError(err) });
    return z.NEVER;
  }
});

const webhookSchema = z
  .strictObject({
    url: z
      .string()
      .url()
      .refine((u) => /^https?:$/.test(new URL(u).protocol), 'url must be http:// or https://')
      // Credentials in the URL would end up in logs and process listings.
      .refine((u) => new URL(u).username === '' && new URL(u).password === '', 'url must not contain a user or password; use bearerTokenFile or headers'),
    events: eventsField,
    headers: z
      .record(
        z.string(),
        // CR or LF would let a value inject headers; NUL and other controls are refused by HTTP, and so
        // is anything beyond Latin-1 (node:http throws ERR_INVALID_CHAR at send time).
        z.string().max(8192).regex(/^[\t\x20-\x7e\x80-\xff]*$/, 'header value must not contain control characters (CR, LF, NUL) or characters beyond Latin-1'),
      )
      .optional(),
    /** File holding a bearer token (0600, owned by the agent's user); sent as `Authorization: Bearer …`. */
    bearerTokenFile: z.string().min(1).optional(),
    timeoutMs: z.number().int().min(100).max(300_000).optional(),
    retries: z.number().int().min(0).max(20).optional(),
  })
  .superRefine((w, ctx) => {
    // Names are checked here, not in the record's key schema, so the message says what is wrong with the name.
    for (const h of Object.keys(w.headers ?? {})) {
      if (!HEADER_NAME.test(h)) ctx.addIssue({ code: 'custom', path: ['headers', h], message: 'header name must be an HTTP token' });
      else if (RESERVED_HEADERS.has(h.toLowerCase())) ctx.addIssue({ code: 'custom', path: ['headers', h], message: 'this header is set by the agent' });
    }
    const auth = Object.keys(w.headers ?? {}).find((h) => h.toLowerCase() === 'authorization');
    if (auth !== undefined && w.bearerTokenFile !== undefined) ctx.addIssue({ code: 'custom', path: ['headers', auth], message: 'Authorization is set from bearerTokenFile; give one or the other' });
  });

const commandSchema = z.strictObject({
  /** Program and arguments, run without a shell: nothing in them or in the event is interpreted. */
  argv: z
    .array(z.string().min(1, 'argv entries must not be empty').max(4096).refine((a) => !a.includes('\0'), 'argv entries must not contain NUL'))
    .min(1, 'argv needs at least the program')
    .max(256),
  events: eventsField,
  timeoutMs: z.number().int().min(100).max(3_600_000).optional(),
});

export const notificationsSchema = z
  .strictObject({
    webhooks: z.array(webhookSchema).max(16, 'at most 16 webhooks').optional(),
    commands: z.array(commandSchema).max(16, 'at most 16 commands').optional(),
    /** Also send backup.succeeded, restore.succeeded and retention.succeeded (default false). */
    onSuccess: z.boolean().optional(),
    /** Send disk.stale when a disk's last good backup is older than this (e.g. "26h", "2d"). */
    staleAfter: durationField.refine((ms) => ms >= 1000, 'staleAfter must be at least 1s').optional(),
    queueSize: z.number().int().min(1).max(10_000).optional(),
  })
  .superRefine((n, ctx) => {
    const check = (kind: 'webhooks' | 'commands', i: number, events: readonly NotifyEvent[] | undefined): void => {
      events?.forEach((e, j) => {
        if (SUCCESS_EVENTS.includes(e) && n.onSuccess !== true) ctx.addIssue({ code: 'custom', path: [kind, i, 'events', j], message: `${e} is sent only with notifications.onSuccess: true` });
        if (e === 'disk.stale' && n.staleAfter === undefined) ctx.addIssue({ code: 'custom', path: [kind, i, 'events', j], message: 'disk.stale is sent only with notifications.staleAfter' });
      });
    };
    n.webhooks?.forEach((w, i) => check('webhooks', i, w.events));
    n.commands?.forEach((c, i) => check('commands', i, c.events));
  });

export type NotificationsInput = z.output<typeof notificationsSchema>;

export interface WebhookConfig {
  url: string;
  events: NotifyEvent[];
  headers: Record<string, string>;
  /** Absolute path. */
  bearerTokenFile?: string;
  timeoutMs: number;
  /** Attempts after the first. */
  retries: number;
}

export interface CommandHookConfig {
  /** argv[0] is an absolute path. */
  argv: string[];
  events: NotifyEvent[];
  timeoutMs: number;
}

export interface NotificationsConfig {
  webhooks: WebhookConfig[];
  commands: CommandHookConfig[];
  /** Milliseconds; undefined = no staleness check. */
  staleAfterMs?: number;
  queueSize: number;
}

/** A problem found after the schema passed: the field path and the message. */
export class NotifyConfigIssue extends Error {
  constructor(
    readonly field: string,
    message: string,
  ) {
    super(message);
  }
}

/** Hosts a plain-http webhook may use without a warning: the token and payload never leave the machine. */
function isLoopback(hostname: string): boolean {
  const h = hostname.replace(/^\[|\]$/g, '').toLowerCase();
  return h === 'localhost' || h === '::1' || /^127\.\d+\.\d+\.\d+$/.test(h);
}

/**
 * Resolves paths against the config directory (`abs`), fills defaults and
 * checks what the schema cannot: each command's program exists and is
 * executable. Warnings (plain http off the machine, nothing to send to) go to
 * `warnings`. Throws NotifyConfigIssue naming the field.
 */
export function resolveNotifications(raw: NotificationsInput, abs: (p: string) => string, warnings: string[]): NotificationsConfig {
  const defaults: NotifyEvent[] = NOTIFY_EVENTS.filter((e) => (SUCCESS_EVENTS.includes(e) ? raw.onSuccess === true : e === 'disk.stale' ? raw.staleAfter !== undefined : true));
  const webhooks = (raw.webhooks ?? []).map((w, i): WebhookConfig => {
    const url = new URL(w.url);
    if (url.protocol === 'http:' && !isLoopback(url.hostname)) {
      warnings.push(`notifications.webhooks[${i}].url: plain http to ${url.host}: the payload${w.bearerTokenFile || w.headers ? ' and its credentials' : ''} cross the network unencrypted; use https`);
    }
    return {
      url: w.url,
      events: w.events ?? defaults,
      headers: w.headers ?? {},
      ...(w.bearerTokenFile !== undefined ? { bearerTokenFile: abs(w.bearerTokenFile) } : {}),
      timeoutMs: w.timeoutMs ?? DEFAULT_WEBHOOK_TIMEOUT_MS,
      retries: w.retries ?? DEFAULT_WEBHOOK_RETRIES,
    };
  });
  const commands = (raw.commands ?? []).map((c, i): CommandHookConfig => {
    const field = `notifications.commands[${i}].argv[0]`;
    const prog = c.argv[0]!;
    // No PATH lookup: the program is the file the config names, whatever the agent's environment says.
    if (!prog.includes('/')) throw new NotifyConfigIssue(field, `${field}: "${prog}" must be a path (absolute, or relative to the config file); commands run without a shell or PATH lookup`);
    const path = abs(prog);
    try {
      if (!statSync(path).isFile()) throw new Error('not a regular file');
      accessSync(path, fsc.X_OK);
    } catch (err) {
      throw new NotifyConfigIssue(field, `${field}: "${path}" is not an executable file: ${describeError(err)}`);
    }
    return { argv: [path, ...c.argv.slice(1)], events: c.events ?? defaults, timeoutMs: c.timeoutMs ?? DEFAULT_COMMAND_TIMEOUT_MS };
  });
  if (webhooks.length + commands.length === 0) warnings.push('notifications: no webhooks or commands are configured; nothing will be sent');
  return {
    webhooks,
    commands,
    ...(raw.staleAfter !== undefined ? { staleAfterMs: raw.staleAfter } : {}),
    queueSize: raw.queueSize ?? DEFAULT_QUEUE_SIZE,
  };
}
