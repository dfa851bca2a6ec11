/** Where the CLI finds the agent's control socket: --agent, else $COWSTREAM_AGENT_SOCKET, else the default. */
export const DEFAULT_AGENT_SOCKET = '/var/lib/cowstream/agent.sock';

export function agentSocket(flag: string | undefined): string {
  return flag ?? process.env.COWSTREAM_AGENT_SOCKET ?? DEFAULT_AGENT_SOCKET;
}
