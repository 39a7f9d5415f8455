/**
 * Scale-out (issue 15), with real processes on loopback: a 3-server NATS cluster, 3 replicas of
 * organisation A on it (`oe-node init` each, then the first replica's `keys/node.key` copied
 * over the others, and `--nats-url` to the cluster), and 1 node of organisation B with its own
 * embedded NATS. B asks for A's meter power; A's replicas ingest it (any of them) and the one
 * holding lease `transfer.<id>` sends it. Then, with records flowing:
 * - `kill -9` of the owning replica: another takes the lease within 5 s;
 * - the next owner frozen (SIGSTOP, a stalled or cut-off owner) until a third takes over, then
 *   thawed: it must stop, not send again;
 * - one NATS server killed: the flow goes on;
 * and B holds exactly what A stored: nothing lost, nothing twice. A charging station (ocpp-rpc)
 * connected to the replica that is killed comes back through another and keeps its session, and
 * a command reaches it there. Last, everything is stopped and started again, and the state is
 * all there.
 */
import { copyFile } from 'node:fs/promises'
import { join } from 'node:path'
import { jetstream, jetstreamManager } from '@nats-io/jetstream'
import { connect } from '@nats-io/transport-node'
import { RPCClient } from 'ocpp-rpc'
import { afterAll, describe, expect, test } from 'vitest'
import { encodeCbor, freePort } from '../data-plane/index.ts'
import { api, cardOf, propose, waitAgreementState, waitPeerState } from './helpers/federation.ts'
import {
  type NatsCluster,
  readFromCluster,
  startNatsCluster,
  stopClusters,
  storedOnCluster,
  waitJetStream,
} from './helpers/nats-cluster.ts'
import { cleanupAll, type RunningNode, runCli, startNode, tempDir, waitFor } from './helpers/node-process.ts'
import {
  compare,
  fixedListenArgs,
  METER_POWER_GRANT,
  PROVIDER_ALIAS,
  ranges,
  streamMessages,
  TelemetryFeeder,
  valuesOn,
  waitPeerCount,
} from './helpers/transfer.ts'

const stations: RPCClient[] = []

afterAll(async () => {
  for (const station of stations) await station.close({ force: true }).catch(() => {})
  await cleanupAll()
  await stopClusters()
})

interface StatusJson {
  replica: { id: string }
  replicas: { id: string; addrs: string[]; stale: boolean }[]
  leases: { name: string; owner: string; fence: number; mine: boolean }[]
  nats: { replicas: number; connected: boolean }
}

const status = (node: RunningNode) => api<StatusJson>(node, 'GET', '/v1/status')

interface Replica {
  dataDir: string
  args: string[]
  node: RunningNode
  id: string
  alive: boolean
  /** Where this replica's OCPP central system listens. */
  ocppPort: number
}

const STATION_PASSWORD = 'cp1-secret-password'
const replicaConfig = (ocppPort: number) =>
  `org = "OrgA"\n[plugins.ocpp]\nenabled = true\nlisten = "127.0.0.1:${ocppPort}"\n` +
  `[plugins.ocpp.stations.CP1]\npassword = "${STATION_PASSWORD}"\n`

/** Charging station CP1 (OCPP 1.6, ocpp-rpc) connected to `replica`. */
async function station(replica: Replica, unlocks: string[]): Promise<RPCClient> {
  const client = new RPCClient({
    endpoint: `ws://127.0.0.1:${replica.ocppPort}/ocpp`,
    identity: 'CP1',
    password: STATION_PASSWORD,
    protocols: ['ocpp1.6'],
    strictMode: true,
    reconnect: false,
  } as never)
  stations.push(client)
  client.handle('UnlockConnector', async () => {
    unlocks.push(replica.id)
    return { status: 'Unlocked' }
  })
  await client.connect()
  return client
}

/** The events on `subject` in A's OE_EVT, read from the cluster. */
const eventsOnCluster = async (url: string, subject: string) =>
  (await readFromCluster(url, 'OE_EVT', subject)).map(({ data }) => data as Record<string, unknown>)

/** The replica holding `transfer.<id>`, as the live replicas report it (all must agree). */
async function owner(replicas: Replica[], id: string): Promise<Replica | undefined> {
  const owners = new Set<string>()
  for (const replica of replicas.filter((r) => r.alive)) {
    const lease = (await status(replica.node)).leases.find((l) => l.name === `transfer.${id}` && l.mine)
    if (lease) owners.add(replica.id)
  }
  if (owners.size > 1) throw new Error(`two replicas hold the lease at once: ${[...owners].join(', ')}`)
  const [ownerId] = owners
  return replicas.find((r) => r.id === ownerId)
}

async function waitOwner(replicas: Replica[], id: string, not?: Replica): Promise<Replica> {
  let found: Replica | undefined
  await waitFor(
    async () => {
      found = await owner(replicas, id)
      return found !== undefined && found !== not
    },
    15_000,
    'a replica to own the transfer',
  )
  return found!
}

/** On a failure: each node's view of the flow, and its transfer and lease log lines. */
async function diagnose(nodes: RunningNode[], id: string): Promise<void> {
  for (const node of nodes) {
    const flow = await api<{ flow: unknown }>(node, 'GET', `/v1/agreements/${id}`).catch((e) => String(e))
    const lines = node
      .stderr()
      .split('\n')
      .filter(
        (line) => /transfer|lease|session|refused|error|warn/i.test(line) && !line.includes('"level":20'),
      )
    console.log(`── ${node.dataDir}\n${JSON.stringify(flow)}\n${lines.slice(-40).join('\n')}`)
  }
}

describe('scale-out: replicas of one node on a NATS cluster', () => {
  let cluster: NatsCluster
  const replicas: Replica[] = []
  let consumer: RunningNode
  let consumerArgs: string[]
  let id = ''
  const accepted = new Set<number>()

  test('3 replicas of A on a 3-server cluster peer as one organisation with B', async () => {
    cluster = await startNatsCluster()
    const dirs = await Promise.all([0, 1, 2].map(() => tempDir('oe-replica-')))
    const inits = await Promise.all(
      dirs.map((dir) => runCli(['--data-dir', dir, 'init', '--org', 'OrgA', '--json'])),
    )
    expect(inits.map((r) => r.code)).toEqual([0, 0, 0])
    // The organisation's identity: the first replica's key, copied before the others' first start.
    for (const dir of dirs.slice(1))
      await copyFile(join(dirs[0]!, 'keys', 'node.key'), join(dir, 'keys', 'node.key'))
    const listens = await Promise.all(dirs.map(() => fixedListenArgs()))
    const ocppPorts = await Promise.all(dirs.map(() => freePort()))
    const start = (i: number) =>
      startNode({
        dataDir: dirs[i]!,
        config: replicaConfig(ocppPorts[i]!),
        args: [...listens[i]!, '--nats-url', cluster.url],
        listen: [],
        readyTimeoutMs: 60_000,
      })
    // The first creates the replicated streams and buckets (seconds on a busy host); the others
    // find them.
    const firstNode = await start(0)
    const nodes = [firstNode, ...(await Promise.all([start(1), start(2)]))]
    for (const [i, node] of nodes.entries()) {
      const s = await status(node)
      replicas.push({
        dataDir: dirs[i]!,
        args: [...listens[i]!, '--nats-url', cluster.url],
        node,
        id: s.replica.id,
        alive: true,
        ocppPort: ocppPorts[i]!,
      })
    }
    expect(new Set(replicas.map((r) => r.id)).size).toBe(3)
    // Streams and buckets are kept in 3 copies on a 3-server cluster.
    expect((await status(replicas[0]!.node)).nats.replicas).toBe(3)
    const nc = await connect({ servers: cluster.url.split(',') })
    try {
      const jsm = await jetstreamManager(nc)
      for (const stream of ['OE_TEL', 'OE_PEER', 'KV_oe-agreements', 'KV_oe-leases', 'KV_oe-transfer'])
        expect((await jsm.streams.info(stream)).config.num_replicas, stream).toBe(3)
    } finally {
      await nc.close()
    }
    // Every replica sees the three, and the card lists every replica's address.
    await waitFor(
      async () =>
        (await Promise.all(replicas.map((r) => status(r.node)))).every((s) => s.replicas.length === 3),
      10_000,
      'each replica to see the three',
    )
    const card = await api<{ card: { addrs: string[]; peerId: string } }>(
      replicas[0]!.node,
      'GET',
      '/v1/card',
    )
    const ports = new Set(card.card.addrs.map((addr) => addr.split('/tcp/')[1]?.split('/')[0]))
    expect(ports.size).toBe(3)

    consumerArgs = await fixedListenArgs()
    consumer = await startNode({ config: 'org = "OrgB"\n', args: consumerArgs, listen: [] })
    // A adds B once (on any replica); B adds A's card. Every replica connects to B.
    await api(replicas[1]!.node, 'POST', '/v1/peers', { card: await cardOf(consumer), alias: 'cons' })
    await api(consumer, 'POST', '/v1/peers', { card: await cardOf(replicas[0]!.node), alias: PROVIDER_ALIAS })
    for (const replica of replicas) await waitPeerState(replica.node, 'cons', 'connected')
    await waitPeerState(consumer, PROVIDER_ALIAS, 'connected')

    id = await propose(consumer, PROVIDER_ALIAS, { grants: [METER_POWER_GRANT] })
    for (const replica of replicas) await waitAgreementState(replica.node, id, 'proposed')
    await api(replicas[2]!.node, 'POST', `/v1/agreements/${id}/accept`)
    await waitAgreementState(consumer, id, 'active')
    for (const replica of replicas) await waitAgreementState(replica.node, id, 'active')
    await waitOwner(replicas, id)
  }, 90_000)

  test('kill -9 of the owner, a frozen owner and a dead NATS server: nothing lost or twice', async () => {
    expect(id).not.toBe('')
    const first = await waitOwner(replicas, id)
    // Ingest through a replica that will survive; every replica stores into the same streams.
    let second: Replica | undefined
    const ingest = () => replicas.find((r) => r.alive && r !== first && r !== second)!
    const feedStart = Date.now()
    const feeder = new TelemetryFeeder(ingest().node, { total: 20_000, batch: 500, pauseMs: 10 }).start()
    await feeder.whenAccepted(5_000)
    await waitFor(async () => (await streamMessages(consumer, 'OE_PEER')) > 0, 15_000, 'data to reach B')
    // A station charging through the replica about to die.
    const unlocks: string[] = []
    const t0 = Date.now()
    const iso = (ms: number) => new Date(ms).toISOString()
    const atFirst = await station(first, unlocks)
    await atFirst.call('BootNotification', { chargePointVendor: 'ACME', chargePointModel: 'Wallbox' })
    const { transactionId } = (await atFirst.call('StartTransaction', {
      connectorId: 1,
      idTag: 'DRIVER1',
      meterStart: 1_000,
      timestamp: iso(t0),
    })) as { transactionId: number }
    await atFirst.call('MeterValues', {
      connectorId: 1,
      transactionId,
      meterValue: [
        {
          timestamp: iso(t0 + 1_000),
          sampledValue: [{ value: '4000', measurand: 'Energy.Active.Import.Register' }],
        },
      ],
    })

    // kill -9 of the owning replica, mid-stream.
    const killedAt = Date.now()
    await first.node.kill()
    first.alive = false
    second = await waitOwner(replicas, id, first)
    const takeoverMs = Date.now() - killedAt
    console.log(`[scale-out] takeover after kill -9 in ${takeoverMs} ms (${first.id} → ${second.id})`)
    expect(takeoverMs).toBeLessThanOrEqual(5_000)
    feeder.target = ingest().node

    // The station reconnects to a live replica and ends its session there; a command published
    // on A's data plane reaches it through whichever replica takes the command.
    const home = ingest()
    const atHome = await station(home, unlocks)
    await atHome.call('Heartbeat', {})
    await atHome.call('StopTransaction', { transactionId, meterStop: 8_500, timestamp: iso(t0 + 2_000) })
    const nc = await connect({ servers: cluster.url.split(',') })
    try {
      await jetstream(nc).publish(
        'oe.ctl.evse.CP1-1.unlock_connector',
        encodeCbor({ request: 'scale-out-unlock', source: 'test', connector: 1 }),
      )
    } finally {
      await nc.close()
    }
    await waitFor(() => unlocks.length > 0, 10_000, 'the unlock to reach the station')
    expect(unlocks).toEqual([home.id])
    await waitFor(
      async () => (await eventsOnCluster(cluster.url, 'oe.evt.evse.CP1-1.session_stopped')).length > 0,
      10_000,
      'the session to end',
    )
    const started = await eventsOnCluster(cluster.url, 'oe.evt.evse.CP1-1.session_started')
    const stopped = await eventsOnCluster(cluster.url, 'oe.evt.evse.CP1-1.session_stopped')
    expect(started.filter((event) => event.transactionId === String(transactionId))).toHaveLength(1)
    expect(stopped).toEqual([
      expect.objectContaining({ transactionId: String(transactionId), energyWh: 7_500, idTag: 'DRIVER1' }),
    ])
    await atHome.close({ force: true })

    // The new owner stalls (frozen, as if cut off): the third takes over; thawed, it must stop.
    await feeder.whenAccepted(11_000)
    second.node.process.kill('SIGSTOP')
    const frozenAt = Date.now()
    const third = await waitOwner(
      replicas.map((r) => (r === second ? { ...r, alive: false } : r)),
      id,
      second,
    )
    console.log(`[scale-out] takeover from a frozen owner in ${Date.now() - frozenAt} ms (→ ${third.id})`)
    expect(Date.now() - frozenAt).toBeLessThanOrEqual(8_000)
    second.node.process.kill('SIGCONT')
    // Thawed, it knows its lease ran out: it does not hold it.
    await waitFor(
      async () => (await owner(replicas, id))?.id === third.id,
      10_000,
      'one owner after the thaw',
    )

    // One NATS server dies; ingest and the flow go on over the other two.
    await feeder.done()
    const feedRate = Math.round(feeder.accepted.size / ((Date.now() - feedStart) / 1000))
    await cluster.servers[0]!.kill()
    // A replica whose connection was to that server reconnects to another (its API answers 503
    // meanwhile, and clients retry).
    await waitFor(async () => (await ingest().node.fetch('/readyz')).status === 200, 20_000, 'ingest ready')
    // The two servers left elect new leaders for what the dead one led (the stream answers).
    await waitJetStream(cluster.url, 30_000)
    await storedOnCluster(cluster.url)
    const after = new TelemetryFeeder(ingest().node, { total: 26_000, batch: 500, pauseMs: 10 }).skip(20_000)
    await after.start().done()
    // Records were ingested after the server died, and (below) every one reached B.
    expect(
      after.accepted.size,
      `after the server died: ${after.errors.slice(0, 3).join(' | ')}`,
    ).toBeGreaterThan(0)
    for (const v of [...feeder.accepted, ...after.accepted]) accepted.add(v)

    // The two servers left elect new leaders for what the dead one led.
    await waitJetStream(cluster.url, 30_000)
    const stored = await storedOnCluster(cluster.url)
    const { count } = await waitPeerCount(() => consumer, stored.length, { timeoutMs: 60_000 })
    const received = await valuesOn(consumer, `oe.peer.${PROVIDER_ALIAS}.tel.meter.*.power`)
    const result = compare(accepted, stored, received)
    if (received.length !== stored.length || stored.length === 0)
      await diagnose([...replicas.map((r) => r.node), consumer], id)
    console.log(
      `[scale-out] fed at ${feedRate} records/s through the faults; accepted ${accepted.size}, uncertain ${feeder.uncertain.size + after.uncertain.size}, stored ${stored.length}, ` +
        `received ${received.length} (OE_PEER ${count}); lost ${result.lost.length}, duplicated ${result.duplicated.length}; ` +
        `errors: ${[...feeder.errors, ...after.errors].slice(0, 3).join(' | ')}`,
    )
    expect(accepted.size).toBeGreaterThanOrEqual(20_000)
    expect(new Set(stored.map((m) => m.v)).size).toBe(stored.length)
    expect(ranges(result.lostAtProvider)).toBe('')
    expect({
      lost: ranges(result.lost),
      duplicated: ranges(result.duplicated.map(([v]) => v)),
      unexpected: ranges(result.unexpected),
      outOfOrder: result.outOfOrder.slice(0, 5),
    }).toEqual({ lost: '', duplicated: '', unexpected: '', outOfOrder: [] })
    expect(received.length).toBe(stored.length)
    await cluster.servers[0]!.start()
  }, 150_000)

  test('everything stopped and started again: the state is all there', async () => {
    expect(id).not.toBe('')
    const before = await streamMessages(consumer, 'OE_PEER')
    for (const replica of replicas.filter((r) => r.alive)) await replica.node.stop()
    await consumer.stop()
    for (const server of cluster.servers) await server.kill()
    await Promise.all(cluster.servers.map((server) => server.start()))
    await waitJetStream(cluster.url)
    for (const [i, replica] of replicas.entries()) {
      replica.node = await startNode({
        dataDir: replica.dataDir,
        args: replica.args,
        listen: [],
        readyTimeoutMs: 60_000,
      })
      replica.alive = true
      expect((await status(replica.node)).replica.id, `replica ${i} keeps its id`).toBe(replica.id)
    }
    consumer = await startNode({ dataDir: consumer.dataDir, args: consumerArgs, listen: [] })
    for (const replica of replicas) await waitAgreementState(replica.node, id, 'active')
    await waitAgreementState(consumer, id, 'active')
    const peers = await api<{ alias: string }[]>(replicas[0]!.node, 'GET', '/v1/peers')
    expect(peers.map((p) => p.alias)).toEqual(['cons'])
    expect(await streamMessages(consumer, 'OE_PEER')).toBe(before)
    // A replica on an empty disk (init, the organisation's key, the cluster) catches up from it.
    const emptyDir = await tempDir('oe-replica-')
    expect((await runCli(['--data-dir', emptyDir, 'init', '--org', 'OrgA', '--json'])).code).toBe(0)
    await copyFile(join(replicas[0]!.dataDir, 'keys', 'node.key'), join(emptyDir, 'keys', 'node.key'))
    const fresh = await startNode({
      dataDir: emptyDir,
      config: replicaConfig(await freePort()),
      args: [...(await fixedListenArgs()), '--nats-url', cluster.url],
      listen: [],
      readyTimeoutMs: 60_000,
    })
    await waitAgreementState(fresh, id, 'active')
    expect((await api<{ alias: string }[]>(fresh, 'GET', '/v1/peers')).map((p) => p.alias)).toEqual(['cons'])
    const freshId = (await status(fresh)).replica.id
    await waitFor(
      async () => (await status(replicas[0]!.node)).replicas.some((r) => r.id === freshId && !r.stale),
      10_000,
      'the other replicas to list the new one',
    )
    await fresh.stop()
    // And the flow resumes exactly once from where it was.
    // Values from 26,000 on: the earlier feeders used everything below.
    const more = new TelemetryFeeder(replicas[1]!.node, { total: 28_000, batch: 500, pauseMs: 5 }).skip(
      26_000,
    )
    await more.start().done()
    const stored = await storedOnCluster(cluster.url)
    await waitPeerCount(() => consumer, stored.length, { timeoutMs: 60_000 })
    const received = await valuesOn(consumer, `oe.peer.${PROVIDER_ALIAS}.tel.meter.*.power`)
    const result = compare(new Set([...accepted, ...more.accepted]), stored, received)
    expect({
      lost: ranges(result.lost),
      duplicated: ranges(result.duplicated.map(([v]) => v)),
      lostAtProvider: ranges(result.lostAtProvider),
    }).toEqual({ lost: '', duplicated: '', lostAtProvider: '' })
    expect(received.length).toBe(stored.length)
  }, 150_000)
})
