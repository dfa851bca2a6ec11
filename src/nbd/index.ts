export * from './server.js';
export * from './types.js';
export * from './errors.js';
export { loadPskFile, type NbdTlsOptions } from './tls.js';
export { SocketInUseError, SocketPathError } from './unix-socket.js';
