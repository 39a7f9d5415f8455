/**
 * The `federation` suite (ARCHITECTURE §7, §11): two compiled nodes in separate processes on
 * loopback, each with its embedded nats-server, peered through the API; the consumer asks for
 * `telemetry:kinds=meter;quantities=power` and the provider accepts. The bench publishes 128-byte
 * CBOR telemetry straight into the PROVIDER's NATS (`oe.tel.meter.<rid>.power`, captured by its
 * OE_TEL stream) and counts on the CONSUMER's NATS with a core subscription on `oe.peer.>`.
 * Each phase uses an agreement of its own, revoked at its end:
 *
 * 1. latency at 10k records/s: paced publishing with a high-resolution send time in the payload
 *    (`s`, performance.now() of this process, which also receives), receive − send over 10 s
 *    after 1 s of warm-up; CPU per second of each process meanwhile;
 * 2. revocation → cut-off: while 10k records/s flow under a fresh agreement, one side revokes
 *    through its API; the time from that call until the last record of that agreement reaches
 *    the subscriber (told apart by the `Oe-Src` header), alternating the revoking side;
 * 3. throughput: RECORDS published at full rate (core publish, flushed every 10,000) after a
 *    warm-up round; records/s = RECORDS / (first publish → last receive), and exactly RECORDS
 *    must arrive (no loss, no duplicates). The wait is bounded (THROUGHPUT_BUDGET_MS): when not
 *    all arrive in time, the rate is what arrived over that window, marked incomplete;
 * 4. a fresh agreement's time to its first record with phase 3's records still in OE_PEER.
 *
 * The consumer's OE_PEER is emptied before every fresh agreement but phase 4's, and the provider's
 * OE_TEL before phase 3 (see `emptyPeerStream`), so that each phase measures itself rather than
 * what the previous one left behind. Then, in the same run with the nodes stopped, the baselines
 * over the same RECORDS, payloads and subjects: raw nats.js pub/sub through one nats-server, a raw
 * js-libp2p stream between two processes (TCP + Noise + Yamux as the product's host; receiver in
 * scripts/bench/libp2p-peer.ts), and two nats-servers bridged by a leafnode (publish on the leaf,
 * subscribe on the hub).
 *
 * OE_BENCH_BINARY runs the suite against another build. The node helpers are exported for
 * `scripts/soak.ts`, which runs the same two-node setup for minutes at 10k records/s and watches RSS.
 */
import { existsSync } from 'node:fs'
import { readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import type { Stream } from '@libp2p/interface'
import { multiaddr } from '@multiformats/multiaddr'
import { AckPolicy, DeliverPolicy, type JsMsg, jetstream, jetstreamManager } from '@nats-io/jetstream'
import type { Msg, NatsConnection, Subscription } from '@nats-io/nats-core'
import { connect } from '@nats-io/transport-node'
import { decodeCbor, encodeCbor } from '../../data-plane/index.ts'
import {
  apiClient,
  type Child,
  ensureBinary as ensureBinaryAt,
  freePort,
  launchNode,
  log,
  machine,
  NODE_BINARY,
  nodeEnv,
  percentile,
  processCpuMs,
  readAdminToken,
  readNatsPid,
  root,
  type Scope,
  type SuiteResult,
  show,
  startArgs,
  stopNodeChild,
  type TableRow,
} from './common.ts'
import { RAW_PROTOCOL, rawNode } from './libp2p-peer.ts'

/** The binary under test; OE_BENCH_BINARY points the suite at another build (an experiment). */
export const BINARY = process.env.OE_BENCH_BINARY ?? NODE_BINARY
const READY_POLL_MS = 5
const READY_TIMEOUT_MS = 30_000
const WAIT_TIMEOUT_MS = 20_000
/** Records per measured round, the same for the federation and every baseline. */
export const RECORDS = 300_000
const WARMUP_RECORDS = 20_000
/** The throughput round stops waiting after this long and reports the rate so far. */
const THROUGHPUT_BUDGET_MS = 30_000
/** How long the latency round may take to deliver its backlog after publishing stops. */
const LATENCY_DRAIN_MS = 10_000
/** How long phase 4 waits for a fresh agreement's first record with OE_PEER full. */
const HISTORY_START_BUDGET_MS = 10_000
export const PAYLOAD_BYTES = 128
export const RIDS = 500
const FLUSH_EVERY = 10_000
/** A receive wait fails when nothing new arrived for this long. */
const STALL_MS = 15_000
export const LATENCY_RATE = 10_000
const LATENCY_WARMUP_MS = 1_000
const LATENCY_MS = 10_000
const REVOCATION_TRIALS = 5
/** Records flow this long under a trial agreement before it is revoked. */
const FLOW_BEFORE_REVOKE_MS = 1_000
/** How long the subscriber keeps watching after a revoke (publishing goes on meanwhile). */
const WATCH_AFTER_REVOKE_MS = 2_000
/** A trial whose last record is older than this when it revokes did not revoke a live flow. */
const IDLE_AT_REVOKE_MS = 200
/** Messages per `stream.send()` in the raw libp2p baseline (what a transfer batch holds). */
const LIBP2P_CHUNK = 500
export const GRANT = 'telemetry:kinds=meter;quantities=power'
const TARGETS = {
  /** NATS's own cross-domain replication: a stream on a hub sourcing one on a leaf (issue 14). */
  vs_nats_sourcing: 1.0,
  vs_nats_sourcing_stretch: 1.5,
  p99_ms_at_10k: 25,
  revocation_cutoff_p99_ms: 1_000,
}

// ---------------------------------------------------------------------------------------------
// Nodes and their API

export interface BenchNode {
  name: string
  child: Child
  api: string
  token: string
  dataDir: string
  /** The node's embedded nats-server. */
  natsPid: number
}

export function ensureBinary(): Promise<void> {
  return ensureBinaryAt(BINARY)
}

/** Start the compiled binary on a data dir of its own; `env` adds OE_NODE_* settings. */
export async function startNode(
  scope: Scope,
  name: string,
  dataDir: string,
  logFile: string,
  env: Record<string, string> = {},
): Promise<BenchNode> {
  // Only the flags and what we set configure the node, not the caller's OE_NODE_* settings.
  const { child, api: url } = await launchNode(scope, {
    label: `oe-node ${name}`,
    command: BINARY,
    args: startArgs(dataDir),
    dataDir,
    logFile,
    env: nodeEnv({ OE_NODE_ORG: `bench-${name}`, ...env }),
    pollMs: READY_POLL_MS,
    timeoutMs: READY_TIMEOUT_MS,
  })
  const token = await readAdminToken(dataDir)
  const natsPid = await readNatsPid(dataDir)
  log(`node ${name} ready in ${Math.round(performance.now() - child.spawnedAt)} ms at ${url}`)
  return { name, child, api: url, token, dataDir, natsPid }
}

export async function stopNode(node: BenchNode): Promise<void> {
  await stopNodeChild(node.child, `oe-node ${node.name}`)
}

const client = apiClient(WAIT_TIMEOUT_MS)
const request = client.request
/** An API call that must succeed; its parsed answer. */
export const api = client.api

/** Poll until `check` holds; throws after `timeoutMs`. */
async function waitFor(
  check: () => Promise<boolean>,
  what: string,
  timeoutMs = WAIT_TIMEOUT_MS,
): Promise<void> {
  const deadline = performance.now() + timeoutMs
  for (;;) {
    if (await check()) return
    if (performance.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
    await Bun.sleep(5)
  }
}

async function agreementState(node: BenchNode, id: string): Promise<string | undefined> {
  const reply = await request(node, 'GET', `/v1/agreements/${id}`)
  if (reply.status === 404) return undefined
  if (reply.status !== 200) throw new Error(`node ${node.name}: GET agreement answered ${reply.status}`)
  return (reply.body as { state: string }).state
}

/** Each node adds the other: the consumer calls the provider `provider`, and vice versa. */
export async function peerNodes(provider: BenchNode, consumer: BenchNode): Promise<void> {
  const cardOf = async (node: BenchNode) => ((await api(node, 'GET', '/v1/card')) as { text: string }).text
  await api(consumer, 'POST', '/v1/peers', { card: await cardOf(provider), alias: 'provider' })
  await api(provider, 'POST', '/v1/peers', { card: await cardOf(consumer), alias: 'consumer' })
  const connected = async (node: BenchNode, alias: string) =>
    ((await api(node, 'GET', '/v1/peers')) as { alias: string; state: string }[]).some(
      (peer) => peer.alias === alias && peer.state === 'connected',
    )
  await waitFor(
    async () => (await connected(consumer, 'provider')) && (await connected(provider, 'consumer')),
    'the nodes to connect',
  )
}

/** The consumer asks for the provider's meter power readings; the provider accepts. */
export async function openAgreement(
  provider: BenchNode,
  consumer: BenchNode,
  purpose: string,
): Promise<string> {
  const proposed = (await api(consumer, 'POST', '/v1/agreements', {
    peer: 'provider',
    grants: [GRANT],
    purpose,
    validUntil: new Date(Date.now() + 86_400_000).toISOString(),
  })) as { id: string; state: string }
  await waitFor(async () => (await agreementState(provider, proposed.id)) === 'proposed', 'the proposal')
  await api(provider, 'POST', `/v1/agreements/${proposed.id}/accept`)
  await waitFor(async () => (await agreementState(consumer, proposed.id)) === 'active', 'the acceptance')
  return proposed.id
}

export async function revokeAgreement(node: BenchNode, id: string): Promise<void> {
  const revoked = (await api(node, 'POST', `/v1/agreements/${id}/revoke`, {
    reason: 'federation bench',
  })) as {
    state: string
  }
  if (revoked.state !== 'revoked') throw new Error(`a revoked agreement is ${revoked.state} on the revoker`)
}

interface Flow {
  recordsOut: number
  batchesOut: number
  recordsIn: number
  batchesIn: number
}

async function flowOf(node: BenchNode, id: string): Promise<Flow> {
  return ((await api(node, 'GET', `/v1/agreements/${id}`)) as { flow: Flow }).flow
}

/** A nats.js connection to a node's data plane, with the credentials of its embedded server. */
export async function connectNode(node: BenchNode, name: string): Promise<NatsConnection> {
  const status = (await api(node, 'GET', '/v1/status')) as { nats?: { url?: string } }
  const servers = status.nats?.url
  if (!servers) throw new Error(`node ${node.name}: /v1/status has no nats.url`)
  const auth = JSON.parse(await readFile(join(node.dataDir, 'nats', 'auth.json'), 'utf8')) as {
    user: string
    password: string
  }
  return connect({ servers, user: auth.user, pass: auth.password, name })
}

// ---------------------------------------------------------------------------------------------
// Payloads, publishing and receiving

export const subjects = Array.from({ length: RIDS }, (_, i) => `oe.tel.meter.m${i}.power`)

/** How long the pad must be for `{v,t,u,ql,s,pad}` to encode to PAYLOAD_BYTES. */
const PAD = (() => {
  for (let length = 0; length < PAYLOAD_BYTES; length++) {
    const probe = {
      v: 1000 + 1 / 7,
      t: Date.now(),
      u: 'W',
      ql: 'good',
      s: 12345.678,
      pad: 'x'.repeat(length),
    }
    if (encodeCbor(probe).length === PAYLOAD_BYTES) return 'x'.repeat(length)
  }
  throw new Error(`no pad makes a ${PAYLOAD_BYTES}-byte payload`)
})()

/**
 * One telemetry payload: `v` W, `t` epoch ms, and `s`, the send time on this process's
 * performance clock (fractional ms) for latency; `pad` brings it to PAYLOAD_BYTES.
 */
export function payload(index: number, sentAt = performance.now()): Uint8Array {
  return encodeCbor({ v: 1000 + (index % 1000) / 7, t: Date.now(), u: 'W', ql: 'good', s: sentAt, pad: PAD })
}

/** Pre-encoded payloads for full-rate rounds. */
function payloadPool(size = 1_000): Uint8Array[] {
  return Array.from({ length: size }, (_, i) => payload(i))
}

/** Core publishes at full rate, flushed every FLUSH_EVERY; resolves when the last flush returns. */
/**
 * Publish `count` records into a stream as fast as JetStream confirms them: windows of
 * STORED_WINDOW records, each on one reply subject, at most STORED_WINDOWS in flight. Core
 * publishes with no flow control overrun a JetStream ingest queue (nats-server ≥ 2.11 drops what
 * does not fit), so every path that stores (the federation round, the JetStream floor, NATS
 * sourcing) is fed this same way.
 */
async function storedBurst(
  nc: NatsConnection,
  pool: Uint8Array[],
  count: number,
  prefix = '',
): Promise<void> {
  const inbox = `_oe_bench_ack.${Math.random().toString(36).slice(2)}`
  const waiting = new Map<string, { left: number; done: () => void }>()
  const sub = nc.subscribe(`${inbox}.>`, {
    callback: (_error, msg) => {
      const window = waiting.get(msg.subject)
      if (window && --window.left === 0) {
        waiting.delete(msg.subject)
        window.done()
      }
    },
  })
  try {
    const inFlight: Promise<void>[] = []
    for (let first = 0, id = 0; first < count; first += STORED_WINDOW, id++) {
      const last = Math.min(first + STORED_WINDOW, count)
      const reply = `${inbox}.${id}`
      inFlight.push(new Promise<void>((done) => waiting.set(reply, { left: last - first, done })))
      for (let n = first; n < last; n++)
        nc.publish(prefix + subjects[n % RIDS]!, pool[n % pool.length]!, { reply })
      if (inFlight.length >= STORED_WINDOWS) await inFlight.shift()
    }
    await Promise.all(inFlight)
  } finally {
    sub.unsubscribe()
  }
}

const STORED_WINDOW = 5_000
const STORED_WINDOWS = 4

async function burst(nc: NatsConnection, pool: Uint8Array[], count: number, prefix = ''): Promise<void> {
  for (let first = 0; first < count; first += FLUSH_EVERY) {
    const last = Math.min(first + FLUSH_EVERY, count)
    for (let n = first; n < last; n++) nc.publish(prefix + subjects[n % RIDS]!, pool[n % pool.length]!)
    await nc.flush()
  }
}

/** Publishes at a steady rate (in chunks on a 1 ms timer) until stopped. */
export class Pacer {
  sent = 0
  elapsedMs = 0
  private stopped = false
  private readonly done: Promise<void>

  constructor(
    private readonly nc: NatsConnection,
    private readonly rate: number,
  ) {
    this.done = this.loop()
  }

  private async loop(): Promise<void> {
    const started = performance.now()
    try {
      while (!this.stopped && !this.nc.isClosed()) {
        const due = Math.floor(((performance.now() - started) * this.rate) / 1000)
        for (; this.sent < due; this.sent++) this.nc.publish(subjects[this.sent % RIDS]!, payload(this.sent))
        await Bun.sleep(1)
      }
      this.elapsedMs = performance.now() - started
      if (!this.nc.isClosed()) await this.nc.flush()
    } catch (error) {
      if (!this.stopped) log(`publishing stopped: ${(error as Error).message}`)
    }
  }

  /** Stop; resolves with the number of records published. */
  async stop(): Promise<number> {
    this.stopped = true
    await this.done
    return this.sent
  }
}

interface WaitOptions {
  /** Give up (resolve false) after this long; a stall of STALL_MS throws either way. */
  budgetMs?: number
}

/**
 * Counts what arrives on a subject (a core subscription); optionally collects latencies from the
 * payloads' send time, tells one agreement's records apart by the `Oe-Src` header, and keeps a
 * per-second timeline.
 */
export class Receiver {
  count = 0
  lastAt = 0
  /** Collect receive − send (ms) for records sent at or after this performance time. */
  latencyFrom: number | undefined
  latencies: number[] = []
  /** Records of the followed agreement, and of any other. */
  tracked = 0
  trackedLastAt = 0
  untracked = 0
  timeline: { from: number; perSecond: number[] } | undefined
  private track: string | undefined
  private subscription: Subscription | undefined

  constructor(
    private readonly nc: NatsConnection,
    private readonly subject: string,
  ) {
    this.resume()
  }

  /** Stop receiving (the nats-server delivers nothing to this process until `resume`). */
  async pause(): Promise<void> {
    this.subscription?.unsubscribe()
    this.subscription = undefined
    await this.nc.flush()
  }

  resume(): void {
    this.subscription ??= this.nc.subscribe(this.subject, {
      callback: (error, msg) => {
        if (!error) this.onMessage(msg)
      },
    })
  }

  /** Count the records of agreement `id` apart from now on (undefined: stop). */
  follow(id: string | undefined): void {
    this.track = id?.slice(0, 24)
    this.tracked = 0
    this.trackedLastAt = 0
    this.untracked = 0
  }

  private onMessage(msg: Msg): void {
    const now = performance.now()
    this.count += 1
    this.lastAt = now
    if (this.timeline) {
      const second = Math.floor((now - this.timeline.from) / 1000)
      const perSecond = this.timeline.perSecond
      while (perSecond.length <= second) perSecond.push(0)
      perSecond[second]! += 1
    }
    if (this.latencyFrom !== undefined) {
      const sentAt = (decodeCbor(msg.data) as { s: number }).s
      if (sentAt >= this.latencyFrom) this.latencies.push(now - sentAt)
    }
    if (this.track !== undefined) {
      if ((msg.headers?.get('Oe-Src') ?? '').startsWith(this.track)) {
        this.tracked += 1
        this.trackedLastAt = now
      } else this.untracked += 1
    }
  }

  /**
   * Wait until `read()` reaches `total`: true when it did, false when `budgetMs` ran out first;
   * throws when nothing new comes for STALL_MS.
   */
  private async waitFor(
    read: () => number,
    total: number,
    what: string,
    options: WaitOptions,
  ): Promise<boolean> {
    const deadline = performance.now() + (options.budgetMs ?? Number.POSITIVE_INFINITY)
    let seen = read()
    let progressAt = performance.now()
    while (read() < total) {
      await Bun.sleep(2)
      const now = performance.now()
      if (now > deadline) return false
      if (read() !== seen) {
        seen = read()
        progressAt = now
      } else if (now - progressAt > STALL_MS) {
        throw new Error(`${what}: ${read()} of ${total} arrived, then nothing for ${STALL_MS / 1000} s`)
      }
    }
    return true
  }

  waitCount(total: number, what: string, options: WaitOptions = {}): Promise<boolean> {
    return this.waitFor(() => this.count, total, what, options)
  }

  waitTracked(total: number, options: WaitOptions = {}): Promise<boolean> {
    return this.waitFor(() => this.tracked, total, 'records of the followed agreement', options)
  }

  /** Wait until nothing has arrived for `quietMs`. */
  async waitQuiet(quietMs: number): Promise<void> {
    while (performance.now() - this.lastAt < quietMs) await Bun.sleep(quietMs / 10)
  }
}

// ---------------------------------------------------------------------------------------------
// Process facts

function selfCpuMs(): number {
  const usage = process.cpuUsage()
  return (usage.user + usage.system) / 1000
}

// ---------------------------------------------------------------------------------------------
// The suite

export async function federationSuite(scope: Scope): Promise<SuiteResult> {
  await ensureBinary()
  const work = await scope.tempDir('federation')
  // OE_BENCH_NOISE_CRYPTO=wasm measures the nodes with the WebAssembly cipher (an A/B of the lever).
  const noiseEnv: Record<string, string> = process.env.OE_BENCH_NOISE_CRYPTO
    ? { OE_NODE_FEDERATION_NOISE_CRYPTO: process.env.OE_BENCH_NOISE_CRYPTO }
    : {}
  const [provider, consumer] = await Promise.all([
    startNode(scope, 'provider', join(work, 'provider'), join(work, 'provider.log'), noiseEnv),
    startNode(scope, 'consumer', join(work, 'consumer'), join(work, 'consumer.log'), noiseEnv),
  ])
  await peerNodes(provider, consumer)
  const noiseImpl =
    ((await api(provider, 'GET', '/v1/status')) as { noiseCrypto?: string }).noiseCrypto ?? 'unknown'
  log(`federation: Noise ChaCha20-Poly1305 by ${noiseImpl}`)
  const publisher = await connectNode(provider, 'oe-bench-publisher')
  scope.defer('close the publisher connection', () => publisher.close())
  const subscriber = await connectNode(consumer, 'oe-bench-subscriber')
  scope.defer('close the subscriber connection', () => subscriber.close())
  const receiver = new Receiver(subscriber, 'oe.peer.>')
  await subscriber.flush()
  const consumerStreams = await jetstreamManager(subscriber)
  const providerStreams = await jetstreamManager(publisher)
  /**
   * Before each fresh agreement: empty the consumer's OE_PEER. A new agreement's first session
   * scans all of OE_PEER from sequence 1 for records of its own (ConsumerSession.recover) at
   * about a thousand records per second, so after a big round the next agreement would take
   * minutes to start; that cost is measured once on its own (phase 4), not in every phase.
   */
  const emptyPeerStream = () => consumerStreams.streams.purge('OE_PEER')
  /** A fresh agreement with records flowing at 10k/s; ms from active to its first record. */
  const startFlow = async (purpose: string): Promise<{ id: string; load: Pacer; startMs: number }> => {
    const id = await openAgreement(provider, consumer, purpose)
    const active = performance.now()
    receiver.follow(id)
    const load = new Pacer(publisher, LATENCY_RATE)
    scope.defer('stop publishing', () => void load.stop())
    await waitFor(async () => receiver.tracked > 0, `records under agreement '${purpose}'`)
    return { id, load, startMs: receiver.trackedLastAt - active }
  }
  const sessionStartMs: number[] = []
  const pids = [provider.child.pid, provider.natsPid, consumer.child.pid, consumer.natsPid]

  // 1. Latency at 10k records/s.
  log(`federation: latency at ${LATENCY_RATE.toLocaleString('en-US')} records/s for ${LATENCY_MS / 1000} s`)
  const latencyFlow = await startFlow('federation bench latency')
  sessionStartMs.push(latencyFlow.startMs)
  receiver.latencyFrom = performance.now() + LATENCY_WARMUP_MS
  await Bun.sleep(LATENCY_WARMUP_MS)
  const latencyCpuBefore = pids.map(processCpuMs)
  const latencySelfBefore = selfCpuMs()
  await Bun.sleep(LATENCY_MS)
  // CPU per second of the measured 10 s: where a steady 10k records/s goes.
  const latencyCpu = [
    ...pids.map((pid, i) => processCpuMs(pid) - latencyCpuBefore[i]!),
    selfCpuMs() - latencySelfBefore,
  ].map((ms) => ms / (LATENCY_MS / 1000))
  const paced = await latencyFlow.load.stop()
  // Everything published since the agreement became active belongs to it.
  const latencyComplete = await receiver.waitTracked(paced, { budgetMs: LATENCY_DRAIN_MS })
  receiver.latencyFrom = undefined
  const latencies = receiver.latencies
  const achievedRate = paced / (latencyFlow.load.elapsedMs / 1000)
  log(
    `federation: latency p50 ${show(percentile(latencies, 50))} ms, p99 ${show(percentile(latencies, 99))} ms (${latencies.length} samples${latencyComplete ? '' : `, ${paced - receiver.tracked} records still missing`})`,
  )
  await revokeAgreement(consumer, latencyFlow.id)
  await receiver.waitQuiet(300)

  // 2. Revocation → cut-off under load, fresh agreements, alternating the revoking side.
  const cutoffs: number[] = []
  const byProvider: number[] = []
  const byConsumer: number[] = []
  let notStopped = 0
  let foreign = 0
  let idleAtRevoke = 0
  for (let trial = 0; trial < REVOCATION_TRIALS; trial++) {
    await emptyPeerStream()
    const flow = await startFlow(`federation bench revocation ${trial}`)
    sessionStartMs.push(flow.startMs)
    await Bun.sleep(FLOW_BEFORE_REVOKE_MS)
    const revoker = trial % 2 === 0 ? provider : consumer
    const revokedAt = performance.now()
    // The measurement means something only while records are arriving.
    if (revokedAt - receiver.trackedLastAt > IDLE_AT_REVOKE_MS) idleAtRevoke += 1
    await revokeAgreement(revoker, flow.id)
    await Bun.sleep(WATCH_AFTER_REVOKE_MS)
    await flow.load.stop()
    // Still arriving at the end of the watch: the flow did not stop.
    const stopped = performance.now() - receiver.trackedLastAt > 250
    if (!stopped) notStopped += 1
    foreign += receiver.untracked
    const cutoffMs = Math.max(0, receiver.trackedLastAt - revokedAt)
    cutoffs.push(cutoffMs)
    ;(revoker === provider ? byProvider : byConsumer).push(cutoffMs)
    log(
      `revocation ${trial + 1}/${REVOCATION_TRIALS} by the ${revoker.name}: last record ${show(cutoffMs)} ms after the revoke call${stopped ? '' : ' (STILL FLOWING)'}`,
    )
  }
  receiver.follow(undefined)

  // 3. Throughput: a warm-up round, then the measured one (bounded by THROUGHPUT_BUDGET_MS), on
  // emptied streams so that what the earlier phases left does not weigh on it.
  await Promise.all([emptyPeerStream(), providerStreams.streams.purge('OE_TEL')])
  const mainId = await openAgreement(provider, consumer, 'federation bench throughput')
  const pool = payloadPool()
  // Counted where the sourcing baseline counts: stored in the consumer's stream (OE_PEER's message
  // count, read every 10 ms), with no subscriber, so neither round pays for a delivery the other
  // does not make.
  await receiver.pause()
  const storedInPeerStream = async () => (await consumerStreams.streams.info('OE_PEER')).state.messages
  const waitStored = async (
    total: number,
    what: string,
    budgetMs: number,
    timeline?: { from: number; perSecond: number[] },
  ): Promise<{ count: number; at: number; complete: boolean }> => {
    const deadline = performance.now() + budgetMs
    let count = await storedInPeerStream()
    let progressAt = performance.now()
    let secondEndsAt = timeline ? timeline.from + 1000 : Number.POSITIVE_INFINITY
    let atSecondStart = 0
    for (;;) {
      const now = performance.now()
      if (count >= total) return { count, at: now, complete: true }
      if (now > deadline) return { count, at: now, complete: false }
      await Bun.sleep(10)
      const next = await storedInPeerStream()
      const at = performance.now()
      if (next !== count) progressAt = at
      else if (at - progressAt > STALL_MS)
        throw new Error(
          `${what}: ${next} of ${total} stored in OE_PEER, then nothing for ${STALL_MS / 1000} s`,
        )
      count = next
      while (timeline && at >= secondEndsAt) {
        timeline.perSecond.push(count - atSecondStart)
        atSecondStart = count
        secondEndsAt += 1000
      }
    }
  }
  log(`federation: ${WARMUP_RECORDS.toLocaleString('en-US')} records of warm-up`)
  await storedBurst(publisher, pool, WARMUP_RECORDS)
  await waitStored(WARMUP_RECORDS, 'federation warm-up', THROUGHPUT_BUDGET_MS)
  await Bun.sleep(200)
  const afterWarmup = await storedInPeerStream()
  if (afterWarmup !== WARMUP_RECORDS)
    throw new Error(`warm-up: ${afterWarmup} stored for ${WARMUP_RECORDS} published (duplicates)`)

  log(`federation: ${RECORDS.toLocaleString('en-US')} records at full rate`)
  const flowBefore = await flowOf(provider, mainId)
  const cpuBefore = pids.map(processCpuMs)
  const selfBefore = selfCpuMs()
  const started = performance.now()
  const roundTimeline = { from: started, perSecond: [] as number[] }
  await storedBurst(publisher, pool, RECORDS)
  const publishMs = performance.now() - started
  const round = await waitStored(
    WARMUP_RECORDS + RECORDS,
    'federation throughput',
    THROUGHPUT_BUDGET_MS - publishMs,
    roundTimeline,
  )
  const complete = round.complete
  const delivered = round.count - WARMUP_RECORDS
  const elapsedMs = round.at - started
  const cpuMs = pids.map((pid, i) => processCpuMs(pid) - cpuBefore[i]!)
  const benchCpuMs = selfCpuMs() - selfBefore
  const timeline = roundTimeline.perSecond
  const flowAfter = await flowOf(provider, mainId)
  if (complete) {
    await Bun.sleep(300)
    const stored = (await storedInPeerStream()) - WARMUP_RECORDS
    if (stored !== RECORDS) throw new Error(`${stored} stored for ${RECORDS} published (duplicates)`)
  } else {
    log(
      `federation: only ${delivered.toLocaleString('en-US')} of ${RECORDS.toLocaleString('en-US')} records arrived within ${THROUGHPUT_BUDGET_MS / 1000} s: rate over that window`,
    )
  }
  receiver.resume()
  await subscriber.flush()
  const recordsPerS = delivered / (elapsedMs / 1000)
  log(`federation: records stored in OE_PEER per second of the round: ${timeline.join(' ')}`)
  const perK = (ms: number) => (delivered > 0 ? (ms / delivered) * 1000 : Number.NaN)
  log(
    `federation: ${Math.round(recordsPerS).toLocaleString('en-US')} records/s (published in ${Math.round(publishMs)} ms)`,
  )
  await revokeAgreement(consumer, mainId)
  await receiver.waitQuiet(300)

  // 4. A fresh agreement's first session with the throughput round still in OE_PEER.
  const peerHistory = (await consumerStreams.streams.info('OE_PEER')).state.messages
  const historyId = await openAgreement(provider, consumer, 'federation bench start with history')
  const historyActive = performance.now()
  receiver.follow(historyId)
  const historyLoad = new Pacer(publisher, 1_000)
  scope.defer('stop publishing', () => void historyLoad.stop())
  let historyStartMs = Number.POSITIVE_INFINITY
  const deadline = historyActive + HISTORY_START_BUDGET_MS
  while (performance.now() < deadline) {
    if (receiver.tracked > 0) {
      historyStartMs = receiver.trackedLastAt - historyActive
      break
    }
    await Bun.sleep(5)
  }
  await historyLoad.stop()
  await revokeAgreement(consumer, historyId)
  receiver.follow(undefined)
  log(
    `federation: fresh agreement with ${peerHistory.toLocaleString('en-US')} records in OE_PEER: first record ${Number.isFinite(historyStartMs) ? `after ${show(historyStartMs)} ms` : `not within ${HISTORY_START_BUDGET_MS / 1000} s`}`,
  )

  await Promise.all([publisher.close(), subscriber.close()])
  await Promise.all([stopNode(provider), stopNode(consumer)])

  // 5. Baselines, with the nodes stopped so they have the machine to themselves.
  const natsPubsub = await natsPubsubBaseline(scope, work, pool)
  const libp2pStream = await libp2pBaseline(scope, work, pool)
  const leafnode = await leafnodeBaseline(scope, work, pool)
  const jetstreamBridge = await jetstreamBridgeBaseline(scope, work, pool)
  const sourcing = await natsSourcingBaseline(scope, work, pool)
  const natsSourcing = sourcing.perS

  const batches = flowAfter.batchesOut - flowBefore.batchesOut
  const firstSecond = timeline[0] ?? 0
  // The last whole second before the round ended (or the budget ran out).
  const lastSecond = timeline.length > 1 ? timeline[timeline.length - 2]! : firstSecond
  const metrics = {
    records_per_s: recordsPerS,
    records: RECORDS,
    records_delivered: delivered,
    throughput_complete: complete ? 1 : 0,
    throughput_budget_s: THROUGHPUT_BUDGET_MS / 1000,
    payload_bytes: PAYLOAD_BYTES,
    publish_ms: publishMs,
    end_to_end_ms: elapsedMs,
    first_second_records: firstSecond,
    last_second_records: lastSecond,
    records_per_batch: batches > 0 ? (flowAfter.recordsOut - flowBefore.recordsOut) / batches : 0,
    provider_node_cpu_ms_per_1k: perK(cpuMs[0]!),
    provider_nats_cpu_ms_per_1k: perK(cpuMs[1]!),
    consumer_node_cpu_ms_per_1k: perK(cpuMs[2]!),
    consumer_nats_cpu_ms_per_1k: perK(cpuMs[3]!),
    bench_client_cpu_ms_per_1k: perK(benchCpuMs),
    all_processes_cpu_ms_per_1k: perK(cpuMs.reduce((a, b) => a + b, 0) + benchCpuMs),
    nats_servers_and_bench_cpu_ms_per_1k: perK(cpuMs[1]! + cpuMs[3]! + benchCpuMs),
    p50_ms_at_10k: percentile(latencies, 50),
    p90_ms_at_10k: percentile(latencies, 90),
    p99_ms_at_10k: percentile(latencies, 99),
    max_ms_at_10k: Math.max(...latencies),
    latency_samples: latencies.length,
    latency_rate_achieved: achievedRate,
    latency_complete: latencyComplete ? 1 : 0,
    provider_node_cpu_ms_per_s_at_10k: latencyCpu[0]!,
    provider_nats_cpu_ms_per_s_at_10k: latencyCpu[1]!,
    consumer_node_cpu_ms_per_s_at_10k: latencyCpu[2]!,
    consumer_nats_cpu_ms_per_s_at_10k: latencyCpu[3]!,
    bench_client_cpu_ms_per_s_at_10k: latencyCpu[4]!,
    revocation_cutoff_p50_ms: percentile(cutoffs, 50),
    revocation_cutoff_p99_ms: percentile(cutoffs, 99),
    revocation_cutoff_max_ms: Math.max(...cutoffs),
    revocation_cutoff_by_provider_max_ms: Math.max(...byProvider),
    revocation_cutoff_by_consumer_max_ms: Math.max(...byConsumer),
    revocation_trials: cutoffs.length,
    revocation_not_stopped: notStopped,
    revocation_foreign_records: foreign,
    revocation_idle_at_revoke: idleAtRevoke,
    session_start_p50_ms: percentile(sessionStartMs, 50),
    session_start_max_ms: Math.max(...sessionStartMs),
    session_start_with_history_ms: Number.isFinite(historyStartMs) ? historyStartMs : HISTORY_START_BUDGET_MS,
    session_start_with_history_timed_out: Number.isFinite(historyStartMs) ? 0 : 1,
    peer_history_records: peerHistory,
  }
  const baselines = {
    nats_pubsub_records_per_s: natsPubsub,
    libp2p_stream_records_per_s: libp2pStream,
    leafnode_records_per_s: leafnode,
    jetstream_bridge_records_per_s: jetstreamBridge,
    nats_sourcing_records_per_s: natsSourcing,
    nats_sourcing_cpu_ms_per_1k:
      sourcing.cpuMsPer1k.hub + sourcing.cpuMsPer1k.leaf + sourcing.cpuMsPer1k.bench,
    nats_sourcing_hub_cpu_ms_per_1k: sourcing.cpuMsPer1k.hub,
    nats_sourcing_leaf_cpu_ms_per_1k: sourcing.cpuMsPer1k.leaf,
    nats_sourcing_bench_cpu_ms_per_1k: sourcing.cpuMsPer1k.bench,
  }
  const ratios = {
    vs_nats_pubsub: recordsPerS / natsPubsub,
    vs_leafnode: recordsPerS / leafnode,
    vs_libp2p: recordsPerS / libp2pStream,
    vs_jetstream_bridge: recordsPerS / jetstreamBridge,
    vs_nats_sourcing: recordsPerS / natsSourcing,
    /**
     * Every process here competes for the same 2 cores, so when both rounds are CPU-bound their
     * rates stand in the inverse ratio of their CPU per record: this is the ratio to sourcing that
     * the federation's CPU allows (a ceiling, not a measurement of speed).
     */
    cpu_bound_ceiling_vs_nats_sourcing:
      baselines.nats_sourcing_cpu_ms_per_1k / metrics.all_processes_cpu_ms_per_1k,
    /** The same ceiling if the two nodes cost nothing: the federation's own nats-servers and bench alone. */
    ceiling_with_free_nodes_vs_nats_sourcing:
      baselines.nats_sourcing_cpu_ms_per_1k / metrics.nats_servers_and_bench_cpu_ms_per_1k,
  }
  const mark = (ok: boolean): string => (ok ? 'ok' : 'MISSED')
  const ms = (value: number): string => show(value, 'ms')
  const cutoffOk =
    metrics.revocation_cutoff_p99_ms <= TARGETS.revocation_cutoff_p99_ms &&
    notStopped === 0 &&
    foreign === 0 &&
    idleAtRevoke === 0
  const throughputRow: TableRow = {
    metric: `federated end-to-end (${show(RECORDS)} × ${PAYLOAD_BYTES} B, signed batches, policy on both ends; counted when stored in the consumer's OE_PEER)`,
    value: show(recordsPerS, 'records/s'),
    reference: `≥ ${show(TARGETS.vs_nats_sourcing * natsSourcing, 'records/s')} (1.0× NATS stream sourcing) ${mark(ratios.vs_nats_sourcing >= TARGETS.vs_nats_sourcing)}`,
  }
  const latencyRow: TableRow = {
    metric: `latency at ${show(LATENCY_RATE)} records/s p50 / p99 (${show(latencies.length)} records)`,
    value: `${ms(metrics.p50_ms_at_10k)} / ${ms(metrics.p99_ms_at_10k)}`,
    reference: `p99 ≤ ${ms(TARGETS.p99_ms_at_10k)} ${mark(metrics.p99_ms_at_10k <= TARGETS.p99_ms_at_10k && latencyComplete)}`,
  }
  const cutoffRow: TableRow = {
    metric: `revocation → cut-off p50 / p99 (${cutoffs.length} agreements at ${show(LATENCY_RATE)} records/s)`,
    value: `${ms(metrics.revocation_cutoff_p50_ms)} / ${ms(metrics.revocation_cutoff_p99_ms)}`,
    reference: `p99 ≤ ${ms(TARGETS.revocation_cutoff_p99_ms)} ${mark(cutoffOk)}`,
  }
  const ratioRow: TableRow = {
    metric: 'ratio vs_nats_sourcing',
    value: `${show(ratios.vs_nats_sourcing)}×`,
    reference: `≥ ${TARGETS.vs_nats_sourcing}× (stretch ${TARGETS.vs_nats_sourcing_stretch}×) ${mark(ratios.vs_nats_sourcing >= TARGETS.vs_nats_sourcing)}`,
  }
  return {
    suite: 'federation',
    when: new Date().toISOString(),
    machine: machine(),
    metrics,
    baselines,
    ratios,
    targets: TARGETS,
    table: [
      throughputRow,
      {
        metric: 'records delivered in the round',
        value: `${show(delivered)} of ${show(RECORDS)}`,
        reference: complete
          ? `all, in ${ms(elapsedMs)} (publishing took ${ms(publishMs)})`
          : `INCOMPLETE: stopped waiting after ${show(THROUGHPUT_BUDGET_MS / 1000)} s`,
      },
      {
        metric: 'records stored in OE_PEER in the first / the last whole second of the round',
        value: `${show(firstSecond)} / ${show(lastSecond)}`,
        reference: `over ${timeline.length} s`,
      },
      {
        metric: 'records per signed batch (average)',
        value: show(metrics.records_per_batch),
        reference: 'max 500',
      },
      {
        metric: 'CPU per 1,000 records: provider node / its nats / consumer node / its nats / bench',
        value: [
          metrics.provider_node_cpu_ms_per_1k,
          metrics.provider_nats_cpu_ms_per_1k,
          metrics.consumer_node_cpu_ms_per_1k,
          metrics.consumer_nats_cpu_ms_per_1k,
          metrics.bench_client_cpu_ms_per_1k,
        ]
          .map((value) => show(value))
          .join(' / ')
          .concat(' ms'),
        reference: '2 cores: 2,000 ms per s at most',
      },
      {
        metric:
          'CPU per 1,000 records, every process: federated round / NATS stream sourcing (hub + leaf + bench)',
        value: `${show(metrics.all_processes_cpu_ms_per_1k)} / ${show(baselines.nats_sourcing_cpu_ms_per_1k)} ms`,
        reference: `sourcing: hub ${show(sourcing.cpuMsPer1k.hub)} / leaf ${show(sourcing.cpuMsPer1k.leaf)} / bench ${show(sourcing.cpuMsPer1k.bench)} ms`,
      },
      {
        metric:
          'ceiling on vs_nats_sourcing that this CPU allows on 2 cores: as measured / with both nodes at zero CPU',
        value: `${show(ratios.cpu_bound_ceiling_vs_nats_sourcing)}× / ${show(ratios.ceiling_with_free_nodes_vs_nats_sourcing)}×`,
        reference:
          'sourcing CPU ÷ federated CPU per record (the second: its two nats-servers and the bench alone)',
      },
      {
        metric: 'Noise ChaCha20-Poly1305 in the nodes',
        value: noiseImpl,
        reference: 'federation.noise_crypto (OE_BENCH_NOISE_CRYPTO sets it for a run)',
      },
      latencyRow,
      {
        metric: 'latency at 10k records/s p90 / max',
        value: `${ms(metrics.p90_ms_at_10k)} / ${ms(metrics.max_ms_at_10k)}`,
        reference: `rate achieved ${show(achievedRate, 'records/s')}${latencyComplete ? '' : '; NOT all delivered'}`,
      },
      {
        metric:
          'CPU per second at 10k records/s: provider node / its nats / consumer node / its nats / bench',
        value: `${latencyCpu.map((value) => show(value)).join(' / ')} ms`,
        reference: '1,000 ms per s is one core',
      },
      cutoffRow,
      {
        metric: 'revocation → cut-off max: revoked by the provider / by the consumer',
        value: `${ms(metrics.revocation_cutoff_by_provider_max_ms)} / ${ms(metrics.revocation_cutoff_by_consumer_max_ms)}`,
        reference:
          notStopped === 0 && foreign === 0 && idleAtRevoke === 0
            ? 'every flow was live at the revoke and stopped'
            : `${notStopped} flows did NOT stop; ${idleAtRevoke} idle at the revoke; ${foreign} records of other agreements`,
      },
      {
        metric: `fresh agreement: active → first record p50 / max (${sessionStartMs.length}, OE_PEER emptied first)`,
        value: `${ms(metrics.session_start_p50_ms)} / ${ms(metrics.session_start_max_ms)}`,
        reference: '',
      },
      {
        metric: `fresh agreement: active → first record with ${show(peerHistory)} records in OE_PEER`,
        value: Number.isFinite(historyStartMs) ? ms(historyStartMs) : `> ${ms(HISTORY_START_BUDGET_MS)}`,
        reference: 'a first session starts at the end of OE_PEER: what is there does not slow it',
      },
      {
        metric: 'raw nats.js pub/sub (one nats-server, core publish + flush)',
        value: show(natsPubsub, 'records/s'),
        reference: 'baseline',
      },
      {
        metric: `raw js-libp2p stream (TCP+Noise+Yamux, 2 processes, ${LIBP2P_CHUNK} msgs per send)`,
        value: show(libp2pStream, 'records/s'),
        reference: 'baseline',
      },
      {
        metric: 'two nats-servers bridged by a leafnode (publish on leaf, subscribe on hub)',
        value: show(leafnode, 'records/s'),
        reference: 'baseline',
      },
      {
        metric:
          'JetStream store-and-forward floor (stream → durable consumer → confirmed publish into a stream on a 2nd nats-server → subscriber; one process, no policy, signing or libp2p)',
        value: show(jetstreamBridge, 'records/s'),
        reference: `baseline: ${show(jetstreamBridge / natsPubsub)}× pub/sub is the most any design that stores on both ends reaches here`,
      },
      {
        metric:
          'NATS stream sourcing across a leafnode (JetStream domains; a stream on the hub sources the leaf stream the records are published into; counted when stored on the hub)',
        value: show(natsSourcing, 'records/s'),
        reference: 'baseline: what NATS itself does instead of oe-node',
      },
      ratioRow,
      {
        metric: 'ratio vs_nats_pubsub',
        value: `${show(ratios.vs_nats_pubsub)}×`,
        reference: 'federated / raw pub/sub (stores nothing: information, not a target)',
      },
      {
        metric: 'ratio vs_jetstream_bridge',
        value: `${show(ratios.vs_jetstream_bridge)}×`,
        reference: 'federated / the JetStream store-and-forward floor',
      },
      {
        metric: 'ratio vs_leafnode',
        value: `${show(ratios.vs_leafnode)}×`,
        reference: 'federated / leafnode bridge',
      },
      {
        metric: 'ratio vs_libp2p',
        value: `${show(ratios.vs_libp2p)}×`,
        reference: 'federated / raw libp2p stream',
      },
    ],
    headline: [throughputRow, ratioRow, latencyRow, cutoffRow],
  }
}

// ---------------------------------------------------------------------------------------------
// Baselines

async function connectWhenUp(servers: string, server: Child, name: string): Promise<NatsConnection> {
  const deadline = performance.now() + 10_000
  for (;;) {
    try {
      return await connect({ servers, name, timeout: 1_000 })
    } catch (error) {
      if (!server.running) throw new Error(`nats-server exited during start:\n${server.tail()}`)
      if (performance.now() > deadline) throw error
      await Bun.sleep(20)
    }
  }
}

/** The nats-server the node's binary embeds (scripts/setup caches it), else the one on PATH. */
const CACHED_NATS_SERVER = join(import.meta.dir, '..', '..', '.cache', 'nats-server', 'nats-server')
const natsServer = (): string =>
  existsSync(CACHED_NATS_SERVER) ? CACHED_NATS_SERVER : (Bun.which('nats-server') ?? '/usr/sbin/nats-server')

/**
 * Publish RECORDS on `pub`, count on `sub` (subscribed to the same subjects): records/s from the
 * first publish to the last receive, after a warm-up round. `prefix` keeps the subjects apart
 * from anything else on the servers.
 */
async function pubsubRound(
  pub: NatsConnection,
  sub: NatsConnection,
  pool: Uint8Array[],
  what: string,
): Promise<number> {
  const prefix = 'bench.'
  const receiver = new Receiver(sub, `${prefix}oe.tel.>`)
  await sub.flush()
  // Interest may take a moment to reach the publishing server (a leafnode): probe until it has.
  const probe = new Receiver(sub, 'probe.ready')
  await sub.flush()
  await waitFor(async () => {
    pub.publish('probe.ready')
    await pub.flush()
    await Bun.sleep(20)
    return probe.count > 0
  }, `${what}: interest to propagate`)
  await burst(pub, pool, WARMUP_RECORDS, prefix)
  await receiver.waitCount(WARMUP_RECORDS, `${what} warm-up`)
  const base = receiver.count
  const started = performance.now()
  await burst(pub, pool, RECORDS, prefix)
  await receiver.waitCount(base + RECORDS, what)
  const perS = RECORDS / ((receiver.lastAt - started) / 1000)
  log(`baseline: ${what} ${Math.round(perS).toLocaleString('en-US')} records/s`)
  return perS
}

async function natsPubsubBaseline(scope: Scope, work: string, pool: Uint8Array[]): Promise<number> {
  const port = await freePort()
  const server = scope.spawn('nats-server (pub/sub)', natsServer(), ['-a', '127.0.0.1', '-p', String(port)], {
    logFile: join(work, 'pubsub-nats.log'),
  })
  const url = `nats://127.0.0.1:${port}`
  const sub = await connectWhenUp(url, server, 'oe-bench-sub')
  const pub = await connectWhenUp(url, server, 'oe-bench-pub')
  try {
    return await pubsubRound(pub, sub, pool, 'nats.js pub/sub')
  } finally {
    await Promise.all([pub.close(), sub.close()])
    await server.stop()
  }
}

async function leafnodeBaseline(scope: Scope, work: string, pool: Uint8Array[]): Promise<number> {
  const [hubPort, leafPort, leafnodePort] = [await freePort(), await freePort(), await freePort()]
  const hubConf = join(work, 'hub.conf')
  const leafConf = join(work, 'leaf.conf')
  await writeFile(hubConf, `listen: 127.0.0.1:${hubPort}\nleafnodes { listen: 127.0.0.1:${leafnodePort} }\n`)
  await writeFile(
    leafConf,
    `listen: 127.0.0.1:${leafPort}\nleafnodes { remotes: [ { url: "nats-leaf://127.0.0.1:${leafnodePort}" } ] }\n`,
  )
  const hub = scope.spawn('nats-server (hub)', natsServer(), ['-c', hubConf], {
    logFile: join(work, 'hub-nats.log'),
  })
  const sub = await connectWhenUp(`nats://127.0.0.1:${hubPort}`, hub, 'oe-bench-hub-sub')
  const leaf = scope.spawn('nats-server (leaf)', natsServer(), ['-c', leafConf], {
    logFile: join(work, 'leaf-nats.log'),
  })
  const pub = await connectWhenUp(`nats://127.0.0.1:${leafPort}`, leaf, 'oe-bench-leaf-pub')
  try {
    return await pubsubRound(pub, sub, pool, 'leafnode bridge')
  } finally {
    await Promise.all([pub.close(), sub.close()])
    await leaf.stop()
    await hub.stop()
  }
}

/**
 * What the federated path costs in NATS alone: the records are stored in a stream on one
 * nats-server (as OE_TEL), read by a durable AckAll consumer, published into a stream on a second
 * nats-server (as OE_PEER) with every store confirmed before the source is acked, and counted by
 * a core subscriber there. No policy, signing, libp2p or second process: an upper bound for any
 * design that keeps the §7 guarantees (stored on both ends, acked only once the consumer holds it).
 */
async function jetstreamBridgeBaseline(scope: Scope, work: string, pool: Uint8Array[]): Promise<number> {
  const [sourcePort, sinkPort] = [await freePort(), await freePort()]
  const server = (name: string, port: number): Child =>
    scope.spawn(
      `nats-server (${name})`,
      natsServer(),
      ['-a', '127.0.0.1', '-p', String(port), '-js', '-sd', join(work, `js-${name}`)],
      { logFile: join(work, `js-${name}-nats.log`) },
    )
  const source = server('source', sourcePort)
  const sink = server('sink', sinkPort)
  const pub = await connectWhenUp(`nats://127.0.0.1:${sourcePort}`, source, 'oe-bench-js-pub')
  const reader = await connectWhenUp(`nats://127.0.0.1:${sourcePort}`, source, 'oe-bench-js-reader')
  const writer = await connectWhenUp(`nats://127.0.0.1:${sinkPort}`, sink, 'oe-bench-js-writer')
  const sub = await connectWhenUp(`nats://127.0.0.1:${sinkPort}`, sink, 'oe-bench-js-sub')
  let stopped = false
  try {
    await (await jetstreamManager(pub)).streams.add({ name: 'SRC', subjects: ['bench.oe.tel.>'] })
    await (await jetstreamManager(writer)).streams.add({ name: 'DST', subjects: ['peer.>'] })
    const jsm = await jetstreamManager(reader)
    await jsm.consumers.add('SRC', {
      durable_name: 'bridge',
      filter_subject: 'bench.oe.tel.>',
      ack_policy: AckPolicy.All,
      max_ack_pending: 100_000,
      deliver_policy: DeliverPolicy.All,
    })
    const messages = await (await jetstream(reader).consumers.get('SRC', 'bridge')).consume({
      max_messages: 1_000,
    })
    // Confirmations come back on one reply subject per batch.
    const waiting = new Map<string, { left: number; done: () => void }>()
    writer.subscribe('_bridge.>', {
      callback: (_error, msg) => {
        const batch = waiting.get(msg.subject)
        if (batch && --batch.left === 0) {
          waiting.delete(msg.subject)
          batch.done()
        }
      },
    })
    const forward = async (batch: JsMsg[], id: number): Promise<void> => {
      const reply = `_bridge.${id}`
      const confirmed = new Promise<void>((done) => waiting.set(reply, { left: batch.length, done }))
      for (const msg of batch) writer.publish(`peer.a.${msg.subject.slice(6)}`, msg.data, { reply })
      await confirmed
      batch[batch.length - 1]!.ack()
    }
    const forwarding = (async () => {
      const iterator = messages[Symbol.asyncIterator]()
      let pending: Promise<IteratorResult<JsMsg>> | undefined
      let id = 0
      while (!stopped) {
        pending ??= iterator.next()
        const first = await pending
        pending = undefined
        if (first.done) return
        const batch = [first.value]
        while (batch.length < 500) {
          pending = iterator.next()
          const next = await Promise.race([pending, nextTurn()])
          if (next === NEXT_TURN) break
          pending = undefined
          if (next.done) break
          batch.push(next.value)
        }
        await forward(batch, ++id)
      }
    })()
    const receiver = new Receiver(sub, 'peer.>')
    await sub.flush()
    await storedBurst(pub, pool, WARMUP_RECORDS, 'bench.')
    await receiver.waitCount(WARMUP_RECORDS, 'JetStream bridge warm-up')
    const started = performance.now()
    await storedBurst(pub, pool, RECORDS, 'bench.')
    await receiver.waitCount(WARMUP_RECORDS + RECORDS, 'JetStream bridge')
    const perS = RECORDS / ((receiver.lastAt - started) / 1000)
    log(`baseline: JetStream store-and-forward ${Math.round(perS).toLocaleString('en-US')} records/s`)
    stopped = true
    messages.stop()
    await Promise.race([forwarding, Bun.sleep(1_000)])
    return perS
  } finally {
    stopped = true
    await Promise.all([pub.close(), reader.close(), writer.close(), sub.close()])
    await sink.stop()
    await source.stop()
  }
}

/**
 * NATS's own answer to "replicate a stream to another organisation": two nats-servers with
 * JetStream domains joined by a leafnode; the records are published into a stream on the leaf
 * (as into OE_TEL, the same way the federation round publishes them) and a stream on the hub
 * sources it through `$JS.leaf.API`. Both ends store every record; the clock stops when the hub's
 * stream holds them all, the point at which the federation round counts a record too.
 */
async function natsSourcingBaseline(
  scope: Scope,
  work: string,
  pool: Uint8Array[],
): Promise<{ perS: number; cpuMsPer1k: { hub: number; leaf: number; bench: number } }> {
  const [hubPort, leafPort, leafnodePort] = [await freePort(), await freePort(), await freePort()]
  const hubConf = join(work, 'sourcing-hub.conf')
  const leafConf = join(work, 'sourcing-leaf.conf')
  await writeFile(
    hubConf,
    `server_name: oe-bench-hub\nlisten: 127.0.0.1:${hubPort}\n` +
      `jetstream { store_dir: "${join(work, 'sourcing-hub-js')}", domain: hub }\n` +
      `leafnodes { listen: 127.0.0.1:${leafnodePort} }\n`,
  )
  await writeFile(
    leafConf,
    `server_name: oe-bench-leaf\nlisten: 127.0.0.1:${leafPort}\n` +
      `jetstream { store_dir: "${join(work, 'sourcing-leaf-js')}", domain: leaf }\n` +
      `leafnodes { remotes: [ { url: "nats-leaf://127.0.0.1:${leafnodePort}" } ] }\n`,
  )
  const hub = scope.spawn('nats-server (sourcing hub)', natsServer(), ['-c', hubConf], {
    logFile: join(work, 'sourcing-hub-nats.log'),
  })
  const leaf = scope.spawn('nats-server (sourcing leaf)', natsServer(), ['-c', leafConf], {
    logFile: join(work, 'sourcing-leaf-nats.log'),
  })
  const pub = await connectWhenUp(`nats://127.0.0.1:${leafPort}`, leaf, 'oe-bench-sourcing-pub')
  const hubClient = await connectWhenUp(`nats://127.0.0.1:${hubPort}`, hub, 'oe-bench-sourcing-hub')
  try {
    await (await jetstreamManager(pub)).streams.add({ name: 'SRC', subjects: ['bench.oe.tel.>'] })
    const hubStreams = await jetstreamManager(hubClient)
    // The leafnode link and the leaf's JetStream domain take a moment to be reachable; a source
    // set up before they are waits out its retry back-off.
    const deadline = performance.now() + 20_000
    for (;;) {
      try {
        await hubClient.request('$JS.leaf.API.INFO', '', { timeout: 500 })
        break
      } catch (error) {
        if (performance.now() > deadline) throw error
        await Bun.sleep(100)
      }
    }
    await hubStreams.streams.add({
      name: 'DST',
      subjects: [],
      sources: [{ name: 'SRC', external: { api: '$JS.leaf.API', deliver: '' } }],
    })
    const stored = async (count: number, what: string): Promise<number> => {
      const until = performance.now() + THROUGHPUT_BUDGET_MS
      for (;;) {
        const { state } = await hubStreams.streams.info('DST')
        if (state.messages >= count) return performance.now()
        if (performance.now() > until) {
          const leafState = (await (await jetstreamManager(pub)).streams.info('SRC')).state
          throw new Error(
            `${what}: ${state.messages} of ${count} stored on the hub, ${leafState.messages} on the leaf`,
          )
        }
        await Bun.sleep(10)
      }
    }
    await storedBurst(pub, pool, WARMUP_RECORDS, 'bench.')
    await stored(WARMUP_RECORDS, 'sourcing warm-up')
    const cpuBefore = [processCpuMs(hub.pid), processCpuMs(leaf.pid), selfCpuMs()]
    const started = performance.now()
    await storedBurst(pub, pool, RECORDS, 'bench.')
    const doneAt = await stored(WARMUP_RECORDS + RECORDS, 'NATS stream sourcing')
    const [hubMs, leafMs, benchMs] = [processCpuMs(hub.pid), processCpuMs(leaf.pid), selfCpuMs()].map(
      (ms, i) => ((ms - cpuBefore[i]!) / RECORDS) * 1000,
    )
    const perS = RECORDS / ((doneAt - started) / 1000)
    log(
      `baseline: NATS stream sourcing across a leafnode ${Math.round(perS).toLocaleString('en-US')} records/s (CPU per 1,000: hub ${show(hubMs!)} / leaf ${show(leafMs!)} / bench ${show(benchMs!)} ms)`,
    )
    return { perS, cpuMsPer1k: { hub: hubMs!, leaf: leafMs!, bench: benchMs! } }
  } finally {
    await Promise.all([pub.close(), hubClient.close()])
    await leaf.stop()
    await hub.stop()
  }
}

const NEXT_TURN = Symbol('next turn')
const nextTurn = (): Promise<typeof NEXT_TURN> =>
  new Promise((resolve) => setImmediate(() => resolve(NEXT_TURN)))

/** The receiver is a child process (scripts/bench/libp2p-peer.ts); this process sends. */
async function libp2pBaseline(scope: Scope, work: string, pool: Uint8Array[]): Promise<number> {
  const logFile = join(work, 'libp2p-peer.log')
  const peer = scope.spawn(
    'libp2p peer',
    process.execPath,
    [join(root, 'scripts', 'bench', 'libp2p-peer.ts')],
    {
      logFile,
    },
  )
  let addr: string | undefined
  await waitFor(async () => {
    if (!peer.running) throw new Error(`the libp2p peer exited:\n${peer.tail()}`)
    const line = (await readFile(logFile, 'utf8').catch(() => '')).split('\n').find((l) => l.startsWith('{'))
    if (line) addr = (JSON.parse(line) as { addr: string }).addr
    return addr !== undefined
  }, 'the libp2p peer to listen')
  const node = await rawNode()
  try {
    // Length-prefixed messages (varint 128 = 0x80 0x01), LIBP2P_CHUNK of them per send.
    const size = 2 + PAYLOAD_BYTES
    const chunk = new Uint8Array(LIBP2P_CHUNK * size)
    for (let i = 0; i < LIBP2P_CHUNK; i++) {
      chunk.set([0x80, 0x01], i * size)
      chunk.set(pool[i % pool.length]!, i * size + 2)
    }
    const round = async (count: number): Promise<number> => {
      const stream = await node.dialProtocol(multiaddr(addr!), RAW_PROTOCOL)
      const started = performance.now()
      for (let sent = 0; sent < count; sent += LIBP2P_CHUNK) {
        const part = count - sent < LIBP2P_CHUNK ? chunk.subarray(0, (count - sent) * size) : chunk
        if (!stream.send(part)) await stream.onDrain()
      }
      await stream.close()
      const counted = await readCount(stream)
      const elapsed = performance.now() - started
      if (counted !== count) throw new Error(`the libp2p peer counted ${counted} of ${count} messages`)
      return count / (elapsed / 1000)
    }
    await round(WARMUP_RECORDS)
    const perS = await round(RECORDS)
    log(`baseline: raw js-libp2p stream ${Math.round(perS).toLocaleString('en-US')} records/s`)
    return perS
  } finally {
    await node.stop()
    await peer.stop()
  }
}

/** The peer's answer: one length-prefixed decimal count. */
async function readCount(stream: Stream): Promise<number> {
  const parts: Uint8Array[] = []
  for await (const chunk of stream) parts.push(chunk instanceof Uint8Array ? chunk : chunk.subarray())
  const bytes = Buffer.concat(parts)
  return Number(new TextDecoder().decode(bytes.subarray(1, 1 + bytes[0]!)))
}
