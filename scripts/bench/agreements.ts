/**
 * The `agreements` suite (ARCHITECTURE §6, §7, §11): control-plane latencies between two real
 * nodes (the compiled binary, each with its own data dir and embedded NATS) on loopback, measured
 * through the node API the CLI uses, one operation at a time:
 *
 * - peer connect: from the second `POST /v1/peers` (both sides now know each other) until both
 *   list the peer `connected`; the first peering of the fresh pair, then remove/re-add trials;
 * - propose → visible: from `POST /v1/agreements` on A until B's `GET /v1/agreements/<id>` finds it;
 * - accept → active: from `POST …/accept` on the provider until the proposer shows it `active`;
 * - revoke → revoked: from `POST …/revoke` on one node until the other shows it `revoked`
 *   (target p99 ≤ 1 s), alternating which side revokes.
 *
 * Every wait polls the API every POLL_MS, so each number carries up to that much (plus one GET)
 * of observation delay.
 */
import { join } from 'node:path'
import {
  apiClient,
  type Child,
  ensureBinary,
  launchNode,
  log,
  machine,
  NODE_BINARY,
  nodeEnv,
  percentile,
  readAdminToken,
  type Scope,
  type SuiteResult,
  show,
  startArgs,
  stopNodeChild,
  type TableRow,
} from './common.ts'

const READY_POLL_MS = 5
const READY_TIMEOUT_MS = 30_000
/** How often the API is polled while waiting for a state. */
const POLL_MS = 5
/** A wait that takes longer than this fails the suite. */
const WAIT_TIMEOUT_MS = 15_000
/** Remove/re-add trials after the first peering. */
const PEER_TRIALS = 10
/**
 * Trials start at least this far apart. Each trial makes two or three inbound connections on
 * each node, all from 127.0.0.1, and libp2p's connection manager refuses more than
 * `inboundConnectionThreshold` (5) inbound connections per second from one host: back-to-back
 * trials hit that limit and then measure the redial backoff (about 1 s) instead of a connect.
 */
const PEER_TRIAL_SPACING_MS = 1_100
/** Agreements proposed and accepted (all of them are revoked afterwards). */
const AGREEMENTS = 50
const GRANT = 'telemetry:kinds=evse;quantities=power'
/** Above this a step most likely waited for a retry timer rather than went straight through. */
const SLOW_MS = 250
const TARGETS = { revocation_to_revoked_p99_ms: 1_000 }

interface Node {
  name: string
  child: Child
  api: string
  token: string
}

interface PeerJson {
  alias: string
  state: string
}

interface AgreementJson {
  id: string
  state: string
}

export async function agreementsSuite(scope: Scope): Promise<SuiteResult> {
  await ensureBinary()
  const work = await scope.tempDir('agreements')
  const [a, b] = await Promise.all([
    startNode(scope, 'a', join(work, 'a'), join(work, 'a.log')),
    startNode(scope, 'b', join(work, 'b'), join(work, 'b.log')),
  ])
  const cardA = ((await api(a, 'GET', '/v1/card')) as { text: string }).text
  const cardB = ((await api(b, 'GET', '/v1/card')) as { text: string }).text

  // 1. Peering: the fresh pair, then remove on both sides and re-add.
  let trialStarted = performance.now()
  const firstPeering = await connectTrial(a, cardB, b, cardA)
  log(`peer connect, fresh pair: ${Math.round(firstPeering)} ms`)
  const connectMs: number[] = []
  for (let trial = 0; trial < PEER_TRIALS; trial++) {
    // Paced: libp2p refuses a 6th inbound connection from one host within a second.
    await Bun.sleep(Math.max(0, trialStarted + PEER_TRIAL_SPACING_MS - performance.now()))
    trialStarted = performance.now()
    await api(a, 'DELETE', '/v1/peers/b')
    await api(b, 'DELETE', '/v1/peers/a')
    await waitFor(async () => !(await isConnected(a, 'b')) && !(await isConnected(b, 'a')), 'peers gone')
    connectMs.push(await connectTrial(a, cardB, b, cardA))
  }
  log(`peer connect, ${PEER_TRIALS} remove/re-add trials: p50 ${Math.round(percentile(connectMs, 50))} ms`)

  // 2. Propose on A (A asks for B's data: A is the consumer, B the provider), accept on B.
  const proposeMs: number[] = []
  const proposeApiMs: number[] = []
  const acceptMs: number[] = []
  const acceptApiMs: number[] = []
  const ids: string[] = []
  for (let i = 0; i < AGREEMENTS; i++) {
    let started = performance.now()
    const proposed = (await api(a, 'POST', '/v1/agreements', {
      peer: 'b',
      grants: [GRANT],
      purpose: `agreements bench ${i}`,
      validUntil: new Date(Date.now() + 86_400_000).toISOString(),
    })) as AgreementJson
    proposeApiMs.push(performance.now() - started)
    if (proposed.state !== 'proposed') throw new Error(`a new proposal is ${proposed.state}`)
    proposeMs.push(await timeUntil(started, b, proposed.id, (state) => state === 'proposed'))

    started = performance.now()
    const accepted = (await api(b, 'POST', `/v1/agreements/${proposed.id}/accept`)) as AgreementJson
    acceptApiMs.push(performance.now() - started)
    if (accepted.state !== 'active') throw new Error(`the provider's accepted agreement is ${accepted.state}`)
    acceptMs.push(await timeUntil(started, a, proposed.id, (state) => state === 'active'))
    ids.push(proposed.id)
  }
  log(
    `${AGREEMENTS} agreements: propose → visible p50 ${Math.round(percentile(proposeMs, 50))} ms, accept → active p50 ${Math.round(percentile(acceptMs, 50))} ms`,
  )

  // 3. Revoke them all, one at a time, alternating the side that revokes.
  const revokeMs: number[] = []
  const revokeByProviderMs: number[] = []
  const revokeByConsumerMs: number[] = []
  const revokeApiMs: number[] = []
  for (const [i, id] of ids.entries()) {
    const [revoker, other] = i % 2 === 0 ? [b, a] : [a, b]
    const started = performance.now()
    const revoked = (await api(revoker, 'POST', `/v1/agreements/${id}/revoke`, {
      reason: 'agreements bench',
    })) as AgreementJson
    revokeApiMs.push(performance.now() - started)
    if (revoked.state !== 'revoked') throw new Error(`a revoked agreement is ${revoked.state} on the revoker`)
    const elapsed = await timeUntil(started, other, id, (state) => state === 'revoked')
    revokeMs.push(elapsed)
    ;(revoker === b ? revokeByProviderMs : revokeByConsumerMs).push(elapsed)
  }
  log(`${ids.length} revocations: p99 ${Math.round(percentile(revokeMs, 99))} ms`)

  // Both sides agree on every agreement's end state.
  for (const node of [a, b]) {
    const list = (await api(node, 'GET', '/v1/agreements')) as AgreementJson[]
    const notRevoked = list.filter((agreement) => agreement.state !== 'revoked')
    if (list.length !== AGREEMENTS || notRevoked.length > 0) {
      throw new Error(`node ${node.name} lists ${list.length} agreements, ${notRevoked.length} not revoked`)
    }
  }
  await Promise.all([a, b].map((node) => stopNode(node)))

  const slow = (values: number[]): number => values.filter((value) => value > SLOW_MS).length
  const metrics = {
    peer_connect_ms: percentile(connectMs, 50),
    peer_connect_p50_ms: percentile(connectMs, 50),
    peer_connect_p99_ms: percentile(connectMs, 99),
    peer_connect_max_ms: Math.max(...connectMs),
    peer_connect_first_ms: firstPeering,
    peer_connect_trials: connectMs.length,
    peer_connect_trial_spacing_ms: PEER_TRIAL_SPACING_MS,
    propose_to_visible_ms: percentile(proposeMs, 50),
    propose_to_visible_p50_ms: percentile(proposeMs, 50),
    propose_to_visible_p99_ms: percentile(proposeMs, 99),
    propose_to_visible_slow: slow(proposeMs),
    propose_api_p50_ms: percentile(proposeApiMs, 50),
    accept_to_active_ms: percentile(acceptMs, 50),
    accept_to_active_p50_ms: percentile(acceptMs, 50),
    accept_to_active_p99_ms: percentile(acceptMs, 99),
    accept_to_active_slow: slow(acceptMs),
    accept_api_p50_ms: percentile(acceptApiMs, 50),
    agreements: AGREEMENTS,
    revocation_to_revoked_p50_ms: percentile(revokeMs, 50),
    revocation_to_revoked_p99_ms: percentile(revokeMs, 99),
    revocation_to_revoked_max_ms: Math.max(...revokeMs),
    revocation_by_provider_p99_ms: percentile(revokeByProviderMs, 99),
    revocation_by_consumer_p99_ms: percentile(revokeByConsumerMs, 99),
    revocation_to_revoked_slow: slow(revokeMs),
    revoke_api_p50_ms: percentile(revokeApiMs, 50),
    revocations: revokeMs.length,
    poll_interval_ms: POLL_MS,
  }

  const ms = (value: number): string => show(value, 'ms')
  const pair = (p50: number, p99: number): string => `${ms(p50)} / ${ms(p99)}`
  const revocationOk = metrics.revocation_to_revoked_p99_ms <= TARGETS.revocation_to_revoked_p99_ms
  const connectRow: TableRow = {
    metric: `peer connect p50 / p99 (${connectMs.length} trials: DELETE + re-POST /v1/peers on both sides, ${show(PEER_TRIAL_SPACING_MS / 1000)} s apart)`,
    value: pair(metrics.peer_connect_p50_ms, metrics.peer_connect_p99_ms),
    reference: '',
  }
  const proposeRow: TableRow = {
    metric: `propose → visible on the peer p50 / p99 (${AGREEMENTS} agreements)`,
    value: pair(metrics.propose_to_visible_p50_ms, metrics.propose_to_visible_p99_ms),
    reference: '',
  }
  const acceptRow: TableRow = {
    metric: `accept → active on the proposer p50 / p99 (${AGREEMENTS} agreements)`,
    value: pair(metrics.accept_to_active_p50_ms, metrics.accept_to_active_p99_ms),
    reference: '',
  }
  const revokeRow: TableRow = {
    metric: `revoke → revoked on the peer p50 / p99 (${revokeMs.length} active agreements)`,
    value: pair(metrics.revocation_to_revoked_p50_ms, metrics.revocation_to_revoked_p99_ms),
    reference: `p99 ≤ ${ms(TARGETS.revocation_to_revoked_p99_ms)} ${revocationOk ? 'ok' : 'MISSED'}`,
  }
  return {
    suite: 'agreements',
    when: new Date().toISOString(),
    machine: machine(),
    metrics,
    baselines: {},
    ratios: {},
    targets: TARGETS,
    table: [
      { metric: 'peer connect, first peering of the fresh pair', value: ms(firstPeering), reference: '' },
      connectRow,
      { metric: 'peer connect max', value: ms(metrics.peer_connect_max_ms), reference: '' },
      proposeRow,
      acceptRow,
      revokeRow,
      {
        metric: 'revoke → revoked p99: by the provider / by the consumer',
        value: pair(metrics.revocation_by_provider_p99_ms, metrics.revocation_by_consumer_p99_ms),
        reference: '',
      },
      { metric: 'revoke → revoked max', value: ms(metrics.revocation_to_revoked_max_ms), reference: '' },
      {
        metric: `steps over ${SLOW_MS} ms: propose / accept / revoke`,
        value: `${metrics.propose_to_visible_slow} / ${metrics.accept_to_active_slow} / ${metrics.revocation_to_revoked_slow}`,
        reference: `of ${AGREEMENTS} / ${AGREEMENTS} / ${revokeMs.length}`,
      },
      {
        metric: 'API answer p50: POST propose / accept / revoke',
        value: `${show(metrics.propose_api_p50_ms)} / ${show(metrics.accept_api_p50_ms)} / ${show(metrics.revoke_api_p50_ms)} ms`,
        reference: 'the local part of each step',
      },
    ],
    headline: [connectRow, acceptRow, revokeRow],
  }
}

// ---------------------------------------------------------------------------------------------
// Nodes and their API

async function startNode(scope: Scope, name: string, dataDir: string, logFile: string): Promise<Node> {
  // Only the flags and the org name configure the node, not the caller's OE_NODE_* settings.
  const { child, api: url } = await launchNode(scope, {
    label: `oe-node ${name}`,
    command: NODE_BINARY,
    args: startArgs(dataDir),
    dataDir,
    logFile,
    env: nodeEnv({ OE_NODE_ORG: `bench-${name}` }),
    pollMs: READY_POLL_MS,
    timeoutMs: READY_TIMEOUT_MS,
  })
  const token = await readAdminToken(dataDir)
  log(`node ${name} ready in ${Math.round(performance.now() - child.spawnedAt)} ms at ${url}`)
  return { name, child, api: url, token }
}

async function stopNode(node: Node): Promise<void> {
  await stopNodeChild(node.child, `oe-node ${node.name}`)
}

const { request, api } = apiClient(WAIT_TIMEOUT_MS)

async function isConnected(node: Node, alias: string): Promise<boolean> {
  const peers = (await api(node, 'GET', '/v1/peers')) as PeerJson[]
  return peers.some((peer) => peer.alias === alias && peer.state === 'connected')
}

/** Poll until `check` holds; throws after WAIT_TIMEOUT_MS. */
async function waitFor(check: () => Promise<boolean>, what: string | (() => string)): Promise<void> {
  const deadline = performance.now() + WAIT_TIMEOUT_MS
  for (;;) {
    if (await check()) return
    if (performance.now() > deadline) {
      const text = typeof what === 'string' ? what : what()
      throw new Error(`timed out after ${WAIT_TIMEOUT_MS} ms waiting for ${text}`)
    }
    await Bun.sleep(POLL_MS)
  }
}

/** Each node adds the other; ms from the second POST until both list the other connected. */
async function connectTrial(a: Node, cardB: string, b: Node, cardA: string): Promise<number> {
  await api(a, 'POST', '/v1/peers', { card: cardB, alias: 'b' })
  const started = performance.now()
  await api(b, 'POST', '/v1/peers', { card: cardA, alias: 'a' })
  const connected = { a: false, b: false }
  await waitFor(async () => {
    const [onA, onB] = await Promise.all([
      connected.a || isConnected(a, 'b'),
      connected.b || isConnected(b, 'a'),
    ])
    connected.a = onA
    connected.b = onB
    return onA && onB
  }, 'both peers to be connected')
  return performance.now() - started
}

/** ms from `started` until `node` shows agreement `id` in a state `accept` likes. */
async function timeUntil(
  started: number,
  node: Node,
  id: string,
  accept: (state: string) => boolean,
): Promise<number> {
  let last = 'not found'
  await waitFor(
    async () => {
      const reply = await request(node, 'GET', `/v1/agreements/${id}`)
      if (reply.status === 404) return false
      if (reply.status !== 200) {
        throw new Error(
          `node ${node.name}: GET /v1/agreements/${id} answered ${reply.status}: ${JSON.stringify(reply.body)}`,
        )
      }
      last = (reply.body as AgreementJson).state
      return accept(last)
    },
    () => `agreement ${id.slice(0, 12)} on node ${node.name} (last state: ${last})`,
  )
  return performance.now() - started
}
