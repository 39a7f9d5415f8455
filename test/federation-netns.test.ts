/**
 * Two organisations on two hosts: each node runs in its own network namespace, joined by a
 * veth pair (addresses from 198.18.0.0/15, the range set aside for network tests). Cutting the
 * link shows both peers as disconnected; restoring it reconnects them and the agreement state
 * converges. Needs root and iproute2; elsewhere the test is skipped with the reason.
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { BUN, CLI, cleanupAll, killOrphanNatsServer, tempDir, waitFor } from './helpers/node-process.ts'

const suffix = String(process.pid % 100000)
const ns = { a: `oe${suffix}a`, b: `oe${suffix}b` }
const veth = { a: `oe${suffix}va`, b: `oe${suffix}vb` }
const ip = { a: '198.18.0.1', b: '198.18.0.2' }

function sh(args: string[]): { ok: boolean; out: string } {
  const result = spawnSync(args[0]!, args.slice(1), { encoding: 'utf8' })
  return { ok: result.status === 0, out: `${result.stdout}${result.stderr}`.trim() }
}

function namespacesUnavailable(): string | undefined {
  if (process.getuid?.() !== 0) return 'not root'
  if (!sh(['ip', '-V']).ok) return 'iproute2 (ip) is not installed'
  const probe = `oe${suffix}p`
  const added = sh(['ip', 'netns', 'add', probe])
  if (!added.ok) return `ip netns add failed: ${added.out}`
  sh(['ip', 'netns', 'del', probe])
  return undefined
}

const unavailable = namespacesUnavailable()
if (unavailable)
  console.warn(`federation-netns: skipped, network namespaces cannot be created here (${unavailable})`)

function inNs(name: string, args: string[], input?: string) {
  return spawnSync('ip', ['netns', 'exec', name, BUN, CLI, ...args], {
    encoding: 'utf8',
    input,
    timeout: 30_000,
  })
}

function json<T>(name: string, args: string[]): T {
  const result = inNs(name, [...args, '--json'])
  if (result.status !== 0) throw new Error(`${args.join(' ')} in ${name}: ${result.stderr}`)
  return JSON.parse(result.stdout) as T
}

const children: ChildProcess[] = []
const dirs: { a: string; b: string } = { a: '', b: '' }

async function startIn(side: 'a' | 'b'): Promise<void> {
  const child = spawn(
    'ip',
    [
      'netns',
      'exec',
      ns[side],
      BUN,
      CLI,
      '--data-dir',
      dirs[side],
      'start',
      '--api',
      '127.0.0.1:0',
      '--listen',
      `/ip4/${ip[side]}/tcp/7400`,
    ],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  )
  children.push(child)
  await waitFor(
    () => inNs(ns[side], ['--data-dir', dirs[side], 'status']).status === 0,
    30_000,
    `node ${side} to start`,
  )
}

const peerState = (side: 'a' | 'b', alias: string) =>
  json<{ alias: string; state: string }[]>(ns[side], ['--data-dir', dirs[side], 'peers', 'list']).find(
    (p) => p.alias === alias,
  )?.state

const agreementState = (side: 'a' | 'b', id: string) =>
  json<{ state: string }>(ns[side], ['--data-dir', dirs[side], 'agreement', 'show', id]).state

describe.skipIf(unavailable !== undefined)('two nodes in separate network namespaces', () => {
  beforeAll(async () => {
    for (const [cmd, ok] of [
      [['ip', 'netns', 'add', ns.a], true],
      [['ip', 'netns', 'add', ns.b], true],
      [['ip', 'link', 'add', veth.a, 'type', 'veth', 'peer', 'name', veth.b], true],
      [['ip', 'link', 'set', veth.a, 'netns', ns.a], true],
      [['ip', 'link', 'set', veth.b, 'netns', ns.b], true],
      [['ip', '-n', ns.a, 'addr', 'add', `${ip.a}/30`, 'dev', veth.a], true],
      [['ip', '-n', ns.b, 'addr', 'add', `${ip.b}/30`, 'dev', veth.b], true],
      [['ip', '-n', ns.a, 'link', 'set', 'lo', 'up'], true],
      [['ip', '-n', ns.b, 'link', 'set', 'lo', 'up'], true],
      [['ip', '-n', ns.a, 'link', 'set', veth.a, 'up'], true],
      [['ip', '-n', ns.b, 'link', 'set', veth.b, 'up'], true],
    ] as [string[], boolean][]) {
      const result = sh(cmd)
      if (ok && !result.ok) throw new Error(`${cmd.join(' ')}: ${result.out}`)
    }
    dirs.a = await tempDir()
    dirs.b = await tempDir()
    for (const side of ['a', 'b'] as const) {
      expect(
        inNs(ns[side], ['--data-dir', dirs[side], 'init', '--org', side === 'a' ? 'Gridco' : 'Sunfleet'])
          .status,
      ).toBe(0)
    }
    await Promise.all([startIn('a'), startIn('b')])
  })

  afterAll(async () => {
    for (const child of children) if (child.exitCode === null) child.kill('SIGTERM')
    await Promise.all(
      children.map((child) =>
        child.exitCode === null ? new Promise((r) => child.once('exit', r)) : Promise.resolve(),
      ),
    )
    for (const side of ['a', 'b'] as const) if (dirs[side]) await killOrphanNatsServer(dirs[side])
    sh(['ip', 'netns', 'del', ns.a])
    sh(['ip', 'netns', 'del', ns.b])
    await cleanupAll()
  })

  test('peering across the link, a cut shows both sides disconnected, and the state converges after it', async () => {
    const cardA = inNs(ns.a, ['--data-dir', dirs.a, 'card']).stdout.trim()
    const cardB = inNs(ns.b, ['--data-dir', dirs.b, 'card']).stdout.trim()
    expect(cardB).toMatch(/^oe1/)
    expect(inNs(ns.a, ['--data-dir', dirs.a, 'peers', 'add', cardB, '--alias', 'sunfleet']).status).toBe(0)
    expect(inNs(ns.b, ['--data-dir', dirs.b, 'peers', 'add', cardA, '--alias', 'gridco']).status).toBe(0)
    await waitFor(
      () => peerState('a', 'sunfleet') === 'connected' && peerState('b', 'gridco') === 'connected',
      20_000,
      'peers to connect',
    )

    const { id } = json<{ id: string }>(ns.a, [
      '--data-dir',
      dirs.a,
      'agreement',
      'propose',
      '--peer',
      'sunfleet',
      '--grant',
      'telemetry:kinds=pv,battery;quantities=power,soc',
      '--purpose',
      'hosting capacity',
      '--valid-until',
      new Date(Date.now() + 86_400_000).toISOString(),
    ])
    await waitFor(() => agreementState('b', id) === 'proposed', 15_000, 'the proposal to cross the link')
    expect(json<{ state: string }>(ns.b, ['--data-dir', dirs.b, 'agreement', 'accept', id]).state).toBe(
      'active',
    )
    await waitFor(() => agreementState('a', id) === 'active', 15_000, 'the acceptance to cross the link')

    // Cut the link.
    expect(sh(['ip', '-n', ns.a, 'link', 'set', veth.a, 'down']).ok).toBe(true)
    await waitFor(
      () => peerState('a', 'sunfleet') !== 'connected' && peerState('b', 'gridco') !== 'connected',
      30_000,
      'both sides to see the peer disconnected',
    )
    // A revokes while the link is down: at once locally, queued for the peer.
    expect(
      json<{ state: string }>(ns.a, [
        '--data-dir',
        dirs.a,
        'agreement',
        'revoke',
        id,
        '--reason',
        'outage test',
      ]).state,
    ).toBe('revoked')
    expect(agreementState('b', id)).toBe('active')

    // Restore it: they reconnect and B learns of the revocation.
    expect(sh(['ip', '-n', ns.a, 'link', 'set', veth.a, 'up']).ok).toBe(true)
    await waitFor(
      () => peerState('a', 'sunfleet') === 'connected' && peerState('b', 'gridco') === 'connected',
      30_000,
      'peers to reconnect',
    )
    await waitFor(() => agreementState('b', id) === 'revoked', 20_000, 'the revocation to arrive')
  })
})
