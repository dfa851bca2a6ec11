/** The agent's name for the shared formatter (src/zod-issues.ts). */
export { firstIssuePath, formatZodIssues } from '../zod-issues.js';
