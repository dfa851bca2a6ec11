#!/usr/bin/env node
// Runs the TypeScript CLI through tsx so `npm ci` is enough (no build step).
import { register } from 'tsx/esm/api';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';

register();
const here = dirname(fileURLToPath(import.meta.url));
const { main } = await import(join(here, '..', 'src', 'cli', 'main.ts'));
await main(process.argv);
