/**
 * Helpers for transfer fault tests: a provider and a consumer peered at fixed libp2p ports (so a
 * restarted node is found again), a telemetry feeder that records exactly what the provider
 * answered, direct reads of a node's embedded NATS (stream counts, `Oe-Src` headers), and the
 * comparison of what the provider stored with what the consumer received.
 */
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { DeliverPolicy, jetstream, jetstreamManager } from '@nats-io/jetstream'
import { Kvm } from '@nats-io/kv'
import type { NatsConnection } from '@nats-io/nats-core'
import { connect } from '@nats-io/transport-node'
import { decodeCbor, encodeCbor, freePort } from '../../data-plane/index.ts'
import { TRANSFER_BUCKET, type TransferState } from '../../federation/index.ts'
import { api, peer, propose, waitAgreementState } from './federation.ts'
import { type RunningNode, readSubject, startNode } from './node-process.ts'

/** `--listen` at a fixed loopback port, besides the helper's default one. */
export async function fixedListenArgs(): Promise<string[]> {
  return ['--listen', `/ip4/127.0.0.1/tcp/${await freePort()}`]
}

export const PROVIDER_ALIAS = 'prov'
export const CONSUMER_ALIAS = 'cons'
export const METER_POWER_GRANT = 'telemetry:kinds=meter;quantities=power'

export interface FaultPair {
  provider: RunningNode
  consumer: RunningNode
  providerArgs: string[]
  consumerArgs: string[]
  /** The agreement: the consumer asked for the provider's meter power. */
  id: string
  /** Every incarnation of each node, for logs. */
  incarnations: { provider: RunningNode[]; consumer: RunningNode[] }
}

/** P and C at fixed ports, peered, with an active agreement (C proposes, P accepts). */
export async function startPair(): Promise<FaultPair> {
  const [providerArgs, consumerArgs] = await Promise.all([fixedListenArgs(), fixedListenArgs()])
  const [provider, consumer] = await Promise.all([
    startNode({ config: 'org = "Provider"\n', args: providerArgs }),
    startNode({ config: 'org = "Consumer"\n', args: consumerArgs }),
  ])
  await peer(consumer, PROVIDER_ALIAS, provider, CONSUMER_ALIAS)
  const id = await propose(consumer, PROVIDER_ALIAS, { grants: [METER_POWER_GRANT] })
  await waitAgreementState(provider, id, 'proposed')
  await api(provider, 'POST', `/v1/agreements/${id}/accept`)
  await waitAgreementState(provider, id, 'active')
  await waitAgreementState(consumer, id, 'active')
  return {
    provider,
    consumer,
    providerArgs,
    consumerArgs,
    id,
    incarnations: { provider: [provider], consumer: [consumer] },
  }
}

export interface FlowJson {
  recordsIn: number
  recordsOut: number
  lagRecords: number
  sessions: number
  lastError: string | null
  drops: Record<string, number>
  session: boolean
  recoveredRecords: number
}

export async function flowOf(node: RunningNode, id: string): Promise<FlowJson> {
  return (await api<{ flow: FlowJson }>(node, 'GET', `/v1/agreements/${id}`)).flow
}

/** The meter record with value `v`: rids `m0`…`m19`, so each rid sees increasing values. */
export const meterRecord = (v: number) => ({ kind: 'meter', rid: `m${v % 20}`, q: 'power', v, t: Date.now() })

/**
 * Posts batches of meter power readings with unique increasing values, one request at a time,
 * to whatever node `target` is (undefined while the provider is down: the feeder waits). Values
 * are never reused: a batch whose answer is lost stays `uncertain` (stored or not).
 */
export class TelemetryFeeder {
  target: RunningNode | undefined
  /** Values in a batch the node answered 200 with every record accepted. */
  readonly accepted = new Set<number>()
  /** Values in a batch whose answer was an error or never came. */
  readonly uncertain = new Set<number>()
  readonly errors: string[] = []
  /** True while a request is on its way (a fault now meets a request mid-flight). */
  inFlight = false
  private next = 0
  private running: Promise<void> | undefined

  constructor(
    target: RunningNode,
    private readonly options: { total: number; batch: number; pauseMs: number },
  ) {
    this.target = target
  }

  get sent(): number {
    return this.next
  }

  /** Start at value `first` (values below were fed by an earlier feeder). */
  skip(first: number): this {
    this.next = first
    return this
  }

  start(): this {
    this.running ??= this.loop()
    return this
  }

  async done(): Promise<void> {
    await this.running
  }

  /** Resolves once at least `count` records were accepted. */
  async whenAccepted(count: number, timeoutMs = 30_000): Promise<void> {
    const deadline = Date.now() + timeoutMs
    while (this.accepted.size < count) {
      if (Date.now() > deadline) throw new Error(`only ${this.accepted.size} of ${count} records accepted`)
      await Bun.sleep(5)
    }
  }

  /** Resolves at the next moment a request is in flight. */
  async whenInFlight(timeoutMs = 10_000): Promise<void> {
    const deadline = Date.now() + timeoutMs
    while (!this.inFlight) {
      if (Date.now() > deadline) throw new Error('no request in flight')
      await Bun.sleep(1)
    }
  }

  private async loop(): Promise<void> {
    const { total, batch, pauseMs } = this.options
    while (this.next < total) {
      const node = this.target
      if (!node) {
        await Bun.sleep(20)
        continue
      }
      const values = Array.from({ length: Math.min(batch, total - this.next) }, (_, i) => this.next + i)
      this.next += values.length
      let ok = false
      this.inFlight = true
      try {
        const response = await node.fetch('/v1/telemetry', {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify(values.map(meterRecord)),
          signal: AbortSignal.timeout(20_000),
        })
        const text = await response.text()
        if (response.ok && (JSON.parse(text) as { accepted: number }).accepted === values.length) ok = true
        else this.errors.push(`${response.status} ${text.slice(0, 200)}`)
      } catch (error) {
        this.errors.push((error as Error).message)
      } finally {
        this.inFlight = false
      }
      for (const v of values) (ok ? this.accepted : this.uncertain).add(v)
      if (!ok) await Bun.sleep(50)
      await Bun.sleep(pauseMs)
    }
  }
}

/** A connection to a node's embedded nats-server, with the credentials the node keeps. */
export async function natsOf(node: RunningNode): Promise<NatsConnection> {
  const status = await api<{ nats: { url: string } }>(node, 'GET', '/v1/status')
  const auth = JSON.parse(await readFile(join(node.dataDir, 'nats', 'auth.json'), 'utf8')) as {
    user: string
    password: string
  }
  return connect({ servers: status.nats.url, user: auth.user, pass: auth.password, reconnect: false })
}

/** A consumer's stored transfer state for an agreement (KV `oe-transfer`). */
export async function transferState(node: RunningNode, id: string): Promise<TransferState | undefined> {
  const nc = await natsOf(node)
  try {
    const entry = await (await new Kvm(nc).open(TRANSFER_BUCKET)).get(id)
    return entry?.operation === 'PUT' ? (decodeCbor(entry.value) as TransferState) : undefined
  } finally {
    await nc.close()
  }
}

/** Overwrite a consumer's stored transfer state (to make it stale on purpose). */
export async function setTransferState(node: RunningNode, id: string, state: TransferState): Promise<void> {
  const nc = await natsOf(node)
  try {
    await (await new Kvm(nc).open(TRANSFER_BUCKET)).put(id, encodeCbor(state))
  } finally {
    await nc.close()
  }
}

/** The pid of a node's embedded nats-server. */
export async function natsServerPid(node: RunningNode): Promise<number> {
  return Number((await readFile(join(node.dataDir, 'nats', 'nats-server.pid'), 'utf8')).trim())
}

/** How many messages a stream holds. */
export async function streamMessages(node: RunningNode, stream: string): Promise<number> {
  const nc = await natsOf(node)
  try {
    return (await (await jetstreamManager(nc)).streams.info(stream)).state.messages
  } finally {
    await nc.close()
  }
}

export interface PeerMessage {
  seq: number
  subject: string
  v: number
  src: string
}

/** Every message of OE_PEER with its value and `Oe-Src` header (for diagnosis). */
export async function peerMessages(node: RunningNode): Promise<PeerMessage[]> {
  const nc = await natsOf(node)
  try {
    const total = (await (await jetstreamManager(nc)).streams.info('OE_PEER')).state.messages
    const consumer = await jetstream(nc).consumers.get('OE_PEER', {
      filter_subjects: ['oe.peer.>'],
      deliver_policy: DeliverPolicy.All,
    })
    const out: PeerMessage[] = []
    while (out.length < total) {
      const batch = await consumer.fetch({ max_messages: 1000, expires: 2_000 })
      let count = 0
      for await (const msg of batch) {
        count += 1
        out.push({
          seq: msg.seq,
          subject: msg.subject,
          v: (decodeCbor(msg.data) as { v: number }).v,
          src: msg.headers?.get('Oe-Src') ?? '',
        })
      }
      if (count === 0) break
    }
    return out
  } finally {
    await nc.close()
  }
}

/** Values on `subject` in stream order, with the rid (the 2nd-to-last subject token). */
export async function valuesOn(
  node: RunningNode,
  subject: string,
): Promise<{ rid: string; v: number; subject: string }[]> {
  const messages = await readSubject(node, subject, 1_500)
  return messages.map((message) => {
    const tokens = message.subject.split('.')
    return { rid: tokens[tokens.length - 2]!, v: message.data.v as number, subject: message.subject }
  })
}

/**
 * Wait until the consumer's OE_PEER holds `expected` messages and stays there for `stableMs`
 * (so late duplicates show up too). Gives up when the count has not moved for `stallMs` (the
 * flow is stuck) or at `timeoutMs`. Resolves with the last count and when it reached `expected`.
 */
export async function waitPeerCount(
  consumer: () => RunningNode,
  expected: number,
  options: { timeoutMs?: number; stableMs?: number; stallMs?: number } = {},
): Promise<{ count: number; reachedAt: number | null }> {
  const { timeoutMs = 60_000, stableMs = 1_500, stallMs = 15_000 } = options
  const deadline = Date.now() + timeoutMs
  let last = -1
  let since = Date.now()
  let reachedAt: number | null = null
  while (Date.now() < deadline) {
    const count = await streamMessages(consumer(), 'OE_PEER').catch(() => -1)
    if (count >= expected) reachedAt ??= Date.now()
    if (count !== last) {
      last = count
      since = Date.now()
    } else if (count >= expected && Date.now() - since >= stableMs) break
    else if (Date.now() - since >= stallMs) break
    await Bun.sleep(100)
  }
  return { count: last, reachedAt }
}

export interface Comparison {
  /** Values the provider stored and the consumer does not hold. */
  lost: number[]
  /** Values the consumer holds more than once, with their count. */
  duplicated: [number, number][]
  /** Values the consumer holds that the provider never stored. */
  unexpected: number[]
  /** Values the provider answered 200 for and no longer holds. */
  lostAtProvider: number[]
  /** Per rid, places where a value is not above the one before. */
  outOfOrder: { rid: string; after: number; value: number }[]
}

export function compare(
  accepted: ReadonlySet<number>,
  stored: readonly { v: number }[],
  received: readonly { rid: string; v: number }[],
): Comparison {
  const storedSet = new Set(stored.map((m) => m.v))
  const counts = new Map<number, number>()
  for (const { v } of received) counts.set(v, (counts.get(v) ?? 0) + 1)
  const last = new Map<string, number>()
  const outOfOrder: Comparison['outOfOrder'] = []
  for (const { rid, v } of received) {
    const before = last.get(rid)
    if (before !== undefined && v <= before) outOfOrder.push({ rid, after: before, value: v })
    last.set(rid, v)
  }
  return {
    lost: [...storedSet].filter((v) => !counts.has(v)).sort((a, b) => a - b),
    duplicated: [...counts].filter(([, n]) => n > 1).sort((a, b) => a[0] - b[0]),
    unexpected: [...counts.keys()].filter((v) => !storedSet.has(v)).sort((a, b) => a - b),
    lostAtProvider: [...accepted].filter((v) => !storedSet.has(v)).sort((a, b) => a - b),
    outOfOrder,
  }
}

/** Compact ranges for messages: [1,2,3,7] → '1-3,7'. */
export function ranges(values: readonly number[], limit = 20): string {
  const parts: string[] = []
  for (let i = 0; i < values.length && parts.length < limit; i++) {
    let j = i
    while (j + 1 < values.length && values[j + 1] === values[j]! + 1) j++
    parts.push(i === j ? `${values[i]}` : `${values[i]}-${values[j]}`)
    i = j
  }
  return parts.join(',') + (parts.length === limit ? ',…' : '')
}
