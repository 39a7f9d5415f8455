import type { Command } from 'commander'
import type { NodeStatus } from '../../node/index.ts'
import { clientFor } from '../input.ts'
import { formatDuration, type GlobalOptions, report } from '../output.ts'
// Not components.tsx: that would load ink for every status call.
import { plainText, pluginDetailBody, pluginSummary } from '../ui/plugin-detail.ts'
import { replicaStatusLines } from '../ui/replicas.ts'

/** Plugins whose status has a detailed view in plain text too (the others get one line). */
const DETAILED = new Set(['openadr-vtn', 'openadr-ven'])

/** The plugin lines of `status`: one per plugin, and the detail of those that have one. */
export function pluginStatusLines(status: NodeStatus, now: number, width = 100): string[] {
  const lines: string[] = []
  for (const plugin of status.plugins) {
    const state = plugin.state === 'running' && !plugin.ready ? 'starting' : plugin.state
    const summary = plugin.error ? `error: ${plugin.error}` : pluginSummary(plugin)
    lines.push(`  ${plugin.id.padEnd(12)} ${state}${summary ? ` · ${summary}` : ''}`)
    if (DETAILED.has(plugin.id))
      lines.push(
        ...plainText(pluginDetailBody(plugin, now, width - 4).slice(1), width - 4).map((text) =>
          text === '' ? '' : `  ${text}`,
        ),
      )
  }
  return lines
}

export function registerStatus(program: Command): void {
  program
    .command('status')
    .description(
      'show the running node: identity, uptime, API, NATS, replicas and leases, peers, agreements and plugins',
    )
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
        ...(s.noiseCrypto ? [`noise       ChaCha20-Poly1305 by ${s.noiseCrypto}`] : []),
        `nats        ${s.nats.url} (${s.nats.embedded ? 'embedded' : 'external'}, ${s.nats.connected ? 'connected' : 'DISCONNECTED'}${s.nats.serverVersion ? `, v${s.nats.serverVersion}` : ''})`,
        ...replicaStatusLines(s),
        `peers       ${s.peers.length}`,
        `agreements  ${s.agreements.length}`,
        `plugins     ${s.plugins.length}`,
        ...pluginStatusLines(s, Date.now()),
        `data dir    ${s.dataDir}`,
      ])
    })
}
