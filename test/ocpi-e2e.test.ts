/**
 * Our CPO against our eMSP, each a node process, with a real OCPP 1.6 station (ocpp-rpc) at the
 * CPO: registration through the CLI (eMSP registers with the CPO), the station's EVSE as a
 * location at the eMSP with its status pushed as it changes, the eMSP's driver token at the
 * CPO answering the node's token authorisation, a START_SESSION from the eMSP's data plane, the
 * station's transaction as an OCPI session at the eMSP, a charging profile from `limit_power`
 * that reaches the station as SetChargingProfile, the end of the session as a CDR at the
 * eMSP, unregistration, and registration the other way round (CPO registers with the eMSP).
 */
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { connect, type NatsConnection } from '@nats-io/transport-node'
import { decode as decodeCbor, encode as encodeCbor } from 'cbor-x'
import { RPCClient } from 'ocpp-rpc'
import { afterAll, beforeAll, expect, test } from 'vitest'
import { freePort } from '../data-plane/index.ts'
import { api } from './helpers/federation.ts'
import {
  cleanupAll,
  type RunningNode,
  readSubject,
  runCli,
  startNode,
  waitFor,
} from './helpers/node-process.ts'

let cpo: RunningNode
let emsp: RunningNode
let station: RPCClient
let cpoNats: NatsConnection
let emspNats: NatsConnection
const remoteStarts: Record<string, unknown>[] = []
const unlocks: Record<string, unknown>[] = []
const profiles: Record<string, unknown>[] = []
const EVSE = 'NL_CPO_CS1-1'

async function natsOf(node: RunningNode): Promise<NatsConnection> {
  const { nats } = await api<{ nats: { url: string } }>(node, 'GET', '/v1/status')
  const auth = JSON.parse(await readFile(join(node.dataDir, 'nats', 'auth.json'), 'utf8'))
  return connect({ servers: nats.url, user: auth.user, pass: auth.password })
}

async function cli(node: RunningNode, ...args: string[]): Promise<Record<string, unknown>> {
  const result = await runCli(['--data-dir', node.dataDir, '--json', 'ocpi', ...args])
  if (result.code !== 0) throw new Error(`ocpi ${args.join(' ')}: ${result.code} ${result.stderr}`)
  return JSON.parse(result.stdout)
}

async function resource(
  node: RunningNode,
  kind: string,
  rid: string,
): Promise<{ attrs: Record<string, unknown>; [field: string]: unknown } | undefined> {
  const response = await node.fetch(`/v1/resources/${kind}/${rid}`)
  if (response.status !== 200) return undefined
  return ((await response.json()) as { resource: { attrs: Record<string, unknown> } }).resource
}

async function events(node: RunningNode, subject: string, settle = 300): Promise<Record<string, unknown>[]> {
  return (await readSubject(node, subject, settle)).map((message) => message.data)
}

async function waitEvent(
  node: RunningNode,
  subject: string,
  match: (event: Record<string, unknown>) => boolean,
  what: string,
): Promise<Record<string, unknown>> {
  let found: Record<string, unknown> | undefined
  await waitFor(
    async () => {
      found = (await events(node, subject)).find(match)
      return found !== undefined
    },
    20_000,
    what,
  )
  return found!
}

const iso = (ms: number) => new Date(ms).toISOString()

beforeAll(async () => {
  const [ocppPort, cpoPort, emspPort] = [await freePort(), await freePort(), await freePort()]
  cpo = await startNode({
    config: [
      'org = "CPO"',
      '[plugins.ocpp]',
      'enabled = true',
      `listen = "127.0.0.1:${ocppPort}"`,
      '[plugins.ocpp.stations.CS1]',
      'password = "cs1-secret-password"',
      '[plugins.ocpi]',
      'enabled = true',
      `listen = "127.0.0.1:${cpoPort}"`,
      'country_code = "NL"',
      'party_id = "CPO"',
      'roles = ["cpo"]',
      'business_name = "Charge Co"',
      'command_timeout = 5',
      'pull_interval = 0',
      'tariffs = [{ id = "T1", currency = "EUR", elements = [{ price_components = [{ type = "ENERGY", price = 0.30, vat = 21.0, step_size = 1 }] }] }]',
      '[plugins.ocpi.location]',
      'address = "Stationsplein 1"',
      'city = "Utrecht"',
      'country = "NLD"',
      'latitude = "52.089444"',
      'longitude = "5.110278"',
      'time_zone = "Europe/Amsterdam"',
    ].join('\n'),
  })
  emsp = await startNode({
    config: [
      'org = "MSP"',
      '[plugins.ocpi]',
      'enabled = true',
      `listen = "127.0.0.1:${emspPort}"`,
      'country_code = "DE"',
      'party_id = "MSP"',
      'roles = ["emsp"]',
      'business_name = "Drive Co"',
      'pull_interval = 0',
      '[plugins.ocpi.tokens.TOKEN1]',
      'contract_id = "DE-MSP-C00001"',
      'whitelist = "ALLOWED"',
    ].join('\n'),
  })
  station = new RPCClient({
    endpoint: `ws://127.0.0.1:${ocppPort}/ocpp`,
    identity: 'CS1',
    password: 'cs1-secret-password',
    protocols: ['ocpp1.6'],
    strictMode: true,
    reconnect: false,
  } as never)
  station.handle('RemoteStartTransaction', async ({ params }) => {
    remoteStarts.push(params as Record<string, unknown>)
    return { status: 'Accepted' }
  })
  station.handle('UnlockConnector', async ({ params }) => {
    unlocks.push(params as Record<string, unknown>)
    return { status: 'Unlocked' }
  })
  station.handle('SetChargingProfile', async ({ params }) => {
    profiles.push(params as Record<string, unknown>)
    return { status: 'Accepted' }
  })
  await station.connect()
  await station.call('BootNotification', { chargePointVendor: 'ACME', chargePointModel: 'Wallbox' })
  await station.call('StatusNotification', { connectorId: 1, errorCode: 'NoError', status: 'Available' })
  await waitFor(
    async () => (await resource(cpo, 'evse', 'CS1-1')) !== undefined,
    10_000,
    'the EVSE at the CPO',
  )
  cpoNats = await natsOf(cpo)
  emspNats = await natsOf(emsp)
}, 60_000)

afterAll(async () => {
  await station?.close({ force: true }).catch(() => {})
  await cpoNats?.close().catch(() => {})
  await emspNats?.close().catch(() => {})
  await cleanupAll()
})

test('a CPO and an eMSP roam: registration, locations, status, tokens, commands, a session, a profile, a CDR, unregistration', async () => {
  // -- registration: the eMSP registers with the CPO (the CLI on both sides).
  const invitation = await cli(cpo, 'token', 'create', '--name', 'msp')
  expect(invitation).toMatchObject({ partner: 'msp', token: expect.any(String) })
  const registered = await cli(
    emsp,
    'register',
    String(invitation.versions_url),
    '--token',
    String(invitation.token),
    '--name',
    'cpo',
  )
  expect(registered).toMatchObject({
    id: 'cpo',
    state: 'registered',
    initiator: 'us',
    roles: [{ role: 'CPO', country_code: 'NL', party_id: 'CPO', name: 'Charge Co' }],
  })
  expect(registered.modules).toEqual(
    expect.arrayContaining(['locations:sender', 'commands:receiver', 'tokens:receiver']),
  )
  const atCpo = (await cli(cpo, 'partners')) as { partners: Record<string, unknown>[] }
  expect(atCpo.partners).toEqual([
    expect.objectContaining({
      id: 'msp',
      state: 'registered',
      initiator: 'partner',
      roles: [expect.objectContaining({ role: 'EMSP', country_code: 'DE', party_id: 'MSP' })],
      last_contact: expect.any(Number),
    }),
  ])

  // -- the station's EVSE is a location at the eMSP (pushed, and pulled).
  await waitFor(
    async () => (await resource(emsp, 'evse', EVSE))?.attrs !== undefined,
    15_000,
    'the EVSE at the eMSP',
  )
  expect(await resource(emsp, 'station', 'NL_CPO_CS1')).toMatchObject({
    attrs: { source: 'ocpi', partner: 'cpo', address: 'Stationsplein 1', ocpi: { location_id: 'CS1' } },
  })
  expect((await resource(emsp, 'evse', EVSE))!.attrs).toMatchObject({
    status: 'AVAILABLE',
    station: 'NL_CPO_CS1',
    evse: 1,
  })

  // -- the eMSP's token reached the CPO: the node's token authorisation accepts it.
  const authorize = async (token: string) =>
    decodeCbor(
      (
        await cpoNats.request('oe.auth.token', encodeCbor({ token, kind: 'evse', rid: 'CS1-1' }), {
          timeout: 5_000,
        })
      ).data,
    )
  await waitFor(async () => (await authorize('TOKEN1')).status === 'Accepted', 10_000, 'TOKEN1 at the CPO')
  // Unknown to the CPO: asked at the eMSP in real time, unknown there too.
  expect(await authorize('NOBODY')).toMatchObject({ status: 'Unknown', by: 'ocpi' })

  // -- live status: the station's status change is pushed to the eMSP (PATCH).
  await station.call('StatusNotification', { connectorId: 1, errorCode: 'NoError', status: 'Preparing' })
  await waitFor(
    async () => (await resource(emsp, 'evse', EVSE))?.attrs?.status === 'CHARGING',
    10_000,
    'CHARGING at the eMSP',
  )
  await waitEvent(
    emsp,
    `oe.evt.evse.${EVSE}.status`,
    (event) => event.status === 'CHARGING',
    'the status event',
  )

  // -- START_SESSION from the eMSP's data plane.
  emspNats.publish(
    `oe.ctl.evse.${EVSE}.start_session`,
    encodeCbor({ token: 'TOKEN1', request: 'start-1', source: 'app' }),
  )
  await waitEvent(
    emsp,
    `oe.evt.evse.${EVSE}.control_result`,
    (event) => event.request === 'start-1' && event.stage === 'response' && event.result === 'ACCEPTED',
    'the CPO accepting START_SESSION',
  )
  // The CPO put it on its control path for the station's plugin.
  const [control] = await events(cpo, 'oe.ctl.evse.CS1-1.start_session')
  expect(control).toMatchObject({
    idTag: 'TOKEN1',
    tokenType: 'RFID',
    connector: 1,
    source: 'ocpi:msp',
    request: expect.any(String),
  })
  // The OCPP plugin carries it to the station as RemoteStartTransaction; its answer goes back.
  await waitEvent(
    emsp,
    `oe.evt.evse.${EVSE}.control_result`,
    (event) =>
      event.request === 'start-1' &&
      event.stage === 'result' &&
      event.result === 'ACCEPTED' &&
      event.ok === true,
    'the CommandResult at the eMSP',
  )
  expect(remoteStarts).toEqual([{ connectorId: 1, idTag: 'TOKEN1' }])

  // -- the station starts the transaction: an OCPI session at the eMSP.
  const t0 = Date.now()
  const { transactionId } = (await station.call('StartTransaction', {
    connectorId: 1,
    idTag: 'TOKEN1',
    meterStart: 1_000,
    timestamp: iso(t0),
  })) as { transactionId: number }
  const sessionStarted = await waitEvent(
    emsp,
    `oe.evt.evse.${EVSE}.session_started`,
    () => true,
    'session_started at the eMSP',
  )
  expect(sessionStarted).toMatchObject({
    partner: 'cpo',
    token: 'TOKEN1',
    contract_id: 'DE-MSP-C00001',
    auth_method: 'COMMAND',
  })

  // -- a charging profile from limit_power at the eMSP reaches the station.
  emspNats.publish(`oe.ctl.evse.${EVSE}.limit_power`, encodeCbor({ v: 7_000, u: 'W', request: 'limit-1' }))
  await waitFor(() => profiles.length > 0, 15_000, 'SetChargingProfile at the station')
  expect(profiles[0]).toMatchObject({
    connectorId: 1,
    csChargingProfiles: {
      chargingSchedule: { chargingRateUnit: 'W', chargingSchedulePeriod: [{ startPeriod: 0, limit: 7_000 }] },
    },
  })
  await waitEvent(
    emsp,
    `oe.evt.evse.${EVSE}.control_result`,
    (event) => event.request === 'limit-1' && event.stage === 'result' && event.result === 'ACCEPTED',
    'the ChargingProfileResult at the eMSP',
  )

  // -- the session ends: a completed session, its energy, and a CDR at the eMSP.
  await station.call('MeterValues', {
    connectorId: 1,
    transactionId,
    meterValue: [
      {
        timestamp: iso(t0 + 1_000),
        sampledValue: [{ value: '4000', measurand: 'Energy.Active.Import.Register', unit: 'Wh' }],
      },
    ],
  })
  await station.call('StopTransaction', {
    transactionId,
    meterStop: 8_500,
    timestamp: iso(t0 + 2_000),
    idTag: 'TOKEN1',
  })
  const ended = await waitEvent(
    emsp,
    `oe.evt.evse.${EVSE}.session_ended`,
    () => true,
    'session_ended at the eMSP',
  )
  expect(ended).toMatchObject({ kwh: 7.5, status: 'COMPLETED', partner: 'cpo' })
  const cdr = await waitEvent(emsp, `oe.evt.evse.${EVSE}.cdr`, () => true, 'the CDR at the eMSP')
  expect(cdr).toMatchObject({ kwh: 7.5, cost: 2.25, currency: 'EUR', token: 'TOKEN1', partner: 'cpo' })
  const energy = await readSubject(emsp, `oe.tel.evse.${EVSE}.energy_import`, 300)
  expect(energy.at(-1)!.data.v).toBe(7_500)

  // -- unregistration (the eMSP's CLI), then registration the other way round.
  expect(await cli(emsp, 'unregister', 'cpo')).toEqual({ partner: 'cpo', remote: 'unregistered' })
  expect(((await cli(cpo, 'partners')) as { partners: unknown[] }).partners).toEqual([])
  expect(((await cli(emsp, 'partners')) as { partners: unknown[] }).partners).toEqual([])

  const reverse = await cli(emsp, 'token', 'create', '--name', 'cpo2')
  const back = await cli(
    cpo,
    'register',
    String(reverse.versions_url),
    '--token',
    String(reverse.token),
    '--name',
    'msp2',
  )
  expect(back).toMatchObject({
    id: 'msp2',
    state: 'registered',
    initiator: 'us',
    roles: [expect.objectContaining({ role: 'EMSP' })],
  })
  // The CPO pushes status to its new partner.
  await station.call('StatusNotification', { connectorId: 1, errorCode: 'NoError', status: 'Faulted' })
  await waitFor(
    async () => (await resource(emsp, 'evse', EVSE))?.attrs?.status === 'OUTOFORDER',
    10_000,
    'OUTOFORDER at the eMSP',
  )
  const emspPartners = (await cli(emsp, 'partners')) as { partners: Record<string, unknown>[] }
  expect(emspPartners.partners).toEqual([
    expect.objectContaining({ id: 'cpo2', state: 'registered', initiator: 'partner' }),
  ])

  // -- the eMSP's CLI: a pull on demand, and UNLOCK_CONNECTOR, which the OCPP plugin carries to
  // the station as UnlockConnector.
  const pulled = (await cli(emsp, 'pull', 'cpo2', '--module', 'locations')) as {
    pulled: { cpo2: { locations: Record<string, unknown> } }
  }
  expect(pulled.pulled.cpo2.locations).toMatchObject({ complete: true, received: 1, total: 1 })
  const unlock = await cli(emsp, 'command', EVSE, 'unlock_connector')
  expect(unlock).toMatchObject({ evse: EVSE, command: 'unlock_connector', ok: true, result: 'ACCEPTED' })
  await waitEvent(
    emsp,
    `oe.evt.evse.${EVSE}.control_result`,
    (event) => event.request === unlock.request && event.stage === 'result' && event.result === 'ACCEPTED',
    'ACCEPTED for UNLOCK_CONNECTOR (the station unlocked)',
  )
  expect(unlocks).toEqual([{ connectorId: 1 }])
  expect(await events(cpo, 'oe.ctl.evse.CS1-1.unlock_connector')).toEqual([
    expect.objectContaining({ connector: 1, source: 'ocpi:msp2', request: expect.any(String) }),
  ])
}, 90_000)
