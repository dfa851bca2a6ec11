/**
 * Unix sockets that no other user can connect to, at any instant.
 *
 * Connecting to a Unix socket needs write permission on its file. listen()
 * creates the file with mode 0777 & ~umask, and a chmod afterwards leaves a
 * window in which any user may connect (and keep the connection). So the
 * socket is bound with umask 0177 (mode 0600 from its first instant), and
 * only then widened to the configured mode and group, if any.
 */
import { createConnection, type Server } from 'node:net';
import { chmod, chown, lstat, rm } from 'node:fs/promises';
import { ConfigError, ConflictError, describeError } from '../errors.js';

/** A socket path we must not (or cannot) use: not a socket, or its mode/owner cannot be set. */
export class SocketPathError extends ConfigError {
  override readonly code: string = 'SOCKET_PATH';
}

/** Another live process answers on the socket path. */
export class SocketInUseError extends ConflictError {}

export interface PrivateSocketOptions {
  /** Final permission bits (default 0o600); never wider than 0o770: other users never connect. */
  mode?: number;
  /** Group that may connect (with mode 0o660), as a gid. */
  gid?: number;
}

/**
 * Binds `server` to `path` so that only the owner can connect until the
 * socket has its final mode and group. A stale socket left by a dead process
 * is replaced; a live one, or a file that is not a socket, is an error.
 */
export async function listenPrivateSocket(server: Server, path: string, opts: PrivateSocketOptions = {}): Promise<void> {
  const mode = opts.mode ?? 0o600;
  if ((mode & ~0o770) !== 0) throw new SocketPathError(`socket mode ${mode.toString(8)} would let other users connect (allowed: up to 0770)`);
  await removeStaleSocket(path);
  await new Promise<void>((resolve, reject) => {
    const onError = (err: Error): void => reject(err);
    server.once('error', onError);
    // bind(2) happens synchronously inside listen(); the umask must cover it
    // and nothing else, so restore it in the same tick.
    const old = process.umask(0o177);
    try {
      server.listen(path, () => {
        server.off('error', onError);
        resolve();
      });
    } finally {
      process.umask(old);
    }
  });
  try {
    // Group first, then the wider mode: never group-accessible with the wrong group.
    if (opts.gid !== undefined) await chown(path, process.getuid?.() ?? -1, opts.gid);
    if (mode !== 0o600) await chmod(path, mode);
  } catch (err) {
    await new Promise<void>((r) => server.close(() => r()));
    await rm(path, { force: true });
    throw new SocketPathError(`cannot set owner/mode of socket ${path}: ${describeError(err)}`, { cause: err });
  }
}

/**
 * A socket file left by a crashed process makes listen() fail with
 * EADDRINUSE. Remove it only if it is a socket nobody answers on; never
 * delete a live server's socket or a file that is not a socket.
 */
export async function removeStaleSocket(path: string): Promise<void> {
  let st;
  try {
    st = await lstat(path);
  } catch {
    return; // does not exist
  }
  if (!st.isSocket()) throw new SocketPathError(`${path} exists and is not a socket`);
  const alive = await new Promise<boolean>((resolve) => {
    const c = createConnection({ path });
    c.once('connect', () => {
      c.destroy();
      resolve(true);
    });
    c.once('error', () => resolve(false));
  });
  if (alive) throw new SocketInUseError(`${path} is in use by a running server`);
  await rm(path, { force: true });
}
