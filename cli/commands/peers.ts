import type { Command } from 'commander'
import type { PeerView } from '../../federation/index.ts'
import { clientFor } from '../input.ts'
import { type GlobalOptions, report } from '../output.ts'

const client = (command: Command) => clientFor(command.optsWithGlobals<GlobalOptions>())

export function peerLine(peer: PeerView): string {
  const rtt = peer.rttMs === null ? '' : ` ${peer.rttMs} ms`
  const pending = peer.keySuccessionPending ? '  (not yet told of this node’s new key)' : ''
  return `${peer.alias.padEnd(16)} ${peer.state.padEnd(12)}${rtt.padEnd(8)} ${peer.org}  ${peer.peerId}${pending}`
}

export function registerPeers(program: Command): void {
  const peers = program
    .command('peers')
    .description('the organisations this node peers with (only these may connect)')

  peers
    .command('add')
    .argument('<card>', "the partner's node card (the line `oe-node card` prints there)")
    .requiredOption(
      '--alias <name>',
      'short name for the peer: lower case, digits and dashes (used in oe.peer.<alias>.…)',
    )
    .description('add a peer from its card; the node connects to it and accepts its connections')
    .addHelpText('after', '\nExample:\n  oe-node peers add oe1uQAFYXYBY29yZ2ZHcmlkY29… --alias gridco')
    .action(async (card: string, options: { alias: string }, command: Command) => {
      const globals = command.optsWithGlobals<GlobalOptions>()
      const response = await (await client(command)).request('POST', '/v1/peers', {
        body: JSON.stringify({ card, alias: options.alias }),
        contentType: 'application/json',
      })
      const peer = (await response.json()) as PeerView
      report(globals, peer, (p) => [
        `added ${p.alias} (${p.org}, ${p.peerId})`,
        `  addresses ${p.addrs.join(' ')}`,
      ])
    })

  peers
    .command('list')
    .description('peers with their connection state, round-trip time and last contact')
    .addHelpText('after', '\nExamples:\n  oe-node peers list\n  oe-node peers list --json')
    .action(async (_options: unknown, command: Command) => {
      const globals = command.optsWithGlobals<GlobalOptions>()
      const list = await (await client(command)).getJson<PeerView[]>('/v1/peers')
      report(globals, list, (items) =>
        items.length === 0 ? ['no peers yet (oe-node peers add <card> --alias NAME)'] : items.map(peerLine),
      )
    })

  peers
    .command('remove')
    .argument('<alias>', 'the peer to remove')
    .description('remove a peer: it is disconnected at once and may no longer connect')
    .action(async (alias: string, _options: unknown, command: Command) => {
      const globals = command.optsWithGlobals<GlobalOptions>()
      await (await client(command)).request('DELETE', `/v1/peers/${encodeURIComponent(alias)}`)
      report(globals, { removed: alias }, (value) => [`removed ${value.removed}`])
    })
}
