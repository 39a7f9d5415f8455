/**
 * The OCPP plugin does what the data plane asks of an EVSE (the OCPI half of issue 13): a real
 * nats-server, the plugin host with the OCPP plugin, and `ocpp-rpc` clients as charging
 * stations (1.6 and 2.0.1). Each command published on `oe.ctl.evse.<rid>.<command>` reaches the
 * station as its OCPP call with the right fields, and its `control_result` event comes back
 * with the same `request` and the outcome; a station that is offline, unknown, silent or
 * without the feature gets a result too. Drivers' tokens are decided by whoever answers the
 * node's token authorisation (here a scripted answerer on `oe.auth.token`), and the session
 * events carry the token. End to end with the OCPI plugin as CPO: an eMSP partner's
 * START_SESSION over HTTP starts the station, the CommandResult reaches the eMSP's response_url,
 * the session's cdr_token is the eMSP's token, and tokens the eMSP pushed decide Authorize.
 */
import { join } from 'node:path'
import type { NatsConnection, Subscription } from '@nats-io/nats-core'
import { RPCClient } from 'ocpp-rpc'
import { Registry } from 'prom-client'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import {
  connectDataPlane,
  DataPlane,
  decodeCbor,
  EmbeddedNatsServer,
  encodeCbor,
  freePort,
  type RetentionLimits,
  STREAMS,
  subjects,
} from '../data-plane/index.ts'
import { createRecordingLogger } from '../plugins/compliance.ts'
import { PluginHost } from '../plugins/index.ts'
import { ocpiPlugin } from '../plugins/ocpi/index.ts'
import { ocppPlugin } from '../plugins/ocpp/index.ts'
import { cleanupAll, tempDir, waitFor } from './helpers/node-process.ts'
import { type FakePartner, startFakePartner } from './ocpi-partner.ts'

const PASSWORDS: Record<string, string> = {
  CS16: 'pw-cs16-secret',
  CS201: 'pw-cs201-secret',
  BARE16: 'pw-bare16-secret',
  SLOW16: 'pw-slow16-secret',
  GONE16: 'pw-gone16-secret',
}

let server: EmbeddedNatsServer
let connection: NatsConnection
let dataPlane: DataPlane
let host: PluginHost
let port: number
let events: Subscription
const received: { subject: string; data: Record<string, unknown> }[] = []
const clients: RPCClient[] = []
const logger = createRecordingLogger()

/** Calls each station got, per station. */
const calls = new Map<string, { method: string; params: Record<string, unknown> }[]>()

beforeAll(async () => {
  const dir = await tempDir('oe-ocpp-commands-')
  server = new EmbeddedNatsServer({ dir: join(dir, 'nats') }, { logger })
  await server.start()
  connection = await connectDataPlane({ servers: server.url, ...server.credentials })
  const limits = Object.fromEntries(
    Object.keys(STREAMS).map((name) => [name, { maxAgeMs: 0, maxBytes: -1 }]),
  ) as RetentionLimits
  dataPlane = new DataPlane({ limits }, { connection, logger })
  await dataPlane.start()
  // Every event of the test, as the OCPI plugin would read them.
  events = connection.subscribe('oe.evt.>', {
    callback: (error, msg) => {
      if (!error)
        received.push({ subject: msg.subject, data: decodeCbor(msg.data) as Record<string, unknown> })
    },
  })
  const stations = Object.fromEntries(Object.entries(PASSWORDS).map(([id, password]) => [id, { password }]))
  host = new PluginHost(
    {
      config: {
        ocpp: { enabled: true, listen: '127.0.0.1:0', call_timeout: 2, heartbeat_interval: 60, stations },
      },
      dir: join(dir, 'plugins'),
    },
    { dataPlane, logger, registry: new Registry(), definitions: [ocppPlugin] },
  )
  await host.start()
  port = Number(String(host.status()[0]!.listen).split(':').pop())
}, 30_000)

afterAll(async () => {
  for (const client of clients) await client.close({ force: true }).catch(() => {})
  await host?.stop()
  events?.unsubscribe()
  await dataPlane?.stop()
  await connection?.close()
  await server?.stop()
  await cleanupAll()
})

/** A station that records every call and answers with `answers[method]` (or not at all). */
async function station(
  id: string,
  version: 'ocpp1.6' | 'ocpp2.0.1',
  answers: Record<string, Record<string, unknown> | 'never'>,
): Promise<RPCClient> {
  const client = new RPCClient({
    endpoint: `ws://127.0.0.1:${port}/ocpp`,
    identity: id,
    password: PASSWORDS[id],
    protocols: [version],
    strictMode: true,
    reconnect: false,
  } as never)
  clients.push(client)
  calls.set(id, [])
  for (const [method, answer] of Object.entries(answers)) {
    client.handle(method, async ({ params }) => {
      calls.get(id)!.push({ method, params: params as Record<string, unknown> })
      if (answer === 'never') return new Promise(() => {})
      return answer
    })
  }
  await client.connect()
  if (version === 'ocpp1.6') {
    await client.call('BootNotification', { chargePointVendor: 'ACME', chargePointModel: 'Wallbox' })
    await client.call('StatusNotification', { connectorId: 1, errorCode: 'NoError', status: 'Available' })
  } else {
    await client.call('BootNotification', {
      reason: 'PowerUp',
      chargingStation: { vendorName: 'ACME', model: 'Pillar' },
    })
    await client.call('StatusNotification', {
      timestamp: new Date().toISOString(),
      connectorStatus: 'Available',
      evseId: 1,
      connectorId: 1,
    })
  }
  return client
}

let requests = 0

/** Publish a command on the data plane (stored in OE_CTL) and wait for its control_result. */
async function command(
  rid: string,
  name: string,
  fields: Record<string, unknown>,
  type = 'control_result',
): Promise<Record<string, unknown>> {
  requests += 1
  const request = `req-${requests}`
  await dataPlane.publishConfirmed([
    {
      subject: subjects.control('evse', rid, name),
      payload: encodeCbor({ request, source: 'ocpi:msp', ...fields }),
    },
  ])
  let found: Record<string, unknown> | undefined
  await waitFor(
    () => {
      found = received.find(
        (event) => event.subject === `oe.evt.evse.${rid}.${type}` && event.data.request === request,
      )?.data
      return found !== undefined
    },
    10_000,
    `${type} of ${name} on ${rid}`,
  )
  return found!
}

const lastCall = (id: string) => calls.get(id)!.at(-1)

describe('OCPP 1.6: each EVSE command becomes its call, and its outcome a control_result', () => {
  beforeAll(async () => {
    await station('CS16', 'ocpp1.6', {
      RemoteStartTransaction: { status: 'Accepted' },
      RemoteStopTransaction: { status: 'Rejected' },
      UnlockConnector: { status: 'Unlocked' },
      ReserveNow: { status: 'Occupied' },
      CancelReservation: { status: 'Rejected' },
      SetChargingProfile: { status: 'Accepted' },
    })
  })

  test('start_session → RemoteStartTransaction', async () => {
    const result = await command('CS16-1', 'start_session', {
      idTag: 'TOKEN16',
      tokenType: 'RFID',
      contract_id: 'DE-MSP-C1',
      connector: 1,
    })
    expect(lastCall('CS16')).toEqual({
      method: 'RemoteStartTransaction',
      params: { connectorId: 1, idTag: 'TOKEN16' },
    })
    expect(result).toMatchObject({
      command: 'start_session',
      status: 'Accepted',
      ocppStatus: 'Accepted',
      source: 'ocpi:msp',
      action: 'RemoteStartTransaction',
    })
  })

  test('stop_session → RemoteStopTransaction with the integer id; Rejected comes back', async () => {
    const result = await command('CS16-1', 'stop_session', { transactionId: '42' })
    expect(lastCall('CS16')).toEqual({ method: 'RemoteStopTransaction', params: { transactionId: 42 } })
    expect(result).toMatchObject({ command: 'stop_session', status: 'Rejected' })
  })

  test('stop_session without a transaction id and no open session is rejected without a call', async () => {
    const before = calls.get('CS16')!.length
    const result = await command('CS16-1', 'stop_session', {})
    expect(result).toMatchObject({ status: 'Rejected', reason: 'no open session on this EVSE' })
    expect(calls.get('CS16')!.length).toBe(before)
  })

  test('unlock_connector → UnlockConnector; Unlocked reads Accepted', async () => {
    const result = await command('CS16-1', 'unlock_connector', { connector: 1 })
    expect(lastCall('CS16')).toEqual({ method: 'UnlockConnector', params: { connectorId: 1 } })
    expect(result).toMatchObject({ status: 'Accepted', ocppStatus: 'Unlocked' })
  })

  test('reserve_now → ReserveNow and cancel_reservation → CancelReservation with the same id', async () => {
    const expires = Date.now() + 15 * 60_000
    const reserved = await command('CS16-1', 'reserve_now', {
      reservation: 'RES-abc',
      idTag: 'TOKEN16',
      expires,
      connector: 1,
    })
    const reserve = lastCall('CS16')!
    expect(reserve).toMatchObject({
      method: 'ReserveNow',
      params: {
        connectorId: 1,
        idTag: 'TOKEN16',
        expiryDate: new Date(expires).toISOString(),
        reservationId: expect.any(Number),
      },
    })
    expect(reserved).toMatchObject({ status: 'Occupied' })
    const cancelled = await command('CS16-1', 'cancel_reservation', { reservation: 'RES-abc' })
    expect(lastCall('CS16')).toEqual({
      method: 'CancelReservation',
      params: { reservationId: reserve.params.reservationId },
    })
    // The station knows no such reservation.
    expect(cancelled).toMatchObject({ status: 'UnknownReservation', ocppStatus: 'Rejected' })
    // A numeric OCPI reservation id is the OCPP one.
    await command('CS16-1', 'cancel_reservation', { reservation: '77' })
    expect(lastCall('CS16')!.params).toEqual({ reservationId: 77 })
  })

  test('bad input gets Invalid or Rejected with a reason, and no call', async () => {
    const before = calls.get('CS16')!.length
    expect(await command('CS16-1', 'start_session', {})).toMatchObject({
      status: 'Invalid',
      reason: 'idTag is required',
    })
    expect(await command('CS16-1', 'start_session', { idTag: 'X'.repeat(21) })).toMatchObject({
      status: 'Rejected',
      reason: expect.stringContaining('longer than 20'),
    })
    expect(
      await command('CS16-1', 'reserve_now', { reservation: 'R', idTag: 'T', expires: Date.now() - 1 }),
    ).toMatchObject({ status: 'Rejected', reason: 'the reservation has expired' })
    expect(await command('CS16-1', 'stop_session', { transactionId: 'abc' })).toMatchObject({
      status: 'Invalid',
    })
    expect(calls.get('CS16')!.length).toBe(before)
  })

  test('limit_result carries the request too', async () => {
    const result = await command('CS16-1', 'limit_power', { v: 7_000, u: 'W' }, 'limit_result')
    expect(result).toMatchObject({ command: 'limit_power', status: 'Accepted', v: 7_000 })
  })
})

describe('OCPP 2.0.1: the same commands, 2.0.1 calls', () => {
  beforeAll(async () => {
    await station('CS201', 'ocpp2.0.1', {
      RequestStartTransaction: { status: 'Accepted', transactionId: 'tx-already' },
      RequestStopTransaction: { status: 'Accepted' },
      UnlockConnector: { status: 'OngoingAuthorizedTransaction' },
      ReserveNow: { status: 'Accepted' },
      CancelReservation: { status: 'Accepted' },
    })
  })

  test('start_session → RequestStartTransaction with the idToken', async () => {
    const result = await command('CS201-1', 'start_session', { idTag: 'TOKEN201', tokenType: 'RFID' })
    expect(lastCall('CS201')).toEqual({
      method: 'RequestStartTransaction',
      params: {
        evseId: 1,
        remoteStartId: expect.any(Number),
        idToken: { idToken: 'TOKEN201', type: 'Central' },
      },
    })
    expect(result).toMatchObject({ status: 'Accepted', transactionId: 'tx-already' })
  })

  test('stop_session → RequestStopTransaction', async () => {
    const result = await command('CS201-1', 'stop_session', { transactionId: 'tx-9' })
    expect(lastCall('CS201')).toEqual({ method: 'RequestStopTransaction', params: { transactionId: 'tx-9' } })
    expect(result).toMatchObject({ status: 'Accepted' })
  })

  test('unlock_connector → UnlockConnector with EVSE and connector', async () => {
    const result = await command('CS201-1', 'unlock_connector', { connector: 1 })
    expect(lastCall('CS201')).toEqual({ method: 'UnlockConnector', params: { evseId: 1, connectorId: 1 } })
    expect(result).toMatchObject({ status: 'Rejected', ocppStatus: 'OngoingAuthorizedTransaction' })
  })

  test('reserve_now → ReserveNow, cancel_reservation → CancelReservation', async () => {
    const expires = Date.now() + 600_000
    expect(
      await command('CS201-1', 'reserve_now', { reservation: '12', idTag: 'TOKEN201', expires }),
    ).toMatchObject({ status: 'Accepted' })
    expect(lastCall('CS201')).toEqual({
      method: 'ReserveNow',
      params: {
        id: 12,
        evseId: 1,
        expiryDateTime: new Date(expires).toISOString(),
        idToken: { idToken: 'TOKEN201', type: 'Central' },
      },
    })
    expect(await command('CS201-1', 'cancel_reservation', { reservation: '12' })).toMatchObject({
      status: 'Accepted',
    })
    expect(lastCall('CS201')).toEqual({ method: 'CancelReservation', params: { reservationId: 12 } })
  })
})

describe('a result, never silence', () => {
  test('a station without the feature answers NotImplemented: NotSupported', async () => {
    await station('BARE16', 'ocpp1.6', {})
    const result = await command('BARE16-1', 'unlock_connector', {})
    expect(result).toMatchObject({ status: 'NotSupported', code: 'NotImplemented' })
  })

  test('a station that does not answer in call_timeout: Timeout', async () => {
    await station('SLOW16', 'ocpp1.6', { RemoteStartTransaction: 'never' })
    const result = await command('SLOW16-1', 'start_session', { idTag: 'T1' })
    expect(calls.get('SLOW16')).toHaveLength(1)
    expect(result).toMatchObject({ status: 'Timeout' })
  })

  test('a known station that is not connected: Offline; one never heard of: UnknownStation', async () => {
    const gone = await station('GONE16', 'ocpp1.6', {})
    await gone.close({ force: true })
    await waitFor(
      () => received.some((event) => event.subject === 'oe.evt.station.GONE16.offline'),
      10_000,
      'GONE16 offline',
    )
    expect(await command('GONE16-1', 'start_session', { idTag: 'T1' })).toMatchObject({
      status: 'Offline',
      reason: "station 'GONE16' is not connected",
    })
    expect(await command('NOWHERE-1', 'unlock_connector', {})).toMatchObject({
      status: 'UnknownStation',
      source: 'ocpi:msp',
    })
  })
})

describe("drivers' tokens: the node's token authorisation decides", () => {
  const asked: Record<string, unknown>[] = []
  let answerer: Subscription
  beforeAll(() => {
    // As the OCPI plugin answers from its eMSPs' tokens (queue group: one answer each).
    const verdicts: Record<string, string> = { GOOD: 'Accepted', STOLEN: 'Blocked', OLD: 'Expired' }
    answerer = connection.subscribe('oe.auth.token', {
      queue: 'oe-auth',
      callback: (error, msg) => {
        if (error) return
        const request = decodeCbor(msg.data) as Record<string, unknown>
        asked.push(request)
        msg.respond(encodeCbor({ status: verdicts[String(request.token)] ?? 'Unknown', by: 'test' }))
      },
    })
  })

  test('OCPP 1.6 Authorize and StartTransaction', async () => {
    const client = clients.find((candidate) => candidate.identity === 'CS16')!
    expect(await client.call('Authorize', { idTag: 'STOLEN' })).toEqual({ idTagInfo: { status: 'Blocked' } })
    expect(asked.at(-1)).toEqual({ token: 'STOLEN', kind: 'station', rid: 'CS16' })
    // 1.6 has no Unknown: an unknown token is Invalid.
    expect(await client.call('Authorize', { idTag: 'NOBODY' })).toEqual({ idTagInfo: { status: 'Invalid' } })
    expect(await client.call('Authorize', { idTag: 'GOOD' })).toEqual({ idTagInfo: { status: 'Accepted' } })

    const blocked = (await client.call('StartTransaction', {
      connectorId: 1,
      idTag: 'OLD',
      meterStart: 100,
      timestamp: new Date().toISOString(),
    })) as { transactionId: number; idTagInfo: { status: string } }
    expect(blocked.idTagInfo).toEqual({ status: 'Expired' })
    expect(asked.at(-1)).toEqual({ token: 'OLD', kind: 'evse', rid: 'CS16-1' })
    const started = (await client.call('StartTransaction', {
      connectorId: 1,
      idTag: 'GOOD',
      meterStart: 200,
      timestamp: new Date().toISOString(),
    })) as { transactionId: number; idTagInfo: { status: string } }
    expect(started.idTagInfo).toEqual({ status: 'Accepted' })
    // The session events carry the token (the OCPI CPO's cdr_token).
    let sessionEvent: Record<string, unknown> | undefined
    await waitFor(() => {
      sessionEvent = received.find(
        (event) =>
          event.subject === 'oe.evt.evse.CS16-1.session_started' &&
          event.data.transactionId === String(started.transactionId),
      )?.data
      return sessionEvent !== undefined
    })
    expect(sessionEvent).toMatchObject({ idTag: 'GOOD', authorization: 'Accepted', meterStartWh: 200 })

    // The EVSE's open session is what stop_session stops when no id is given.
    await command('CS16-1', 'stop_session', {})
    expect(lastCall('CS16')).toEqual({
      method: 'RemoteStopTransaction',
      params: { transactionId: started.transactionId },
    })
    await client.call('StopTransaction', {
      transactionId: started.transactionId,
      meterStop: 1_200,
      timestamp: new Date().toISOString(),
    })
    await waitFor(() =>
      received.some(
        (event) =>
          event.subject === 'oe.evt.evse.CS16-1.session_stopped' &&
          event.data.transactionId === String(started.transactionId) &&
          event.data.idTag === 'GOOD' &&
          event.data.energyWh === 1_000,
      ),
    )
  })

  test('OCPP 2.0.1 Authorize and the idToken of TransactionEvent', async () => {
    const client = clients.find((candidate) => candidate.identity === 'CS201')!
    expect(await client.call('Authorize', { idToken: { idToken: 'STOLEN', type: 'ISO14443' } })).toEqual({
      idTokenInfo: { status: 'Blocked' },
    })
    expect(asked.at(-1)).toEqual({ token: 'STOLEN', type: 'ISO14443', kind: 'station', rid: 'CS201' })
    expect(await client.call('Authorize', { idToken: { idToken: 'NOBODY', type: 'ISO14443' } })).toEqual({
      idTokenInfo: { status: 'Unknown' },
    })
    const answer = await client.call('TransactionEvent', {
      eventType: 'Started',
      timestamp: new Date().toISOString(),
      triggerReason: 'Authorized',
      seqNo: 0,
      transactionInfo: { transactionId: 'tx-blocked' },
      evse: { id: 1, connectorId: 1 },
      idToken: { idToken: 'STOLEN', type: 'ISO14443' },
      meterValue: [
        {
          timestamp: new Date().toISOString(),
          sampledValue: [{ value: 5_000, measurand: 'Energy.Active.Import.Register' }],
        },
      ],
    })
    expect(answer).toEqual({ idTokenInfo: { status: 'Blocked' } })
    expect(asked.at(-1)).toMatchObject({ token: 'STOLEN', kind: 'evse', rid: 'CS201-1' })
    let sessionEvent: Record<string, unknown> | undefined
    await waitFor(() => {
      sessionEvent = received.find(
        (event) =>
          event.subject === 'oe.evt.evse.CS201-1.session_started' &&
          event.data.transactionId === 'tx-blocked',
      )?.data
      return sessionEvent !== undefined
    })
    expect(sessionEvent).toMatchObject({ idToken: 'STOLEN', tokenType: 'ISO14443', authorization: 'Blocked' })
    // Free charging needs no one's word.
    const before = asked.length
    expect(await client.call('Authorize', { idToken: { idToken: '', type: 'NoAuthorization' } })).toEqual({
      idTokenInfo: { status: 'Accepted' },
    })
    expect(asked.length).toBe(before)
  })

  test('when no one answers, tokens are accepted as before', async () => {
    answerer.unsubscribe()
    const client = clients.find((candidate) => candidate.identity === 'CS16')!
    expect(await client.call('Authorize', { idTag: 'STOLEN' })).toEqual({ idTagInfo: { status: 'Accepted' } })
  })
})

describe('OCPI → OCPP end to end: an eMSP starts a session at a station', () => {
  let nats: EmbeddedNatsServer
  let natsConnection: NatsConnection
  let plane: DataPlane
  let node: PluginHost
  let partner: FakePartner
  let cs: RPCClient
  let ocpiBase: string
  const remoteStarts: Record<string, unknown>[] = []

  beforeAll(async () => {
    const dir = await tempDir('oe-ocpp-ocpi-')
    nats = new EmbeddedNatsServer({ dir: join(dir, 'nats') }, { logger })
    await nats.start()
    natsConnection = await connectDataPlane({ servers: nats.url, ...nats.credentials })
    const limits = Object.fromEntries(
      Object.keys(STREAMS).map((name) => [name, { maxAgeMs: 0, maxBytes: -1 }]),
    ) as RetentionLimits
    plane = new DataPlane({ limits }, { connection: natsConnection, logger })
    await plane.start()
    const ocpiPort = await freePort()
    ocpiBase = `http://127.0.0.1:${ocpiPort}/ocpi`
    node = new PluginHost(
      {
        config: {
          ocpp: {
            enabled: true,
            listen: '127.0.0.1:0',
            stations: { E2E16: { password: 'pw-e2e16-secret' } },
          },
          ocpi: {
            enabled: true,
            listen: `127.0.0.1:${ocpiPort}`,
            country_code: 'NL',
            party_id: 'CPO',
            roles: ['cpo'],
            command_timeout: 10,
            pull_interval: 0,
            location: {
              address: 'Stationsplein 1',
              city: 'Utrecht',
              country: 'NLD',
              latitude: '52.089444',
              longitude: '5.110278',
              time_zone: 'Europe/Amsterdam',
            },
          },
        },
        dir: join(dir, 'plugins'),
      },
      { dataPlane: plane, logger, registry: new Registry(), definitions: [ocppPlugin, ocpiPlugin] },
    )
    await node.start()
    const ocppPort = Number(
      String(node.status().find((entry) => entry.id === 'ocpp')!.listen)
        .split(':')
        .pop(),
    )
    cs = new RPCClient({
      endpoint: `ws://127.0.0.1:${ocppPort}/ocpp`,
      identity: 'E2E16',
      password: 'pw-e2e16-secret',
      protocols: ['ocpp1.6'],
      strictMode: true,
      reconnect: false,
    } as never)
    clients.push(cs)
    cs.handle('RemoteStartTransaction', async ({ params }) => {
      remoteStarts.push(params as Record<string, unknown>)
      return { status: 'Accepted' }
    })
    await cs.connect()
    await cs.call('BootNotification', { chargePointVendor: 'ACME', chargePointModel: 'Wallbox' })
    await cs.call('StatusNotification', { connectorId: 1, errorCode: 'NoError', status: 'Available' })
    partner = await startFakePartner({ role: 'EMSP', countryCode: 'DE', partyId: 'MSP' })
    const { token } = (await node.action('ocpi', 'token_create', { name: 'msp' })) as { token: string }
    const registered = await partner.registerWith(`${ocpiBase}/versions`, token)
    expect(registered.body.status_code).toBe(1000)
    await waitFor(
      async () => {
        const { body } = await partner.call('GET', `${ocpiBase}/cpo/2.2.1/locations`)
        return (body.data as unknown[] | undefined)?.length === 1
      },
      15_000,
      'the station as a location',
    )
  }, 60_000)

  afterAll(async () => {
    await partner?.stop()
    await node?.stop()
    await plane?.stop()
    await natsConnection?.close()
    await nats?.stop()
  })

  const driver = (uid: string, valid = true) => ({
    country_code: 'DE',
    party_id: 'MSP',
    uid,
    type: 'RFID',
    contract_id: `DE-MSP-${uid}`,
    issuer: 'Drive Co',
    valid,
    whitelist: 'ALLOWED',
    last_updated: new Date().toISOString(),
  })

  test('START_SESSION over HTTP → RemoteStartTransaction at the station → CommandResult at the response_url', async () => {
    const origin = new URL(partner.versionsUrl).origin
    const responseUrl = `${origin}/ocpi/emsp/2.2.1/commands/START_SESSION/cmd-1`
    const answer = await partner.call('POST', `${ocpiBase}/cpo/2.2.1/commands/START_SESSION`, {
      body: { response_url: responseUrl, token: driver('DRIVER1'), location_id: 'E2E16' },
    })
    expect(answer.body).toMatchObject({ status_code: 1000, data: { result: 'ACCEPTED' } })
    await waitFor(() => remoteStarts.length > 0, 10_000, 'RemoteStartTransaction at the station')
    expect(remoteStarts).toEqual([{ connectorId: 1, idTag: 'DRIVER1' }])
    await waitFor(
      () =>
        partner.requests.some(
          (request) => request.method === 'POST' && request.path === new URL(responseUrl).pathname,
        ),
      10_000,
      'the CommandResult at the eMSP',
    )
    const posted = partner.requests.find((request) => request.path === new URL(responseUrl).pathname)!
    expect(posted.body).toEqual({ result: 'ACCEPTED' })

    // The station starts the transaction with the driver's token: an OCPI session whose
    // cdr_token is the eMSP's token, started by the command.
    await cs.call('StartTransaction', {
      connectorId: 1,
      idTag: 'DRIVER1',
      meterStart: 0,
      timestamp: new Date().toISOString(),
    })
    let session: Record<string, unknown> | undefined
    await waitFor(
      async () => {
        const { body } = await partner.call('GET', `${ocpiBase}/cpo/2.2.1/sessions`)
        session = (body.data as Record<string, unknown>[] | undefined)?.[0]
        return session !== undefined
      },
      10_000,
      'the OCPI session',
    )
    expect(session).toMatchObject({
      cdr_token: { uid: 'DRIVER1', contract_id: 'DE-MSP-DRIVER1', country_code: 'DE', party_id: 'MSP' },
      auth_method: 'COMMAND',
      status: 'ACTIVE',
    })
  })

  test("a token the eMSP pushed as not valid is Blocked at the station's Authorize", async () => {
    const pushed = await partner.call('PUT', `${ocpiBase}/cpo/2.2.1/tokens/DE/MSP/LOST1`, {
      body: driver('LOST1', false),
    })
    expect(pushed.body).toMatchObject({ status_code: 1000 })
    expect(await cs.call('Authorize', { idTag: 'LOST1' })).toEqual({ idTagInfo: { status: 'Blocked' } })
    const pushedGood = await partner.call('PUT', `${ocpiBase}/cpo/2.2.1/tokens/DE/MSP/OK1`, {
      body: driver('OK1'),
    })
    expect(pushedGood.body).toMatchObject({ status_code: 1000 })
    expect(await cs.call('Authorize', { idTag: 'OK1' })).toEqual({ idTagInfo: { status: 'Accepted' } })
  })
})
