/**
 * OCPP across replicas (issue 15): one nats-server, two plugin hosts with the OCPP plugin
 * (two "replicas" of one node: their own data folders, ports and NATS connections, one set of
 * streams and KV buckets). A legacy `state.json` is moved into JetStream KV once and the
 * replica with an empty disk sees it; a station that moves from one replica to the other keeps
 * its sessions (one session, the right energy, transaction ids that continue); a command
 * published on the data plane reaches the station whichever replica takes it, and only a
 * station that no replica holds is answered Offline.
 */
import { access, mkdir, readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import type { NatsConnection, Subscription } from '@nats-io/nats-core'
import { RPCClient } from 'ocpp-rpc'
import { type Counter, Registry } from 'prom-client'
import { afterAll, beforeAll, expect, test } from 'vitest'
import {
  connectDataPlane,
  DataPlane,
  decodeCbor,
  EmbeddedNatsServer,
  encodeCbor,
  type RetentionLimits,
  STREAMS,
  subjects,
} from '../data-plane/index.ts'
import { createRecordingLogger } from '../plugins/compliance.ts'
import { PluginHost } from '../plugins/index.ts'
import { ocppPlugin } from '../plugins/ocpp/index.ts'
import { cleanupAll, tempDir, waitFor } from './helpers/node-process.ts'

const PASSWORDS: Record<string, string> = {
  MIG16: 'pw-mig16-secret',
  MOVE16: 'pw-move16-secret',
  MOVE201: 'pw-move201-secret',
  A16: 'pw-a16-secret',
  B201: 'pw-b201-secret',
}

interface Replica {
  dir: string
  connection: NatsConnection
  dataPlane: DataPlane
  host: PluginHost
  registry: Registry
  port: number
}

let server: EmbeddedNatsServer
let replicas: [Replica, Replica]
let watcher: NatsConnection
let events: Subscription
const received: { subject: string; data: Record<string, unknown> }[] = []
const clients: RPCClient[] = []
const logger = createRecordingLogger()
const limits = Object.fromEntries(
  Object.keys(STREAMS).map((name) => [name, { maxAgeMs: 0, maxBytes: -1 }]),
) as RetentionLimits

/** What an earlier version left in `<data-dir>/plugins/ocpp/state.json`. */
const LEGACY_STATE = {
  v: 1,
  nextTransactionId: 500,
  sessions: [
    { station: 'MIG16', evse: 1, transactionId: '499', startedAt: Date.now() - 60_000, meterStartWh: 10_000 },
  ],
  limits: [{ station: 'MIG16', evse: 1, watts: 3_680, source: 'dso' }],
}

async function replica(dir: string): Promise<Replica> {
  const connection = await connectDataPlane({ servers: server.url, ...server.credentials })
  const dataPlane = new DataPlane({ limits }, { connection, logger })
  await dataPlane.start()
  const registry = new Registry()
  const stations = Object.fromEntries(Object.entries(PASSWORDS).map(([id, password]) => [id, { password }]))
  const host = new PluginHost(
    {
      config: { ocpp: { enabled: true, listen: '127.0.0.1:0', call_timeout: 5, stations } },
      dir: join(dir, 'plugins'),
    },
    { dataPlane, logger, registry, definitions: [ocppPlugin] },
  )
  await host.start()
  const port = Number(String(host.status()[0]!.listen).split(':').pop())
  return { dir, connection, dataPlane, host, registry, port }
}

beforeAll(async () => {
  const dir = await tempDir('oe-ocpp-replicas-')
  server = new EmbeddedNatsServer({ dir: join(dir, 'nats') }, { logger })
  await server.start()
  watcher = await connectDataPlane({ servers: server.url, ...server.credentials })
  events = watcher.subscribe('oe.evt.>', {
    callback: (error, msg) => {
      if (!error)
        received.push({ subject: msg.subject, data: decodeCbor(msg.data) as Record<string, unknown> })
    },
  })
  // Replica 1 has the legacy file; replica 2 starts on an empty disk.
  await mkdir(join(dir, 'r1', 'plugins', 'ocpp'), { recursive: true, mode: 0o700 })
  await writeFile(join(dir, 'r1', 'plugins', 'ocpp', 'state.json'), JSON.stringify(LEGACY_STATE))
  await mkdir(join(dir, 'r2'), { recursive: true })
  replicas = [await replica(join(dir, 'r1')), await replica(join(dir, 'r2'))]
}, 30_000)

afterAll(async () => {
  for (const client of clients) await client.close({ force: true }).catch(() => {})
  for (const { host, dataPlane, connection } of replicas ?? []) {
    await host.stop()
    await dataPlane.stop()
    await connection.close()
  }
  events?.unsubscribe()
  await watcher?.close()
  await server?.stop()
  await cleanupAll()
})

const profiles: { station: string; params: Record<string, unknown> }[] = []
const unlocks: string[] = []

async function connect(id: string, to: Replica, version: 'ocpp1.6' | 'ocpp2.0.1'): Promise<RPCClient> {
  const client = new RPCClient({
    endpoint: `ws://127.0.0.1:${to.port}/ocpp`,
    identity: id,
    password: PASSWORDS[id],
    protocols: [version],
    strictMode: true,
    reconnect: false,
  } as never)
  clients.push(client)
  client.handle('SetChargingProfile', async ({ params }) => {
    profiles.push({ station: id, params: params as Record<string, unknown> })
    return { status: 'Accepted' }
  })
  client.handle('UnlockConnector', async () => {
    unlocks.push(id)
    return { status: 'Unlocked' }
  })
  await client.connect()
  return client
}

const iso = (ms: number) => new Date(ms).toISOString()
const eventsOf = (subject: string) =>
  received.filter((event) => event.subject === subject).map((event) => event.data)

async function counter(of: Replica, name: string): Promise<number> {
  const metric = of.registry.getSingleMetric(`oe_plugin_ocpp_${name}`) as Counter | undefined
  return metric ? ((await metric.get()).values[0]?.value ?? 0) : 0
}

test('a legacy state.json moves into KV once; the replica with an empty disk sees it', async () => {
  const legacy = join(replicas[0].dir, 'plugins', 'ocpp', 'state.json')
  await expect(access(legacy)).rejects.toThrow()
  expect(JSON.parse(await readFile(`${legacy}.migrated`, 'utf8'))).toEqual(LEGACY_STATE)
  // The station reconnects to replica 2 (which never saw the file): its limit is sent again
  // after boot, and the session it opened before the upgrade ends with the right energy.
  const client = await connect('MIG16', replicas[1], 'ocpp1.6')
  await client.call('BootNotification', { chargePointVendor: 'ACME', chargePointModel: 'Wallbox' })
  await waitFor(() => profiles.some((profile) => profile.station === 'MIG16'), 10_000, 'the limit resent')
  expect(profiles.find((profile) => profile.station === 'MIG16')!.params).toMatchObject({
    connectorId: 1,
    csChargingProfiles: { chargingSchedule: { chargingSchedulePeriod: [{ startPeriod: 0, limit: 3_680 }] } },
  })
  await client.call('StopTransaction', { transactionId: 499, meterStop: 12_500, timestamp: iso(Date.now()) })
  await waitFor(() => eventsOf('oe.evt.evse.MIG16-1.session_stopped').length > 0)
  expect(eventsOf('oe.evt.evse.MIG16-1.session_stopped')).toEqual([
    expect.objectContaining({ transactionId: '499', energyWh: 2_500, meterStopWh: 12_500 }),
  ])
  await client.close({ force: true })
})

test('a 1.6 station moves to the other replica mid-session: one session, the right energy, ids continue', async () => {
  const t0 = Date.now()
  const first = await connect('MOVE16', replicas[0], 'ocpp1.6')
  await first.call('BootNotification', { chargePointVendor: 'ACME', chargePointModel: 'Wallbox' })
  const { transactionId } = (await first.call('StartTransaction', {
    connectorId: 1,
    idTag: 'DRIVER1',
    meterStart: 1_000,
    timestamp: iso(t0),
  })) as { transactionId: number }
  // The counter migrated from state.json goes on.
  expect(transactionId).toBe(500)
  await first.call('MeterValues', {
    connectorId: 1,
    transactionId,
    meterValue: [
      {
        timestamp: iso(t0 + 1_000),
        sampledValue: [{ value: '4000', measurand: 'Energy.Active.Import.Register' }],
      },
    ],
  })
  // The station comes back through replica 2 before replica 1 noticed its old socket is dead.
  const second = await connect('MOVE16', replicas[1], 'ocpp1.6')
  await second.call('Heartbeat', {})
  await first.close({ force: true })
  await second.call('StopTransaction', { transactionId, meterStop: 8_500, timestamp: iso(t0 + 2_000) })
  const next = (await second.call('StartTransaction', {
    connectorId: 1,
    idTag: 'DRIVER1',
    meterStart: 8_500,
    timestamp: iso(t0 + 3_000),
  })) as { transactionId: number }
  expect(next.transactionId).toBe(501)
  await waitFor(() => eventsOf('oe.evt.evse.MOVE16-1.session_stopped').length > 0)
  const started = eventsOf('oe.evt.evse.MOVE16-1.session_started')
  expect(started.filter((event) => event.transactionId === '500')).toHaveLength(1)
  expect(eventsOf('oe.evt.evse.MOVE16-1.session_stopped')).toEqual([
    expect.objectContaining({ transactionId: '500', energyWh: 7_500, durationS: 2, idTag: 'DRIVER1' }),
  ])
  // The move is not an outage: replica 1 saw the station at replica 2 and said nothing.
  await new Promise((resolve) => setTimeout(resolve, 300))
  expect(eventsOf('oe.evt.station.MOVE16.offline')).toEqual([])
  await second.close({ force: true })
})

test('a 2.0.1 station ends at the other replica without a final register: the last one stored counts', async () => {
  const t0 = Date.now()
  const register = (wh: number, t: number) => [
    { timestamp: iso(t), sampledValue: [{ value: wh, measurand: 'Energy.Active.Import.Register' }] },
  ]
  const first = await connect('MOVE201', replicas[0], 'ocpp2.0.1')
  const base = { transactionInfo: { transactionId: 'tx-move' }, seqNo: 0 }
  await first.call('TransactionEvent', {
    ...base,
    eventType: 'Started',
    timestamp: iso(t0),
    triggerReason: 'CablePluggedIn',
    evse: { id: 1, connectorId: 1 },
    meterValue: register(1_000, t0),
  })
  await first.call('TransactionEvent', {
    ...base,
    seqNo: 1,
    eventType: 'Updated',
    timestamp: iso(t0 + 1_000),
    triggerReason: 'MeterValuePeriodic',
    meterValue: register(3_000, t0 + 1_000),
  })
  await first.close({ force: true })
  const second = await connect('MOVE201', replicas[1], 'ocpp2.0.1')
  await second.call('TransactionEvent', {
    ...base,
    seqNo: 2,
    eventType: 'Ended',
    timestamp: iso(t0 + 2_000),
    triggerReason: 'EVCommunicationLost',
  })
  await waitFor(() => eventsOf('oe.evt.evse.MOVE201-1.session_stopped').length > 0)
  expect(eventsOf('oe.evt.evse.MOVE201-1.session_started')).toHaveLength(1)
  expect(eventsOf('oe.evt.evse.MOVE201-1.session_stopped')).toEqual([
    expect.objectContaining({ transactionId: 'tx-move', energyWh: 2_000, meterStopWh: 3_000 }),
  ])
  await second.close({ force: true })
})

test('a command reaches its station whichever replica takes it; Offline only when no replica holds it', async () => {
  const a = await connect('A16', replicas[0], 'ocpp1.6')
  await a.call('BootNotification', { chargePointVendor: 'ACME', chargePointModel: 'Wallbox' })
  const b = await connect('B201', replicas[1], 'ocpp2.0.1')
  await b.call('BootNotification', {
    reason: 'PowerUp',
    chargingStation: { vendorName: 'ACME', model: 'Pillar' },
  })
  const before = [
    await counter(replicas[0], 'commands_forwarded_total'),
    await counter(replicas[1], 'commands_forwarded_total'),
  ]
  // An irregular order, so no way of sharing the commands out gives each replica only its own.
  const order = 'ABBABAABAABBBABA'.split('').map((letter) => (letter === 'A' ? 'A16-1' : 'B201-1'))
  const published = order.map((rid, index) => ({ rid, request: `unlock-${index}` }))
  for (const { rid, request } of published) {
    await replicas[0].dataPlane.publishConfirmed([
      {
        subject: subjects.control('evse', rid, 'unlock_connector'),
        payload: encodeCbor({ request, source: 'test', connector: 1 }),
      },
    ])
  }
  const resultOf = (rid: string, request: string) =>
    eventsOf(`oe.evt.evse.${rid}.control_result`).find((event) => event.request === request)
  await waitFor(
    () => published.every(({ rid, request }) => resultOf(rid, request) !== undefined),
    15_000,
    'every result',
  )
  for (const { rid, request } of published)
    expect(resultOf(rid, request), request).toMatchObject({ status: 'Accepted', ocppStatus: 'Unlocked' })
  expect(unlocks.filter((id) => id === 'A16')).toHaveLength(order.filter((rid) => rid === 'A16-1').length)
  expect(unlocks.filter((id) => id === 'B201')).toHaveLength(order.filter((rid) => rid === 'B201-1').length)
  // Both replicas took commands, and those for the other replica's station went over NATS.
  expect(await counter(replicas[0], 'commands_total')).toBeGreaterThan(0)
  expect(await counter(replicas[1], 'commands_total')).toBeGreaterThan(0)
  const forwarded =
    (await counter(replicas[0], 'commands_forwarded_total')) +
    (await counter(replicas[1], 'commands_forwarded_total')) -
    before[0]! -
    before[1]!
  expect(forwarded).toBeGreaterThan(0)

  // Gone from every replica: Offline, whichever replica takes the command.
  await a.close({ force: true })
  await waitFor(() => eventsOf('oe.evt.station.A16.offline').length > 0, 10_000, 'A16 offline')
  for (const request of ['gone-1', 'gone-2', 'gone-3', 'gone-4']) {
    await replicas[1].dataPlane.publishConfirmed([
      {
        subject: subjects.control('evse', 'A16-1', 'unlock_connector'),
        payload: encodeCbor({ request, source: 'test' }),
      },
    ])
  }
  await waitFor(
    () => ['gone-1', 'gone-2', 'gone-3', 'gone-4'].every((request) => resultOf('A16-1', request)),
    10_000,
    'the Offline results',
  )
  for (const request of ['gone-1', 'gone-2', 'gone-3', 'gone-4'])
    expect(resultOf('A16-1', request)).toMatchObject({ status: 'Offline' })
  await b.close({ force: true })
})
