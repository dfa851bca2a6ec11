/**
 * cdk/app.ts as the CDK CLI runs it: context in CDK_CONTEXT_JSON, output
 * directory in CDK_OUTDIR, no AWS credentials (one child process), and its
 * error path in-process. Bundling is skipped (CDK's
 * own `aws:cdk:bundling-stacks: []`) — stack.test.ts covers the bundles.
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { App } from 'aws-cdk-lib';
import { afterAll, describe, expect, it } from 'vitest';
import { synthesizeForCli } from '../../../infra/app.js';
import { REPO_ROOT } from '../../../infra/catalog-functions.js';
import { cdkJsonContext } from './synth-helper.js';

const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

function runApp(context: Record<string, unknown>): Promise<{ code: number | null; stderr: string; outdir: string }> {
  const outdir = mkdtempSync(join(tmpdir(), 'cowstream-cdk-app-'));
  dirs.push(outdir);
  const env: NodeJS.ProcessEnv = { ...process.env, CDK_OUTDIR: outdir, CDK_CONTEXT_JSON: JSON.stringify(context), CDK_VALIDATION: 'false' };
  for (const k of Object.keys(env)) if (k.startsWith('AWS_') && k !== 'AWS_CA_BUNDLE') delete env[k];
  delete env.CDK_DEFAULT_ACCOUNT;
  delete env.CDK_DEFAULT_REGION;
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [join(REPO_ROOT, 'node_modules', 'tsx', 'dist', 'cli.mjs'), join(REPO_ROOT, 'cdk', 'app.ts')], {
      cwd: REPO_ROOT,
      env,
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), 90_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stderr, outdir });
    });
  });
}

describe('cdk/app.ts', () => {
  it('fails with exit 2 and one clear line on bad context', () => {
    let stderr = '';
    const app = new App({ context: { ...cdkJsonContext(), objectLock: 'forever' } });
    const code = synthesizeForCli(app, { write: (t: string | Uint8Array) => ((stderr += String(t)), true) });
    expect(code).toBe(2);
    expect(stderr).toBe('cowstream: invalid context "objectLock": expected off, governance:<days> or compliance:<days>, got "forever"\n');
  });

  it('synthesizes offline, env-agnostic, with the nag plugin passing', async () => {
    const r = await runApp({ ...cdkJsonContext(), hosts: 'pve1,pve2', 'aws:cdk:bundling-stacks': [] });
    expect(r.stderr).not.toMatch(/AwsSolutions|Validation failed/);
    expect(r.code).toBe(0);
    const templatePath = join(r.outdir, 'Cowstream.template.json');
    expect(existsSync(templatePath)).toBe(true);
    const manifest = JSON.parse(readFileSync(join(r.outdir, 'manifest.json'), 'utf8')) as {
      artifacts: Record<string, { type: string; environment?: string }>;
    };
    expect(manifest.artifacts.Cowstream!.environment).toBe('aws://unknown-account/unknown-region');
    const outputs = (JSON.parse(readFileSync(templatePath, 'utf8')) as { Outputs: Record<string, unknown> }).Outputs;
    expect(Object.keys(outputs)).toEqual(expect.arrayContaining(['BucketName', 'ApiUrl', 'AgentRoleArnpve1', 'AgentRoleArnpve2']));
  });
});
