import type { Command } from 'commander'
import type { NodeStatus } from '../../node/index.ts'
import { clientFor } from '../input.ts'
import { formatDuration, type GlobalOptions, report } from '../output.ts'

export function registerStatus(program: Command): void {
  program
    .command('status')
    .description('show the running node: identity, uptime, API, NATS, peers, agreements and plugins')
    .addHelpText('after', '\nExamples:\n  oe-node status\n  oe-node status --json | jq .nats')
    .action(async (_options: unknown, command: Command) => {
      const globals = command.optsWithGlobals<GlobalOptions>()
      const client = await clientFor(globals)
      const status = await client.getJson<NodeStatus>('/v1/status')
      report(globals, status, (s) => [
        `org         ${s.org}`,
        `peer id     ${s.peerId}`,
        `uptime      ${formatDuration(s.uptimeS)}`,
        `api         ${s.api}`,
        `listen      ${s.listen.join(' ')}`,
        `nats        ${s.nats.url} (${s.nats.embedded ? 'embedded' : 'external'}, ${s.nats.connected ? 'connected' : 'DISCONNECTED'}${s.nats.serverVersion ? `, v${s.nats.serverVersion}` : ''})`,
        `peers       ${s.peers.length}`,
        `agreements  ${s.agreements.length}`,
        `plugins     ${s.plugins.length}`,
        `data dir    ${s.dataDir}`,
      ])
    })
}
