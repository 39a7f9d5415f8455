/**
 * Network namespaces for tests: two "hosts" `a` and `b`, each a namespace of its own, joined by a
 * veth pair that a test can take down (a cable cut, with both nodes left running). Each host is
 * also joined to the test's own namespace by a management veth, which a cut does not touch: a
 * node started with `startNodeIn` serves its API there, so `RunningNode.fetch` and every helper
 * built on it (the API helpers, `TelemetryFeeder`, `readSubject`, `flowOf`…) work unchanged.
 * The embedded nats-servers stay on each namespace's loopback.
 *
 *   const lab = createLab('x')            // needs root and iproute2
 *   const node = await startNodeIn(lab, 'a', { config: 'org = "A"\n' })
 *   lab.setLink('down') … lab.setLink('up')
 *   await lab.flap({ downMs: 3000, upMs: 3000, forMs: 60_000 })   // a flapping link
 *   lab.shape('a', '1mbit') … lab.shape('a', undefined)           // a slow link (tc tbf)
 *   await cleanupAll(); lab.destroy()
 *
 * Addresses come from 198.18.0.0/15 (RFC 2544, set aside for network tests): the link is always
 * 198.18.0.1 ↔ 198.18.0.2 (private to the pair of namespaces); the management /30s are taken in
 * 198.19.0.0/16 where the test's namespace has no address yet. Names carry the pid, so runs in
 * parallel do not meet.
 */
import { spawnSync } from 'node:child_process'
import { api, peer, propose, waitAgreementState } from './federation.ts'
import { BUN, CLI, type RunningNode, type StartNodeOptions, startNode } from './node-process.ts'
import { CONSUMER_ALIAS, METER_POWER_GRANT, PROVIDER_ALIAS } from './transfer.ts'

export type Side = 'a' | 'b'

export interface CommandResult {
  ok: boolean
  out: string
}

/** Run a command to completion (iproute2 answers at once; 10 s is a hang). */
export function run(args: string[]): CommandResult {
  const result = spawnSync(args[0]!, args.slice(1), { encoding: 'utf8', timeout: 10_000 })
  const out = `${result.stdout ?? ''}${result.stderr ?? ''}${result.error ? result.error.message : ''}`
  return { ok: result.status === 0, out: out.trim() }
}

/** Why namespaces cannot be built here, or undefined when they can. */
export function netnsUnavailable(): string | undefined {
  const uid = process.getuid?.()
  if (uid !== 0)
    return `it needs root to create network namespaces and runs as uid ${uid} (CI runs \`bash .ci/run\` as root)`
  if (!run(['ip', '-V']).ok) return 'iproute2 (the ip command) is not installed'
  const probe = `oe${process.pid}p`
  run(['ip', 'netns', 'del', probe])
  const added = run(['ip', 'netns', 'add', probe])
  if (!added.ok) return `\`ip netns add\` failed: ${added.out}`
  run(['ip', 'netns', 'del', probe])
  return undefined
}

/** Throw, saying why, when namespaces cannot be built: the tests fail rather than skip. */
export function requireNetns(): void {
  const reason = netnsUnavailable()
  if (reason) throw new Error(`network namespace test cannot run: ${reason}`)
}

export interface NetnsHost {
  /** The namespace's name. */
  ns: string
  /** This host's address on the link between the hosts. */
  linkAddress: string
  /** This host's end of the link. */
  linkDevice: string
  /** This host's address on its management veth: the test process reaches it there. */
  managementAddress: string
}

const ipToNumber = (ip: string): number => ip.split('.').reduce((n, part) => n * 256 + Number(part), 0)
const numberToIp = (n: number): string => [24, 16, 8, 0].map((shift) => (n >>> shift) & 255).join('.')

const MANAGEMENT_BASE = ipToNumber('198.19.0.0')
/** Pairs of /30s in 198.19.0.0/16: one pair (8 addresses) per lab. */
const MANAGEMENT_PAIRS = 65_536 / 8

let labsCreated = 0

/** The first pair of management /30s, from one picked by pid, where this namespace has no address. */
function freeManagementPair(): number {
  const used = run(['ip', '-4', '-o', 'addr', 'show'])
    .out.split('\n')
    .map((line) => /\binet (\d+\.\d+\.\d+\.\d+)\//.exec(line)?.[1])
    .filter((ip): ip is string => ip !== undefined)
    .map(ipToNumber)
  const start = (process.pid * 4 + labsCreated) % MANAGEMENT_PAIRS
  for (let i = 0; i < MANAGEMENT_PAIRS; i++) {
    const base = MANAGEMENT_BASE + ((start + i) % MANAGEMENT_PAIRS) * 8
    if (!used.some((ip) => ip >= base && ip < base + 8)) return base
  }
  throw new Error('no free management addresses in 198.19.0.0/16')
}

export class NetnsLab {
  readonly hosts: Record<Side, NetnsHost>
  /** The test namespace's ends of the management veths. */
  private readonly managementDevices: string[]
  private readonly setup: string[][]

  constructor(tag: string) {
    const prefix = `oe${process.pid}${tag}`
    if (prefix.length > 13) throw new Error(`lab tag ${tag} makes interface names too long`)
    const management = freeManagementPair()
    labsCreated += 1
    this.hosts = {
      a: { ns: `${prefix}a`, linkAddress: '198.18.0.1', linkDevice: `${prefix}la`, managementAddress: '' },
      b: { ns: `${prefix}b`, linkAddress: '198.18.0.2', linkDevice: `${prefix}lb`, managementAddress: '' },
    }
    this.managementDevices = [`${prefix}ra`, `${prefix}rb`]
    const { a, b } = this.hosts
    this.setup = [
      ['ip', 'netns', 'add', a.ns],
      ['ip', 'netns', 'add', b.ns],
      ['ip', 'link', 'add', a.linkDevice, 'type', 'veth', 'peer', 'name', b.linkDevice],
      ['ip', 'link', 'set', a.linkDevice, 'netns', a.ns],
      ['ip', 'link', 'set', b.linkDevice, 'netns', b.ns],
      ['ip', '-n', a.ns, 'addr', 'add', `${a.linkAddress}/30`, 'dev', a.linkDevice],
      ['ip', '-n', b.ns, 'addr', 'add', `${b.linkAddress}/30`, 'dev', b.linkDevice],
    ]
    for (const [index, side] of (['a', 'b'] as const).entries()) {
      const host = this.hosts[side]
      const base = management + index * 4
      const inside = `${prefix}m${side}`
      const outside = this.managementDevices[index]!
      host.managementAddress = numberToIp(base + 2)
      this.setup.push(
        ['ip', 'link', 'add', outside, 'type', 'veth', 'peer', 'name', inside],
        ['ip', 'link', 'set', inside, 'netns', host.ns],
        ['ip', 'addr', 'add', `${numberToIp(base + 1)}/30`, 'dev', outside],
        ['ip', '-n', host.ns, 'addr', 'add', `${host.managementAddress}/30`, 'dev', inside],
        ['ip', 'link', 'set', outside, 'up'],
        ['ip', '-n', host.ns, 'link', 'set', inside, 'up'],
        ['ip', '-n', host.ns, 'link', 'set', 'lo', 'up'],
        ['ip', '-n', host.ns, 'link', 'set', host.linkDevice, 'up'],
      )
    }
  }

  /** Build the namespaces and links; on failure, remove what was built and throw why. */
  create(): this {
    // Names carry our pid: anything by these names was left by a dead process.
    this.remove()
    for (const command of this.setup) {
      const result = run(command)
      if (!result.ok) {
        this.destroy()
        throw new Error(`${command.join(' ')}: ${result.out}`)
      }
    }
    return this
  }

  /** Take the link between the hosts down or up, at `side`'s end (the other end loses carrier). */
  setLink(state: 'down' | 'up', side: Side = 'a'): void {
    const host = this.hosts[side]
    const result = run(['ip', '-n', host.ns, 'link', 'set', host.linkDevice, state])
    if (!result.ok) throw new Error(`link ${state}: ${result.out}`)
  }

  /**
   * Slow the link down at `side`'s end (what leaves `side`), or lift that with `undefined`: a
   * token bucket (`tc … tbf`) of `rate` (e.g. `1mbit`), queueing up to 400 ms. (This kernel has
   * no netem, so no added delay or loss: a rate cap is the slow link.)
   */
  shape(side: Side, rate: string | undefined): void {
    const host = this.hosts[side]
    const qdisc = rate === undefined ? [] : ['tbf', 'rate', rate, 'burst', '32kbit', 'latency', '400ms']
    const command = [
      'tc',
      'qdisc',
      rate === undefined ? 'del' : 'replace',
      'dev',
      host.linkDevice,
      'root',
      ...qdisc,
    ]
    const result = run(['ip', 'netns', 'exec', host.ns, ...command])
    if (!result.ok) throw new Error(`${command.join(' ')} in ${host.ns}: ${result.out}`)
  }

  /** Take the link down for `downMs` and up for `upMs`, over and over, for `forMs`; ends up. */
  async flap(options: { downMs: number; upMs: number; forMs: number; side?: Side }): Promise<number> {
    const end = Date.now() + options.forMs
    let cuts = 0
    try {
      while (Date.now() < end) {
        this.setLink('down', options.side)
        cuts += 1
        await Bun.sleep(Math.min(options.downMs, Math.max(0, end - Date.now())))
        this.setLink('up', options.side)
        await Bun.sleep(Math.min(options.upMs, Math.max(0, end - Date.now())))
      }
    } finally {
      this.setLink('up', options.side)
    }
    return cuts
  }

  /** `ip netns exec <ns>` before a command. */
  exec(side: Side, command: string[] = [BUN, CLI]): string[] {
    return ['ip', 'netns', 'exec', this.hosts[side].ns, ...command]
  }

  /**
   * Remove everything: SIGKILL what still runs in the namespaces (only processes this test
   * started live there), delete them and the management veths. Safe to call more than once.
   */
  destroy(): void {
    for (const host of Object.values(this.hosts)) {
      const pids = run(['ip', 'netns', 'pids', host.ns])
      for (const pid of pids.ok ? pids.out.split(/\s+/).filter(Boolean).map(Number) : []) {
        try {
          process.kill(pid, 'SIGKILL')
        } catch {
          // Gone already.
        }
      }
    }
    this.remove()
  }

  private remove(): void {
    for (const host of Object.values(this.hosts)) run(['ip', 'netns', 'del', host.ns])
    // Deleting a namespace destroys its veth ends, and with them their peers; this is for the
    // case where something kept a namespace alive.
    for (const device of this.managementDevices) run(['ip', 'link', 'del', device])
  }
}

/** A lab with hosts `a` and `b` (fails, saying why, where namespaces cannot be built). */
export function createLab(tag: string): NetnsLab {
  requireNetns()
  return new NetnsLab(tag).create()
}

/**
 * Start a node on `side`: libp2p at a fixed port on the link address (so a peer finds it again
 * after a cut), the API at the management address (so the test process reaches it).
 */
export function startNodeIn(
  lab: NetnsLab,
  side: Side,
  options: Omit<StartNodeOptions, 'command' | 'api' | 'listen'> = {},
): Promise<RunningNode> {
  const host = lab.hosts[side]
  return startNode({
    ...options,
    command: lab.exec(side),
    api: `${host.managementAddress}:7410`,
    listen: [`/ip4/${host.linkAddress}/tcp/7400`],
  })
}

export interface NetnsPair {
  /** On host `a`. */
  provider: RunningNode
  /** On host `b`. */
  consumer: RunningNode
  /** The agreement: the consumer asked for the provider's meter power (as `startPair`). */
  id: string
}

/** `startPair` across the link: provider on `a`, consumer on `b`, peered, agreement active. */
export async function startPairIn(lab: NetnsLab): Promise<NetnsPair> {
  const [provider, consumer] = await Promise.all([
    startNodeIn(lab, 'a', { config: 'org = "Provider"\n' }),
    startNodeIn(lab, 'b', { config: 'org = "Consumer"\n' }),
  ])
  await peer(consumer, PROVIDER_ALIAS, provider, CONSUMER_ALIAS)
  const id = await propose(consumer, PROVIDER_ALIAS, { grants: [METER_POWER_GRANT] })
  await waitAgreementState(provider, id, 'proposed')
  await api(provider, 'POST', `/v1/agreements/${id}/accept`)
  await waitAgreementState(provider, id, 'active')
  await waitAgreementState(consumer, id, 'active')
  return { provider, consumer, id }
}
