export * from './server.js';
export * from './types.js';
export * from './errors.js';
export * from './address.js';
