import type { Command } from 'commander';

/** Placeholder until this command group lands; registers nothing. */
export function registerAgentCommands(_program: Command): void {}
