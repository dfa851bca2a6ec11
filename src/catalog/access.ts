/**
 * Who is calling the catalogue API, and what they may do (docs/security.md,
 * "Catalogue: who may do what").
 *
 * In AWS every route requires IAM (SigV4) authorization, and API Gateway
 * passes the verified identity in `requestContext.authorizer.iam`. The
 * stack creates one role per host and one operator role; their role ids
 * (the `AROA…` part of `userId`, unique and never reused, unlike names)
 * come in CALLER_ROLES. A host role acts only on its own host's jobs; the
 * operator role reads everything, requests and cancels restores and deletes
 * archives, but claims no jobs. Anything else is refused: unknown callers
 * get 403 even if some policy let them invoke the API.
 *
 * The embedded catalogue has no IAM: its caller is `LOCAL_CALLER`, which
 * may do everything (the embedded server is closed to other local users by
 * its own authentication layer).
 */
import { z } from 'zod';
import { CatalogError, ForbiddenError } from '../errors.js';
import type { APIGatewayProxyEventV2 as ApiEvent } from 'aws-lambda';
import { hostIdSchema } from './records.js';

export interface Caller {
  /** Shown in 403 messages and logs. */
  readonly name: string;
  /** May read everything, create and cancel restores, delete archives. */
  readonly operator: boolean;
  /** The host whose jobs this caller runs: a host id, '*' for all (embedded), null for none. */
  readonly host: string | null;
}

/** The embedded catalogue's only caller. */
export const LOCAL_CALLER: Caller = { name: 'local', operator: true, host: '*' };

export type CallerResolver = (event: ApiEvent) => Caller;

/** CALLER_ROLES, as the stack writes it (role ids are CloudFormation tokens there). */
export const callerRolesSchema = z
  .object({
    operators: z.array(z.string().min(1)),
    hosts: z.array(z.object({ roleId: z.string().min(1), hostId: hostIdSchema }).strict()),
  })
  .strict();
export type CallerRoles = z.infer<typeof callerRolesSchema>;

export function parseCallerRoles(json: string | undefined): CallerRoles {
  if (json === undefined || json === '') throw new CatalogError('CALLER_ROLES is not set: the API cannot tell hosts from operators and refuses to run');
  let raw: unknown;
  try {
    raw = JSON.parse(json);
  } catch (err) {
    throw new CatalogError('CALLER_ROLES is not valid JSON', { cause: err });
  }
  const r = callerRolesSchema.safeParse(raw);
  if (!r.success) throw new CatalogError(`CALLER_ROLES is invalid: ${r.error.issues[0]?.message}`);
  return r.data;
}

/**
 * Resolves the IAM caller of an API Gateway event. `userId` is
 * `<roleId>:<session>` for an assumed role; only the role id counts (the
 * session name is chosen by the caller).
 */
export function iamCallerResolver(roles: CallerRoles): CallerResolver {
  const operators = new Set(roles.operators);
  const hosts = new Map(roles.hosts.map((h) => [h.roleId, h.hostId]));
  return (event) => {
    const iam = (event.requestContext as { authorizer?: { iam?: { userId?: string; userArn?: string } } }).authorizer?.iam;
    const userId = iam?.userId ?? '';
    const roleId = userId.split(':')[0] ?? '';
    const name = iam?.userArn ?? (userId || 'an unauthenticated caller');
    if (roleId !== '' && operators.has(roleId)) return { name, operator: true, host: null };
    const host = roleId !== '' ? hosts.get(roleId) : undefined;
    if (host !== undefined) return { name, operator: false, host };
    throw new ForbiddenError(`${name} is neither a host role nor the operator role of this catalogue`);
  };
}

export function requireOperator(caller: Caller, what: string): void {
  if (!caller.operator) throw new ForbiddenError(`${caller.name} may not ${what}: operator role only`);
}

/** Job operations: only the job's own host (or the embedded caller). */
export function requireHost(caller: Caller, hostId: string, what: string): void {
  if (caller.host === '*' || caller.host === hostId) return;
  throw new ForbiddenError(`${caller.name} may not ${what} of host ${hostId}`);
}

/** Host-scoped reads: the operator, or that host. */
export function requireReader(caller: Caller, hostId: string, what: string): void {
  if (caller.operator) return;
  requireHost(caller, hostId, what);
}
