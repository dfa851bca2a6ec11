import type { Command } from 'commander';

/** Placeholder until this command group lands; registers nothing. */
export function registerKeyCommands(_program: Command): void {}
