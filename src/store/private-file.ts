/**
 * Secrets on disk (credentials, tokens): files only their owner can read.
 * Written 0600 with O_EXCL so no other user can open them at any instant;
 * read only when they are regular files owned by the current user and not
 * readable or writable by group or others (the rule ssh applies to keys).
 */
import { constants } from 'node:fs';
import { link, open, unlink } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { randomBytes } from 'node:crypto';
import type { z } from 'zod';
import { ConfigError } from '../errors.js';
import { writeSyncedNewFile } from '../device/durable.js';
import { privateStatProblem } from '../device/private-open.js';

/** A secret file that exists but may not be trusted (owner, mode, type). */
export class InsecureFileError extends ConfigError {
  override readonly code: string = 'INSECURE_FILE';
}

/** Largest secret file we read: credentials are a few hundred bytes. */
const MAX_SECRET_FILE_BYTES = 64 * 1024;

/**
 * Reads a secret file, refusing symlinks, non-regular files, files owned by
 * another user and files with any group/other permission bit. The checks use
 * the opened descriptor (fstat), so the file cannot be swapped in between.
 */
export async function readPrivateFile(path: string): Promise<Buffer> {
  const fh = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  try {
    const st = await fh.stat();
    const problem = privateStatProblem(path, st);
    if (problem) throw new InsecureFileError(problem);
    if (st.size > MAX_SECRET_FILE_BYTES) throw new InsecureFileError(`${path} is ${st.size} bytes, larger than any secret cowstream writes`);
    return await fh.readFile();
  } finally {
    await fh.close();
  }
}

/**
 * Publishes `data` at `path` only if nothing is there yet: written to a
 * temporary 0600 file (O_EXCL) beside it, synced, then hard-linked into
 * place, so readers see either no file or the whole content. Returns false
 * when `path` already existed (another process won the race).
 */
export async function createPrivateFileExclusive(path: string, data: string | Buffer): Promise<boolean> {
  const tmp = join(dirname(path), `.${randomBytes(8).toString('hex')}.tmp`);
  try {
    await writeSyncedNewFile(tmp, data, 0o600);
    try {
      await link(tmp, path);
      return true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false;
      throw err;
    }
  } finally {
    await unlink(tmp).catch(() => undefined);
  }
}

/**
 * Parses the text of a private file as JSON and validates it; `what` names
 * the content in the error ("embedded credentials", "agent endpoints").
 */
export function parsePrivateJson<T>(path: string, text: Buffer, schema: z.ZodType<T>, what: string): T {
  let json: unknown;
  try {
    json = JSON.parse(text.toString('utf8'));
  } catch (err) {
    throw new ConfigError(`${path} is not valid JSON`, { cause: err });
  }
  const parsed = schema.safeParse(json);
  if (!parsed.success) throw new ConfigError(`${path} does not hold ${what}: ${parsed.error.issues[0]?.message ?? 'invalid'}`);
  return parsed.data;
}
