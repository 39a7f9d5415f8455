/**
 * `oe-node key rotate`: give the running node a new key. The node signs a succession statement
 * with the old key and the new one, sends it to every peer, hands its audit log to the new key,
 * keeps the old key file as `keys/node.key.<time>.retired`, and restarts its libp2p host with the
 * new identity. Agreements stay active; peers accept the old key until the grace ends.
 */
import type { Command } from 'commander'
import { type KeyRotationResult, NodeNotRunningError, parseDuration } from '../../node/index.ts'
import { UsageError } from '../errors.ts'
import { clientFor } from '../input.ts'
import { formatDuration, type GlobalOptions, report } from '../output.ts'

const MAX_GRACE_MS = 30 * 86_400_000

/** `--grace`: a duration (`24h`, `90m`, `30s`, `7d`) or whole seconds; 0 refuses the old key at once. */
export function parseGrace(text: string): number {
  const ms = /^\s*\d+\s*$/.test(text) ? Number(text) * 1000 : parseDuration(text)
  if (ms === undefined || !Number.isSafeInteger(ms) || ms < 0 || ms > MAX_GRACE_MS)
    throw new UsageError(`--grace '${text}' is not a duration from 0 to 30d (e.g. 0, 90s, 24h, 7d)`)
  return ms
}

function plain(result: KeyRotationResult): string[] {
  const lines = [
    `rotated the key of ${result.org}`,
    `old peer id ${result.from.peerId}`,
    `new peer id ${result.to.peerId}`,
    result.graceSeconds > 0
      ? `peers accept the old key until ${result.oldKeyAcceptedUntil} (${formatDuration(result.graceSeconds)})`
      : 'peers refuse the old key from now on',
    `old key   kept in ${result.retiredKeyFile} (mode 0600); delete it once every peer has the new key`,
  ]
  if (result.notified.length > 0) lines.push(`told      ${result.notified.join(', ')}`)
  if (result.pending.length > 0)
    lines.push(`pending   ${result.pending.join(', ')} (not connected: told when next reachable)`)
  lines.push('the node card changed: oe-node card prints the new one (peers need not add it again)')
  return lines
}

export function registerKey(program: Command): void {
  const key = program.command('key').description("the node's identity key")
  key
    .command('rotate')
    .description(
      'replace the node key: peers are told (statement signed by the old and the new key) and keep every agreement',
    )
    .option('--grace <duration>', 'how long peers still accept the old key (0: refused at once)', '24h')
    .addHelpText(
      'after',
      '\nThe node must be running: it tells its peers. Each replica of the node needs the new keys/node.key copied to it.\n' +
        '\nExamples:\n  oe-node key rotate\n  oe-node key rotate --grace 0 --json',
    )
    .action(async (options: { grace: string }, command: Command) => {
      const globals = command.optsWithGlobals<GlobalOptions>()
      const graceMs = parseGrace(options.grace)
      let client: Awaited<ReturnType<typeof clientFor>>
      try {
        client = await clientFor(globals)
      } catch (error) {
        if (!(error instanceof NodeNotRunningError)) throw error
        throw new NodeNotRunningError(
          `key rotation needs the running node, which tells its peers: ${error.message}, then run oe-node key rotate again`,
        )
      }
      const response = await client.request('POST', '/v1/key/rotate', {
        body: JSON.stringify({ graceMs }),
        contentType: 'application/json',
      })
      report(globals, (await response.json()) as KeyRotationResult, plain)
    })
}
