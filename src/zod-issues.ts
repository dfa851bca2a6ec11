import type { z } from 'zod';

/**
 * The one zod issue formatter (agent config, control API, catalogue API,
 * CDK context, restore plans). Renders issues as one line that always names the offending field
 * path (e.g. `disks[1].name: ...`), because config and
 * API errors must name the bad field.
 */
export function formatZodIssues(issues: readonly z.core.$ZodIssue[], root = ''): string {
  return issues
    .slice(0, 5)
    .map((issue) => {
      let path = formatPath(issue.path, root);
      let message = issue.message;
      if (issue.code === 'unrecognized_keys') {
        const keys = (issue as { keys?: string[] }).keys ?? [];
        const parent = path;
        path = keys.map((k) => (parent ? `${parent}.${k}` : k)).join(', ');
        message = 'unknown field';
      }
      return `${path || '(root)'}: ${message}`;
    })
    .join('; ');
}

/** The path of the first issue, e.g. `disks[0].path`, for machine-readable errors. */
export function firstIssuePath(issues: readonly z.core.$ZodIssue[], root = ''): string {
  const first = issues[0];
  if (!first) return root || '(root)';
  if (first.code === 'unrecognized_keys') {
    const keys = (first as { keys?: string[] }).keys ?? [];
    const parent = formatPath(first.path, root);
    return (keys[0] !== undefined ? (parent ? `${parent}.${keys[0]}` : keys[0]) : parent) || '(root)';
  }
  return formatPath(first.path, root) || '(root)';
}

function formatPath(path: readonly PropertyKey[], root: string): string {
  let out = root;
  for (const seg of path) {
    if (typeof seg === 'number') out += `[${seg}]`;
    else out += out ? `.${String(seg)}` : String(seg);
  }
  return out;
}
