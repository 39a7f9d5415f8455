/**
 * The OCPP plugin in a real node, with real charging stations (ocpp-rpc's RPCClient) and raw
 * WebSocket clients: boot → resources, full sessions in both versions → canonical telemetry value
 * by value, malformed traffic answered with the right CALLERRORs while the node stays healthy,
 * refused upgrades, limit_power → SetChargingProfile → limit_result, operator actions,
 * offline detection, and TLS with auto_accept.
 */

import { execFileSync } from 'node:child_process'
import { readFile } from 'node:fs/promises'
import { connect as connectTcp } from 'node:net'
import { join } from 'node:path'
import { connect } from '@nats-io/transport-node'
import { encode as encodeCbor } from 'cbor-x'
import { Command } from 'commander'
import { RPCClient } from 'ocpp-rpc'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { registerOcpp } from '../cli/commands/ocpp.ts'
import { freePort } from '../data-plane/index.ts'
import { api } from './helpers/federation.ts'
import {
  cleanupAll,
  metricValue,
  type RunningNode,
  readSubject,
  startNode,
  type TailMessage,
  tempDir,
  waitFor,
} from './helpers/node-process.ts'

let node: RunningNode
let port: number
const clients: RPCClient[] = []

const PASSWORDS = {
  CS16: 'pw-16-secret',
  CS201: 'pw-201-secret',
  RAW1: 'raw-secret',
  SILENT: 'quiet',
  HARD16: 'hard-16-secret',
  HARD201: 'hard-201-secret',
}

beforeAll(async () => {
  port = await freePort()
  const stations = Object.entries(PASSWORDS)
    .map(([id, password]) => `[plugins.ocpp.stations.${id}]\npassword = "${password}"\n`)
    .join('')
  node = await startNode({
    config: `org = "CPO"\n[plugins.ocpp]\nenabled = true\nlisten = "127.0.0.1:${port}"\nheartbeat_interval = 2\nmax_message_bytes = 65536\n${stations}`,
  })
})

afterAll(async () => {
  for (const client of clients) await client.close({ force: true }).catch(() => {})
  await cleanupAll()
})

function station(
  id: string,
  version: 'ocpp1.6' | 'ocpp2.0.1',
  options: { password?: string; endpoint?: string; wsOpts?: unknown } = {},
): RPCClient {
  const client = new RPCClient({
    endpoint: options.endpoint ?? `ws://127.0.0.1:${port}/ocpp`,
    identity: id,
    password: options.password ?? PASSWORDS[id as keyof typeof PASSWORDS],
    protocols: [version],
    strictMode: true,
    reconnect: false,
    ...(options.wsOpts ? { wsOpts: options.wsOpts } : {}),
  } as never)
  clients.push(client)
  return client
}

const iso = (ms: number) => new Date(ms).toISOString()

async function resource(kind: string, rid: string): Promise<Record<string, unknown>> {
  return (await api<{ resource: Record<string, unknown> }>(node, 'GET', `/v1/resources/${kind}/${rid}`))
    .resource
}

async function readyz(target = node): Promise<number> {
  return (await fetch(`${target.api}/readyz`)).status
}

/** Telemetry on a node as `q → [[v, t], …]`, from the stream. */
async function telemetryOf(target: RunningNode, prefix: string): Promise<Record<string, [number, number][]>> {
  const messages = await readSubject(target, `${prefix}.>`, 400)
  const out: Record<string, [number, number][]> = {}
  for (const message of messages) {
    const q = message.subject.slice(prefix.length + 1)
    const series = out[q] ?? []
    series.push([message.data.v!, message.data.t!])
    out[q] = series
  }
  return out
}

async function eventsOf(subject: string, type?: string, settle = 300): Promise<TailMessage[]> {
  const messages = await readSubject(node, subject, settle)
  return type ? messages.filter((m) => m.subject.endsWith(`.${type}`)) : messages
}

describe('connections', () => {
  test('a 1.6 and a 2.0.1 station boot with their passwords and become station resources', async () => {
    const cs16 = station('CS16', 'ocpp1.6')
    await cs16.connect()
    expect(cs16.protocol).toBe('ocpp1.6')
    const boot16 = (await cs16.call('BootNotification', {
      chargePointVendor: 'ACME',
      chargePointModel: 'Wallbox-16',
      chargePointSerialNumber: 'SN-16',
      firmwareVersion: '1.6.3',
    })) as { status: string; interval: number }
    expect(boot16).toMatchObject({ status: 'Accepted', interval: 2 })

    const cs201 = station('CS201', 'ocpp2.0.1')
    await cs201.connect()
    expect(cs201.protocol).toBe('ocpp2.0.1')
    const boot201 = await cs201.call('BootNotification', {
      reason: 'PowerUp',
      chargingStation: {
        vendorName: 'Volt',
        model: 'DC-201',
        serialNumber: 'SN-201',
        firmwareVersion: '2.0',
      },
    })
    expect(boot201).toMatchObject({ status: 'Accepted', interval: 2 })
    expect(await cs201.call('Heartbeat', {})).toHaveProperty('currentTime')

    const resource16 = await resource('station', 'CS16')
    expect(resource16).toMatchObject({
      kind: 'station',
      rid: 'CS16',
      attrs: { vendor: 'ACME', model: 'Wallbox-16', serial: 'SN-16', firmware: '1.6.3', ocppVersion: '1.6' },
    })
    const resource201 = await resource('station', 'CS201')
    expect(resource201).toMatchObject({
      attrs: { vendor: 'Volt', model: 'DC-201', serial: 'SN-201', firmware: '2.0', ocppVersion: '2.0.1' },
    })
    const standing = await readSubject(node, 'oe.std.station.CS16', 300)
    expect(standing.at(-1)!.data).toMatchObject({ rid: 'CS16', attrs: { vendor: 'ACME' } })

    // Status notifications: events and EVSE resources.
    await cs16.call('StatusNotification', { connectorId: 1, errorCode: 'NoError', status: 'Available' })
    await cs201.call('StatusNotification', {
      timestamp: iso(Date.now()),
      connectorStatus: 'Available',
      evseId: 1,
      connectorId: 1,
    })
    const status16 = await eventsOf('oe.evt.evse.CS16-1.status')
    expect(status16.at(-1)!.data).toMatchObject({ status: 'Available', errorCode: 'NoError' })
    const status201 = await eventsOf('oe.evt.evse.CS201-1.status')
    expect(status201.at(-1)!.data).toMatchObject({ status: 'Available', connector: 1 })
    expect(await resource('evse', 'CS201-1')).toMatchObject({
      attrs: { station: 'CS201', evse: 1 },
    })
    expect((await eventsOf('oe.evt.station.CS16.online')).length).toBeGreaterThanOrEqual(1)

    const plugins = await api<{ id: string; stations: unknown; versions: unknown; listen: string }[]>(
      node,
      'GET',
      '/v1/plugins',
    )
    const ocpp = plugins.find((plugin) => plugin.id === 'ocpp')!
    expect(ocpp).toMatchObject({
      ready: true,
      listen: `127.0.0.1:${port}`,
      stations: { connected: 2, known: 6 },
      versions: { 'ocpp1.6': 1, 'ocpp2.0.1': 1 },
    })
  })

  test('refused before the upgrade: wrong password or none (401), unknown station (401), no OCPP subprotocol, wrong path or id', async () => {
    const basic = (id: string, password: string) =>
      `Basic ${Buffer.from(`${id}:${password}`).toString('base64')}`
    const refused = async () =>
      metricValue(
        await (await node.fetch('/metrics', { token: null })).text(),
        'oe_plugin_ocpp_connections_refused_total',
      )
    const refusedBefore = await refused()
    expect(await upgradeStatus('/ocpp/CS16', 'ocpp1.6', basic('CS16', 'wrong'))).toBe(401)
    expect(await upgradeStatus('/ocpp/CS16', 'ocpp1.6')).toBe(401)
    expect(await upgradeStatus('/ocpp/NOBODY', 'ocpp1.6', basic('NOBODY', 'x'))).toBe(401)
    expect(await upgradeStatus('/ocpp/CS16', 'ocpp1.5', basic('CS16', PASSWORDS.CS16))).toBe(400)
    expect(await upgradeStatus('/ocpp/CS16', undefined, basic('CS16', PASSWORDS.CS16))).toBe(400)
    expect(await upgradeStatus('/other/CS16', 'ocpp1.6', basic('CS16', PASSWORDS.CS16))).toBe(404)
    expect(await upgradeStatus('/ocpp/%E0%A4%A', 'ocpp1.6')).toBe(400)
    expect(await upgradeStatus('/ocpp/bad.id', 'ocpp1.6', basic('bad.id', 'x'))).toBe(400)
    expect(await upgradeStatus('/ocpp/CS16', 'ocpp1.6', basic('CS16', PASSWORDS.CS16))).toBe(101)
    // The same through a real station client.
    const wrong = station('CS201', 'ocpp2.0.1', { password: 'nope' })
    await expect(wrong.connect()).rejects.toThrow(/401|Unauthorized/)
    // Each refusal above is counted: eight upgrades and the client's.
    expect(await refused()).toBe(refusedBefore! + 9)
    expect(await readyz()).toBe(200)
  })
})

describe('sessions and telemetry', () => {
  test('OCPP 1.6: a session with meter values in kW/kWh and W/Wh over three phases', async () => {
    const cs = station('CS16', 'ocpp1.6')
    await cs.connect()
    await cs.call('BootNotification', { chargePointVendor: 'ACME', chargePointModel: 'Wallbox-16' })
    const t0 = Date.now() - 120_000
    expect(await cs.call('Authorize', { idTag: 'TAG-1' })).toEqual({ idTagInfo: { status: 'Accepted' } })
    const started = (await cs.call('StartTransaction', {
      connectorId: 2,
      idTag: 'TAG-1',
      meterStart: 10_000,
      timestamp: iso(t0),
    })) as { transactionId: number; idTagInfo: { status: string } }
    expect(started.idTagInfo.status).toBe('Accepted')
    const transactionId = started.transactionId
    const phase = (measurand: string, unit: string, values: string[]) =>
      values.map((value, i) => ({ measurand, unit, value, phase: `L${i + 1}` }))
    // kW / kWh
    await cs.call('MeterValues', {
      connectorId: 2,
      transactionId,
      meterValue: [
        {
          timestamp: iso(t0 + 10_000),
          sampledValue: [
            ...phase('Power.Active.Import', 'kW', ['2.3', '2.4', '2.5']),
            { measurand: 'Power.Active.Import', unit: 'kW', value: '7.2' },
            { measurand: 'Energy.Active.Import.Register', unit: 'kWh', value: '10.5' },
            ...phase('Current.Import', 'A', ['10', '10.5', '11']),
            { measurand: 'Voltage', unit: 'V', value: '230', phase: 'L1-N' },
            { measurand: 'Voltage', unit: 'V', value: '231', phase: 'L2-N' },
            { measurand: 'Voltage', unit: 'V', value: '232', phase: 'L3-N' },
            { measurand: 'SoC', unit: 'Percent', value: '40', location: 'EV' },
          ],
        },
      ],
    })
    // W / Wh, with an export reading of 0 netted into the import
    await cs.call('MeterValues', {
      connectorId: 2,
      transactionId,
      meterValue: [
        {
          timestamp: iso(t0 + 20_000),
          sampledValue: [
            ...phase('Power.Active.Import', 'W', ['2300', '2400', '2500']),
            { measurand: 'Power.Active.Import', unit: 'W', value: '7200' },
            { measurand: 'Power.Active.Export', unit: 'W', value: '0' },
            { measurand: 'Energy.Active.Import.Register', unit: 'Wh', value: '11000' },
            { measurand: 'Power.Offered', unit: 'W', value: '11000' },
            { measurand: 'Temperature', unit: 'Celsius', value: '35', location: 'Body' },
            { measurand: 'Frequency', value: '50.02' },
          ],
        },
      ],
    })
    expect(
      await cs.call('StopTransaction', {
        transactionId,
        meterStop: 12_000,
        timestamp: iso(t0 + 30_000),
        reason: 'EVDisconnected',
        idTag: 'TAG-1',
        transactionData: [
          {
            timestamp: iso(t0 + 30_000),
            sampledValue: [{ value: '12', unit: 'kWh', context: 'Transaction.End' }],
          },
        ],
      }),
    ).toEqual({ idTagInfo: { status: 'Accepted' } })

    const tel = await telemetryOf(node, 'oe.tel.evse.CS16-2')
    const t1 = t0 + 10_000
    const t2 = t0 + 20_000
    const t3 = t0 + 30_000
    expect(tel).toEqual({
      energy_import: [
        [10_000, t0],
        [10_500, t1],
        [11_000, t2],
        [12_000, t3],
      ],
      power_l1: [
        [2300, t1],
        [2300, t2],
      ],
      power_l2: [
        [2400, t1],
        [2400, t2],
      ],
      power_l3: [
        [2500, t1],
        [2500, t2],
      ],
      power: [
        [7200, t1],
        [7200, t2],
      ],
      current_l1: [[10, t1]],
      current_l2: [[10.5, t1]],
      current_l3: [[11, t1]],
      voltage_l1: [[230, t1]],
      voltage_l2: [[231, t1]],
      voltage_l3: [[232, t1]],
      soc: [[40, t1]],
      power_offered: [[11_000, t2]],
      temperature: [[35, t2]],
      frequency: [[50.02, t2]],
    })
    const startedEvent = await eventsOf('oe.evt.evse.CS16-2.session_started')
    expect(startedEvent).toHaveLength(1)
    expect(startedEvent[0]!.data).toMatchObject({
      transactionId: String(transactionId),
      meterStartWh: 10_000,
      t: t0,
    })
    const stopped = await eventsOf('oe.evt.evse.CS16-2.session_stopped')
    expect(stopped).toHaveLength(1)
    expect(stopped[0]!.data).toMatchObject({
      transactionId: String(transactionId),
      meterStopWh: 12_000,
      energyWh: 2000,
      durationS: 30,
      reason: 'EVDisconnected',
      t: t3,
    })
    // Unknown vendor extensions are answered, not failed.
    expect(await cs.call('DataTransfer', { vendorId: 'com.example' })).toEqual({ status: 'UnknownVendorId' })
    await cs.close()
  })

  test('OCPP 2.0.1: TransactionEvent Started/Updated/Ended and MeterValues over three phases', async () => {
    const cs = station('CS201', 'ocpp2.0.1')
    await cs.connect()
    await cs.call('BootNotification', {
      reason: 'PowerUp',
      chargingStation: { vendorName: 'Volt', model: 'DC-201' },
    })
    expect(await cs.call('Authorize', { idToken: { idToken: 'TOKEN-201', type: 'ISO14443' } })).toEqual({
      idTokenInfo: { status: 'Accepted' },
    })
    const t0 = Date.now() - 60_000
    const tx = 'tx-201-0001'
    const started = await cs.call('TransactionEvent', {
      eventType: 'Started',
      timestamp: iso(t0),
      triggerReason: 'Authorized',
      seqNo: 0,
      transactionInfo: { transactionId: tx, chargingState: 'Charging' },
      evse: { id: 2, connectorId: 1 },
      idToken: { idToken: 'TOKEN-201', type: 'ISO14443' },
      meterValue: [{ timestamp: iso(t0), sampledValue: [{ value: 5000, context: 'Transaction.Begin' }] }],
    })
    expect(started).toEqual({ idTokenInfo: { status: 'Accepted' } })
    const phases = (measurand: string, unit: string, values: number[], multiplier?: number) =>
      values.map((value, i) => ({
        measurand,
        value,
        phase: `L${i + 1}`,
        unitOfMeasure: multiplier === undefined ? { unit } : { unit, multiplier },
      }))
    await cs.call('TransactionEvent', {
      eventType: 'Updated',
      timestamp: iso(t0 + 10_000),
      triggerReason: 'MeterValuePeriodic',
      seqNo: 1,
      transactionInfo: { transactionId: tx },
      meterValue: [
        {
          timestamp: iso(t0 + 10_000),
          sampledValue: [
            ...phases('Power.Active.Import', 'kW', [3.6, 3.7, 3.8]),
            { measurand: 'Energy.Active.Import.Register', value: 6.25, unitOfMeasure: { unit: 'kWh' } },
            ...phases('Current.Import', 'A', [15.5, 16, 16.5]),
            { measurand: 'SoC', value: 61, unitOfMeasure: { unit: 'Percent' }, location: 'EV' },
          ],
        },
      ],
    })
    // W with a multiplier of 3 is kW; Wh plain.
    await cs.call('MeterValues', {
      evseId: 2,
      meterValue: [
        {
          timestamp: iso(t0 + 20_000),
          sampledValue: [
            ...phases('Power.Active.Import', 'W', [3.5, 3.5, 3.5], 3),
            { measurand: 'Energy.Active.Import.Register', value: 7000, unitOfMeasure: { unit: 'Wh' } },
            ...phases('Voltage', 'V', [229, 230, 231]),
          ],
        },
      ],
    })
    await cs.call('TransactionEvent', {
      eventType: 'Ended',
      timestamp: iso(t0 + 30_000),
      triggerReason: 'EVCommunicationLost',
      seqNo: 2,
      transactionInfo: { transactionId: tx, stoppedReason: 'EVDisconnected' },
      meterValue: [
        {
          timestamp: iso(t0 + 30_000),
          sampledValue: [{ value: 8.2, unitOfMeasure: { unit: 'kWh' }, context: 'Transaction.End' }],
        },
      ],
    })
    const t1 = t0 + 10_000
    const t2 = t0 + 20_000
    const t3 = t0 + 30_000
    const tel = await telemetryOf(node, 'oe.tel.evse.CS201-2')
    expect(tel).toEqual({
      energy_import: [
        [5000, t0],
        [6250, t1],
        [7000, t2],
        [8200, t3],
      ],
      power_l1: [
        [3600, t1],
        [3500, t2],
      ],
      power_l2: [
        [3700, t1],
        [3500, t2],
      ],
      power_l3: [
        [3800, t1],
        [3500, t2],
      ],
      current_l1: [[15.5, t1]],
      current_l2: [[16, t1]],
      current_l3: [[16.5, t1]],
      soc: [[61, t1]],
      voltage_l1: [[229, t2]],
      voltage_l2: [[230, t2]],
      voltage_l3: [[231, t2]],
    })
    const startedEvent = await eventsOf('oe.evt.evse.CS201-2.session_started')
    expect(startedEvent.map((m) => m.data)).toEqual([
      {
        transactionId: tx,
        connector: 1,
        meterStartWh: 5000,
        triggerReason: 'Authorized',
        t: t0,
        idToken: 'TOKEN-201',
        tokenType: 'ISO14443',
      },
    ])
    const stopped = await eventsOf('oe.evt.evse.CS201-2.session_stopped')
    expect(stopped.map((m) => m.data)).toEqual([
      {
        transactionId: tx,
        meterStopWh: 8200,
        energyWh: 3200,
        durationS: 30,
        reason: 'EVDisconnected',
        triggerReason: 'EVCommunicationLost',
        t: t3,
        idToken: 'TOKEN-201',
      },
    ])
    // NotifyReport: the rated power of an EVSE lands in its resource.
    await cs.call('NotifyReport', {
      requestId: 1,
      generatedAt: iso(Date.now()),
      seqNo: 0,
      reportData: [
        {
          component: { name: 'EVSE', evse: { id: 2 } },
          variable: { name: 'Power' },
          variableAttribute: [{ type: 'Actual', value: '0' }],
          variableCharacteristics: { dataType: 'decimal', maxLimit: 22000, supportsMonitoring: false },
        },
      ],
    })
    expect(await resource('evse', 'CS201-2')).toMatchObject({
      attrs: { station: 'CS201', evse: 2, maxPowerW: 22000 },
    })
    await cs.close()
  })
})

/** A raw WebSocket station, to send what no well-behaved client would. */
async function rawStation(id = 'RAW1', password = PASSWORDS.RAW1, protocol = 'ocpp1.6') {
  const ws = new WebSocket(`ws://127.0.0.1:${port}/ocpp/${id}`, {
    protocols: [protocol],
    headers: { authorization: `Basic ${Buffer.from(`${id}:${password}`).toString('base64')}` },
  })
  const received: unknown[][] = []
  const closed = new Promise<number>((resolve) =>
    ws.addEventListener('close', (event) => resolve(event.code)),
  )
  ws.addEventListener('message', (event) => received.push(JSON.parse(String(event.data))))
  await new Promise<void>((resolve, reject) => {
    ws.addEventListener('open', () => resolve(), { once: true })
    ws.addEventListener('error', () => reject(new Error('raw connection failed')), { once: true })
  })
  const reply = async (id: string) => {
    await waitFor(() => received.some((frame) => frame[1] === id), 5_000, `answer to ${id}`)
    return received.find((frame) => frame[1] === id)!
  }
  return { ws, received, closed, reply }
}

describe('malformed input', () => {
  test('bad frames get OCPP-J CALLERRORs, the connection and the node stay up', async () => {
    const raw = await rawStation()
    raw.ws.send('this is not JSON')
    await waitFor(() => raw.received.length >= 1, 5_000, 'an answer to non-JSON')
    expect(raw.received[0]!.slice(0, 3)).toEqual([4, '-1', 'RpcFrameworkError'])
    raw.ws.send(JSON.stringify([7, 'bad-type', 'Heartbeat', {}]))
    await waitFor(() => raw.received.length >= 2, 5_000, 'an answer to a wrong message type')
    expect(raw.received[1]![2]).toBe('MessageTypeNotSupported')
    raw.ws.send(JSON.stringify([2, 'unknown', 'MakeCoffee', {}]))
    expect((await raw.reply('unknown')).slice(0, 3)).toEqual([4, 'unknown', 'NotImplemented'])
    raw.ws.send(JSON.stringify([2, 'csms-only', 'Reset', { type: 'Hard' }]))
    expect((await raw.reply('csms-only')).slice(0, 3)).toEqual([4, 'csms-only', 'NotSupported'])
    raw.ws.send(
      JSON.stringify([2, 'type', 'BootNotification', { chargePointVendor: 5, chargePointModel: 'x' }]),
    )
    expect((await raw.reply('type')).slice(0, 3)).toEqual([4, 'type', 'TypeConstraintViolation'])
    raw.ws.send(JSON.stringify([2, 'missing', 'BootNotification', { chargePointModel: 'x' }]))
    expect((await raw.reply('missing')).slice(0, 3)).toEqual([4, 'missing', 'OccurrenceConstraintViolation'])
    raw.ws.send(JSON.stringify([2, 'extra', 'Heartbeat', { surprise: true }]))
    expect((await raw.reply('extra')).slice(0, 3)).toEqual([4, 'extra', 'PropertyConstraintViolation'])
    raw.ws.send(
      JSON.stringify([
        2,
        'enum',
        'StatusNotification',
        { connectorId: 1, errorCode: 'Melted', status: 'Available' },
      ]),
    )
    expect((await raw.reply('enum')).slice(0, 3)).toEqual([4, 'enum', 'FormationViolation'])
    raw.ws.send(JSON.stringify([2, 'long', 'Authorize', { idTag: 'x'.repeat(21) }]))
    expect((await raw.reply('long')).slice(0, 3)).toEqual([4, 'long', 'FormationViolation'])
    // Still connected and served.
    raw.ws.send(JSON.stringify([2, 'ok', 'Heartbeat', {}]))
    expect(await raw.reply('ok')).toEqual([3, 'ok', { currentTime: expect.any(String) }])

    // A burst of 1,000 calls: every one answered, in a few seconds at most.
    const before = raw.received.length
    for (let i = 0; i < 1000; i++) raw.ws.send(JSON.stringify([2, `burst-${i}`, 'Heartbeat', {}]))
    await waitFor(() => raw.received.length >= before + 1000, 20_000, '1,000 answers')
    const ids = new Set(raw.received.slice(before).map((frame) => frame[1]))
    expect(ids.size).toBe(1000)
    expect(raw.received.slice(before).every((frame) => frame[0] === 3)).toBe(true)

    // A frame above max_message_bytes closes that connection (1009), nothing else.
    raw.ws.send(JSON.stringify([2, 'big', 'DataTransfer', { vendorId: 'x', data: 'a'.repeat(70_000) }]))
    expect(await raw.closed).toBe(1009)
    expect(await readyz()).toBe(200)
    const again = await rawStation()
    again.ws.send(JSON.stringify([2, 'after', 'Heartbeat', {}]))
    expect((await again.reply('after')).slice(0, 2)).toEqual([3, 'after'])
    again.ws.close()
    expect(await readyz()).toBe(200)
    const metrics = await (await node.fetch('/metrics', { token: null })).text()
    expect(Number(/^oe_plugin_ocpp_messages_invalid_total (\d+)/m.exec(metrics)?.[1])).toBeGreaterThanOrEqual(
      8,
    )
  })
})

describe('hardening', () => {
  const skippedSamples = async () =>
    metricValue(
      await (await node.fetch('/metrics', { token: null })).text(),
      'oe_plugin_ocpp_samples_skipped_total',
    ) ?? 0

  test('a sample that overflows (1e308 kWh) or is implausible is skipped and counted; the rest of the message is published and the station gets its normal answer', async () => {
    const skippedBefore = await skippedSamples()
    const t1 = Date.now() - 60_000
    const cs16 = await rawStation('HARD16', PASSWORDS.HARD16, 'ocpp1.6')
    cs16.ws.send(
      JSON.stringify([
        2,
        'mv16',
        'MeterValues',
        {
          connectorId: 1,
          meterValue: [
            {
              timestamp: iso(t1),
              sampledValue: [
                { measurand: 'Energy.Active.Import.Register', unit: 'kWh', value: '1e308' },
                { measurand: 'Power.Active.Import', unit: 'kW', value: '7.4' },
                { measurand: 'SoC', unit: 'Percent', value: '150', location: 'EV' },
                { measurand: 'Energy.Active.Export.Register', unit: 'Wh', value: '-5' },
                { measurand: 'Voltage', unit: 'V', value: '231' },
              ],
            },
            { timestamp: '1999-06-01T00:00:00Z', sampledValue: [{ value: '100' }] },
          ],
        },
      ]),
    )
    expect(await cs16.reply('mv16')).toEqual([3, 'mv16', {}])
    // A negative meter start: the session starts, its register reading is skipped.
    cs16.ws.send(
      JSON.stringify([
        2,
        'start',
        'StartTransaction',
        { connectorId: 1, idTag: 'T1', meterStart: -1, timestamp: iso(t1 + 1000) },
      ]),
    )
    const started = await cs16.reply('start')
    expect(started.slice(0, 2)).toEqual([3, 'start'])
    expect(started[2]).toMatchObject({ idTagInfo: { status: 'Accepted' } })

    const cs201 = await rawStation('HARD201', PASSWORDS.HARD201, 'ocpp2.0.1')
    cs201.ws.send(
      JSON.stringify([
        2,
        'mv201',
        'MeterValues',
        {
          evseId: 1,
          meterValue: [
            {
              timestamp: iso(t1),
              sampledValue: [
                { value: 1e308, measurand: 'Energy.Active.Import.Register', unitOfMeasure: { unit: 'kWh' } },
                { value: 11, measurand: 'Power.Active.Import', unitOfMeasure: { unit: 'kW' } },
              ],
            },
          ],
        },
      ]),
    )
    expect(await cs201.reply('mv201')).toEqual([3, 'mv201', {}])

    expect(await telemetryOf(node, 'oe.tel.evse.HARD16-1')).toEqual({
      power: [[7400, t1]],
      voltage: [[231, t1]],
    })
    expect(await telemetryOf(node, 'oe.tel.evse.HARD201-1')).toEqual({ power: [[11_000, t1]] })
    // 1e308 kWh twice, SoC 150 %, a negative register, the 1999 sample and the negative meter start.
    expect((await skippedSamples()) - skippedBefore).toBe(6)
    cs16.ws.close()
    cs201.ws.close()
    expect(await readyz()).toBe(200)
  })

  test('a schema violation is answered with its detail capped, not with the whole payload echoed', async () => {
    const raw = await rawStation('HARD16', PASSWORDS.HARD16, 'ocpp1.6')
    const padding = 'P'.repeat(30_000)
    raw.ws.send(
      JSON.stringify([
        2,
        'fv',
        'StatusNotification',
        { connectorId: 1, errorCode: 'Melted', status: 'Available', info: padding },
      ]),
    )
    const reply = await raw.reply('fv')
    expect(reply.slice(0, 3)).toEqual([4, 'fv', 'FormationViolation'])
    expect(JSON.stringify(reply).length).toBeLessThan(2 * 512 + 200)
    expect(JSON.stringify(reply)).not.toContain('P'.repeat(600))
    raw.ws.send(JSON.stringify([2, 'ok', 'Heartbeat', {}]))
    expect((await raw.reply('ok')).slice(0, 2)).toEqual([3, 'ok'])
    raw.ws.close()
  })

  test('message ids longer than the 36 characters OCPP-J allows are refused with the version’s error', async () => {
    const id36 = 'i'.repeat(36)
    const long = 'L'.repeat(10_000)
    for (const [id, password, version, code] of [
      ['HARD16', PASSWORDS.HARD16, 'ocpp1.6', 'FormationViolation'],
      ['HARD201', PASSWORDS.HARD201, 'ocpp2.0.1', 'RpcFrameworkError'],
    ] as const) {
      const raw = await rawStation(id, password, version)
      raw.ws.send(JSON.stringify([2, long, 'Heartbeat', {}]))
      const refused = await raw.reply(long)
      expect(refused.slice(0, 3), version).toEqual([4, long, code])
      expect(String(refused[3])).toMatch(/at most 36 characters/)
      // Any action, not only Heartbeat.
      raw.ws.send(
        JSON.stringify([
          2,
          `${long}-2`,
          'Authorize',
          version === 'ocpp1.6' ? { idTag: 'T' } : { idToken: { idToken: 'T', type: 'Central' } },
        ]),
      )
      expect((await raw.reply(`${long}-2`)).slice(0, 3), version).toEqual([4, `${long}-2`, code])
      raw.ws.send(JSON.stringify([2, id36, 'Heartbeat', {}]))
      expect(await raw.reply(id36)).toEqual([3, id36, { currentTime: expect.any(String) }])
      raw.ws.close()
    }
    expect(await readyz()).toBe(200)
  })
})

describe('control', () => {
  test('limit_power on oe.ctl reaches the station as SetChargingProfile; the answer comes back as limit_result', async () => {
    const cs16 = station('CS16', 'ocpp1.6')
    const cs201 = station('CS201', 'ocpp2.0.1')
    const profiles16: Record<string, unknown>[] = []
    const profiles201: Record<string, unknown>[] = []
    cs16.handle('SetChargingProfile', async ({ params }) => {
      profiles16.push(params as Record<string, unknown>)
      return { status: 'Accepted' }
    })
    cs201.handle('SetChargingProfile', async ({ params }) => {
      profiles201.push(params as Record<string, unknown>)
      return { status: profiles201.length === 1 ? 'Accepted' : 'Rejected' }
    })
    await Promise.all([cs16.connect(), cs201.connect()])
    await cs16.call('BootNotification', { chargePointVendor: 'ACME', chargePointModel: 'Wallbox-16' })
    await cs201.call('BootNotification', {
      reason: 'PowerUp',
      chargingStation: { vendorName: 'V', model: 'M' },
    })

    const { nats } = await api<{ nats: { url: string } }>(node, 'GET', '/v1/status')
    const auth = JSON.parse(await readFile(join(node.dataDir, 'nats', 'auth.json'), 'utf8'))
    const nc = await connect({ servers: nats.url, user: auth.user, pass: auth.password })
    try {
      const until = Date.now() + 3_600_000
      nc.publish('oe.ctl.evse.CS16-1.limit_power', encodeCbor({ v: 7400, u: 'W', until, source: 'dso' }))
      nc.publish('oe.ctl.station.CS201.limit_power', encodeCbor({ v: 50, u: 'kW', source: 'dso' }))
      nc.publish('oe.ctl.evse.CS201-1.limit_power', encodeCbor({ v: 3000, u: 'W' }))
      nc.publish('oe.ctl.evse.CS16-1.limit_power', encodeCbor({ v: -5, u: 'W' }))
      nc.publish('oe.ctl.evse.OFFLINE-1.limit_power', encodeCbor({ v: 1000, u: 'W' }))
      await nc.flush()
      await waitFor(
        () => profiles16.length >= 1 && profiles201.length >= 2,
        15_000,
        'SetChargingProfile calls',
      )
      expect(profiles16[0]).toMatchObject({
        connectorId: 1,
        csChargingProfiles: {
          chargingProfilePurpose: 'TxDefaultProfile',
          chargingProfileKind: 'Absolute',
          validTo: new Date(until).toISOString(),
          chargingSchedule: {
            chargingRateUnit: 'W',
            chargingSchedulePeriod: [{ startPeriod: 0, limit: 7400 }],
          },
        },
      })
      const duration = (profiles16[0] as { csChargingProfiles: { chargingSchedule: { duration: number } } })
        .csChargingProfiles.chargingSchedule.duration
      expect(duration).toBeGreaterThan(3590)
      expect(duration).toBeLessThanOrEqual(3600)
      const byEvse = Object.fromEntries(profiles201.map((p) => [p.evseId, p]))
      expect(byEvse[0]).toMatchObject({
        evseId: 0,
        chargingProfile: {
          chargingProfilePurpose: 'ChargingStationMaxProfile',
          chargingSchedule: [
            { chargingRateUnit: 'W', chargingSchedulePeriod: [{ startPeriod: 0, limit: 50_000 }] },
          ],
        },
      })
      expect(byEvse[1]).toMatchObject({
        evseId: 1,
        chargingProfile: { chargingProfilePurpose: 'TxDefaultProfile' },
      })

      await waitFor(
        async () => (await eventsOf('oe.evt.>', 'limit_result', 200)).length >= 5,
        15_000,
        'five limit results',
      )
      const results = await eventsOf('oe.evt.>', 'limit_result')
      const result = (subject: string) => results.filter((m) => m.subject === subject).map((m) => m.data)
      expect(result('oe.evt.evse.CS16-1.limit_result')).toEqual(
        expect.arrayContaining([
          expect.objectContaining({
            command: 'limit_power',
            status: 'Accepted',
            v: 7400,
            until,
            source: 'dso',
          }),
          expect.objectContaining({ command: 'limit_power', status: 'Invalid' }),
        ]),
      )
      const statuses201 = [
        ...result('oe.evt.station.CS201.limit_result'),
        ...result('oe.evt.evse.CS201-1.limit_result'),
      ].map((r) => r.status)
      expect(statuses201.sort()).toEqual(['Accepted', 'Rejected'])
      expect(result('oe.evt.evse.OFFLINE-1.limit_result')).toEqual([
        expect.objectContaining({ status: 'Offline', v: 1000 }),
      ])
      // An accepted limit is also a power_limit reading.
      const limits = await readSubject(node, 'oe.tel.evse.CS16-1.power_limit', 300)
      expect(limits.map((m) => m.data.v)).toEqual([7400])
    } finally {
      await nc.close()
    }

    // A reconnecting station gets its standing limit again after BootNotification.
    await cs16.close()
    profiles16.length = 0
    const back = station('CS16', 'ocpp1.6')
    back.handle('SetChargingProfile', async ({ params }) => {
      profiles16.push(params as Record<string, unknown>)
      return { status: 'Accepted' }
    })
    await back.connect()
    await back.call('BootNotification', { chargePointVendor: 'ACME', chargePointModel: 'Wallbox-16' })
    await waitFor(() => profiles16.length >= 1, 10_000, 'the limit to be sent again')
    expect(profiles16[0]).toMatchObject({
      connectorId: 1,
      csChargingProfiles: { chargingSchedule: { chargingSchedulePeriod: [{ limit: 7400 }] } },
    })
    await back.close()
    await cs201.close()
  })

  test('operator actions: reset, trigger_message, get_configuration, get_variables, remote start/stop', async () => {
    const cs16 = station('CS16', 'ocpp1.6')
    const cs201 = station('CS201', 'ocpp2.0.1')
    const calls: string[] = []
    cs16.handle(async ({ method, params }) => {
      calls.push(`1.6 ${method} ${JSON.stringify(params)}`)
      switch (method) {
        case 'Reset':
        case 'RemoteStartTransaction':
        case 'RemoteStopTransaction':
          return { status: 'Accepted' }
        case 'TriggerMessage':
        case 'SetChargingProfile':
        case 'ChangeConfiguration':
        case 'ClearChargingProfile':
          return { status: 'Accepted' }
        case 'GetConfiguration':
          return { configurationKey: [{ key: 'HeartbeatInterval', readonly: false, value: '2' }] }
        default:
          throw new Error('unexpected')
      }
    })
    cs201.handle(async ({ method, params }) => {
      calls.push(`2.0.1 ${method} ${JSON.stringify(params)}`)
      if (method === 'SetVariables') {
        return {
          setVariableResult: [
            {
              attributeStatus: 'Accepted',
              component: { name: 'OCPPCommCtrlr' },
              variable: { name: 'HeartbeatInterval' },
            },
          ],
        }
      }
      if (method === 'ClearChargingProfile') return { status: 'Accepted' }
      if (method === 'GetVariables') {
        return {
          getVariableResult: [
            {
              attributeStatus: 'Accepted',
              attributeValue: '2',
              component: { name: 'OCPPCommCtrlr' },
              variable: { name: 'HeartbeatInterval' },
            },
          ],
        }
      }
      return { status: 'Accepted' }
    })
    await Promise.all([cs16.connect(), cs201.connect()])
    const action = (name: string, body: Record<string, unknown>) =>
      node.fetch(`/v1/plugins/ocpp/actions/${name}`, { method: 'POST', body: JSON.stringify(body) })
    const ok = async (name: string, body: Record<string, unknown>) => {
      const response = await action(name, body)
      const text = await response.text()
      expect(response.status, text).toBe(200)
      return (JSON.parse(text) as { result: { response: Record<string, unknown> } }).result
    }
    expect((await ok('reset', { station: 'CS16', type: 'hard' })).response).toEqual({ status: 'Accepted' })
    expect((await ok('reset', { station: 'CS201' })).response).toEqual({ status: 'Accepted' })
    expect(
      (await ok('trigger_message', { station: 'CS16', message: 'StatusNotification', connector: 1 }))
        .response,
    ).toEqual({ status: 'Accepted' })
    expect(
      (await ok('get_configuration', { station: 'CS16', keys: ['HeartbeatInterval'] })).response,
    ).toMatchObject({
      configurationKey: [{ key: 'HeartbeatInterval', value: '2' }],
    })
    expect(
      (await ok('get_variables', { station: 'CS201', variables: ['OCPPCommCtrlr.HeartbeatInterval'] }))
        .response,
    ).toMatchObject({ getVariableResult: [{ attributeValue: '2' }] })
    expect(
      (await ok('change_configuration', { station: 'CS16', key: 'HeartbeatInterval', value: '120' }))
        .response,
    ).toEqual({ status: 'Accepted' })
    expect(calls).toContain('1.6 ChangeConfiguration {"key":"HeartbeatInterval","value":"120"}')
    expect(
      (
        await ok('set_variables', {
          station: 'CS201',
          component: 'OCPPCommCtrlr',
          variable: 'HeartbeatInterval',
          value: '120',
        })
      ).response,
    ).toMatchObject({ setVariableResult: [{ attributeStatus: 'Accepted' }] })
    expect((await ok('clear_charging_profile', { station: 'CS16', connector: 1 })).response).toEqual({
      status: 'Accepted',
    })
    expect((await ok('clear_charging_profile', { station: 'CS201', connector: 1 })).response).toEqual({
      status: 'Accepted',
    })
    expect(calls).toContain('2.0.1 ClearChargingProfile {"chargingProfileCriteria":{"evseId":1}}')
    expect((await action('change_configuration', { station: 'CS201', key: 'a', value: 'b' })).status).toBe(
      400,
    )
    expect(
      (await ok('remote_start', { station: 'CS201', connector: 1, id_tag: 'OPERATOR' })).response,
    ).toEqual({
      status: 'Accepted',
    })
    expect((await ok('remote_stop', { station: 'CS16', transaction: 42 })).response).toEqual({
      status: 'Accepted',
    })
    expect(calls).toEqual(
      expect.arrayContaining([
        '1.6 Reset {"type":"Hard"}',
        '2.0.1 Reset {"type":"OnIdle"}',
        '1.6 TriggerMessage {"requestedMessage":"StatusNotification","connectorId":1}',
        '1.6 GetConfiguration {"key":["HeartbeatInterval"]}',
        '1.6 RemoteStopTransaction {"transactionId":42}',
      ]),
    )
    expect(
      calls.some((c) => c.startsWith('2.0.1 RequestStartTransaction') && c.includes('"idToken":"OPERATOR"')),
    ).toBe(true)

    // Refusals name the problem.
    const offline = await action('reset', { station: 'NOBODY' })
    expect(offline.status).toBe(400)
    expect(await offline.json()).toMatchObject({ error: 'StationNotConnectedError' })
    const badTrigger = await action('trigger_message', { station: 'CS16', message: 'Coffee' })
    expect(badTrigger.status).toBe(400)
    expect(await badTrigger.json()).toMatchObject({ error: 'OcppActionInputError' })
    const wrongVersion = await action('get_variables', { station: 'CS16', variables: ['A.B'] })
    expect(await wrongVersion.json()).toMatchObject({ error: 'OcppActionInputError' })
    const list = await ok('stations', {})
    expect(list).toMatchObject({
      stations: expect.arrayContaining([
        expect.objectContaining({ id: 'CS16', connected: true, version: 'ocpp1.6' }),
        expect.objectContaining({ id: 'SILENT', connected: false, configured: true }),
      ]),
    })

    // The same through the CLI command (registered by cli/program.ts as `oe-node ocpp …`).
    const viaCli = JSON.parse(
      await ocppCli([
        '--data-dir',
        node.dataDir,
        '--json',
        'ocpp',
        'reset',
        '--station',
        'CS16',
        '--type',
        'hard',
      ]),
    )
    expect(viaCli).toMatchObject({
      station: 'CS16',
      version: 'ocpp1.6',
      action: 'Reset',
      response: { status: 'Accepted' },
    })
    const plain = await ocppCli([
      '--data-dir',
      node.dataDir,
      'ocpp',
      'get_configuration',
      '--station',
      'CS16',
    ])
    expect(plain).toContain('CS16 (ocpp1.6) GetConfiguration')
    expect(plain).toContain('HeartbeatInterval')
    const rows = JSON.parse(await ocppCli(['--data-dir', node.dataDir, '--json', 'ocpp', 'stations']))
    expect(rows.stations.find((row: { id: string }) => row.id === 'CS201')).toMatchObject({ connected: true })
    await cs16.close()
    await cs201.close()
  })
})

/** Run `oe-node ocpp …` in-process and return what it printed. */
async function ocppCli(args: string[]): Promise<string> {
  const program = new Command('oe-node').option('--data-dir <dir>').option('--json').exitOverride()
  registerOcpp(program)
  let printed = ''
  const write = process.stdout.write.bind(process.stdout)
  process.stdout.write = ((chunk: string | Uint8Array) => {
    printed += String(chunk)
    return true
  }) as typeof process.stdout.write
  try {
    await program.parseAsync(args, { from: 'user' })
  } finally {
    process.stdout.write = write
  }
  return printed
}

describe('liveness', () => {
  test('a station is marked offline when it falls silent for twice the heartbeat interval, and when it disconnects', async () => {
    const cs = station('SILENT', 'ocpp1.6')
    await cs.connect()
    await cs.call('BootNotification', { chargePointVendor: 'Q', chargePointModel: 'Q' })
    // heartbeat_interval = 2 s: offline after 4 s of silence.
    await waitFor(
      async () => (await eventsOf('oe.evt.station.SILENT.>', 'offline', 200)).length >= 1,
      12_000,
      'offline for silence',
    )
    expect((await eventsOf('oe.evt.station.SILENT.>', 'offline'))[0]!.data).toMatchObject({
      reason: 'silent',
    })
    await cs.call('Heartbeat', {})
    await waitFor(
      async () =>
        (await eventsOf('oe.evt.station.SILENT.>', 'online', 200)).some((m) => m.data.reason === 'resumed'),
      5_000,
      'online again',
    )
    await cs.close()
    await waitFor(
      async () =>
        (await eventsOf('oe.evt.station.SILENT.>', 'offline', 200)).some((m) => m.data.reason === 'closed'),
      5_000,
      'offline on close',
    )
  })
})

describe('Security Profile 2 and auto_accept', () => {
  test('wss with a certificate; unknown stations accepted without credentials when auto_accept is on', async () => {
    const dir = await tempDir('oe-ocpp-tls-')
    const cert = join(dir, 'cert.pem')
    const key = join(dir, 'key.pem')
    // openssl is a test prerequisite (scripts/setup installs it): without it this test fails.
    try {
      execFileSync(
        'openssl',
        [
          'req',
          '-x509',
          '-newkey',
          'ec',
          '-pkeyopt',
          'ec_paramgen_curve:prime256v1',
          '-nodes',
          '-keyout',
          key,
          '-out',
          cert,
          '-days',
          '1',
          '-subj',
          '/CN=localhost',
          '-addext',
          'subjectAltName=DNS:localhost,IP:127.0.0.1',
        ],
        { stdio: ['ignore', 'ignore', 'pipe'] },
      )
    } catch (error) {
      throw new Error(
        `could not make a test certificate with openssl (run scripts/setup, or install openssl): ${(error as Error).message}`,
        { cause: error },
      )
    }
    expect((await readFile(cert, 'utf8')).startsWith('-----BEGIN CERTIFICATE-----')).toBe(true)
    const tlsPort = await freePort()
    const lab = await startNode({
      config: `org = "Lab"\n[plugins.ocpp]\nenabled = true\nlisten = "127.0.0.1:${tlsPort}"\ntls_cert = "${cert}"\ntls_key = "${key}"\nauto_accept = true\n[plugins.ocpp.stations.KNOWN]\npassword = "known-secret"\n`,
    })
    const ca = await readFile(cert)
    const anyone = station('LAB-1', 'ocpp2.0.1', {
      endpoint: `wss://127.0.0.1:${tlsPort}/ocpp`,
      password: '',
      wsOpts: { ca, minVersion: 'TLSv1.2' },
    })
    await anyone.connect()
    expect(
      await anyone.call('BootNotification', {
        reason: 'PowerUp',
        chargingStation: { vendorName: 'L', model: 'L' },
      }),
    ).toMatchObject({ status: 'Accepted' })
    // A configured station still needs its password.
    const impostor = station('KNOWN', 'ocpp1.6', {
      endpoint: `wss://127.0.0.1:${tlsPort}/ocpp`,
      password: 'guess',
      wsOpts: { ca },
    })
    await expect(impostor.connect()).rejects.toThrow(/401|Unauthorized/)
    const known = station('KNOWN', 'ocpp1.6', {
      endpoint: `wss://127.0.0.1:${tlsPort}/ocpp`,
      password: 'known-secret',
      wsOpts: { ca },
    })
    await known.connect()
    expect(await known.call('Heartbeat', {})).toHaveProperty('currentTime')
    const plugins = await api<{ id: string; tls: boolean; stations: unknown }[]>(lab, 'GET', '/v1/plugins')
    expect(plugins.find((p) => p.id === 'ocpp')).toMatchObject({ tls: true, stations: { connected: 2 } })
    await anyone.close()
    await known.close()
    expect(await readyz(lab)).toBe(200)
  })
})

/** Send a WebSocket upgrade request by hand and return the HTTP status of the answer. */
function upgradeStatus(path: string, protocol: string | undefined, authorization?: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const socket = connectTcp(port, '127.0.0.1')
    let buffered = ''
    socket.on('data', (chunk) => {
      buffered += chunk
      const match = /^HTTP\/1\.1 (\d{3})/.exec(buffered)
      if (match) {
        resolve(Number(match[1]))
        socket.destroy()
      }
    })
    socket.on('error', reject)
    socket.on('close', () => reject(new Error(`no status line: ${buffered}`)))
    socket.write(
      [
        `GET ${path} HTTP/1.1`,
        `Host: 127.0.0.1:${port}`,
        'Upgrade: websocket',
        'Connection: Upgrade',
        'Sec-WebSocket-Version: 13',
        `Sec-WebSocket-Key: ${Buffer.from('0123456789abcdef').toString('base64')}`,
        ...(protocol ? [`Sec-WebSocket-Protocol: ${protocol}`] : []),
        ...(authorization ? [`Authorization: ${authorization}`] : []),
        '',
        '',
      ].join('\r\n'),
    )
  })
}
