/**
 * The OpenADR VEN plugin in a real node following the VTN plugin in another real node (both
 * versions): registration, events → limit_power and price events at the right time, reports
 * from the VEN node's telemetry that arrive as telemetry on the VTN node, limit_power on the VTN
 * node reaching the VEN node's data plane, and a VTN outage the VEN rides out.
 */
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { connect } from '@nats-io/transport-node'
import { encode as encodeCbor } from 'cbor-x'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { freePort } from '../data-plane/index.ts'
import { resourceIdFor } from '../plugins/openadr/index.ts'
import { type AnyJson, RawOpenAdrClient } from '../plugins/openadr/testing.ts'
import { api } from './helpers/federation.ts'
import { cleanupAll, type RunningNode, readSubject, startNode, waitFor } from './helpers/node-process.ts'

let vtn: RunningNode
let ven: RunningNode
let ven301: RunningNode
let port: number
let base: string
const SECRETS = { bl: 'bl-secret-123', 'ven-a': 'ven-a-secret-1', 'ven-b': 'ven-b-secret-1' }

const vtnConfig = () => `org = "DSO"
[plugins.openadr-vtn]
enabled = true
listen = "127.0.0.1:${port}"
token_lifetime = "3s"
${Object.entries(SECRETS)
  .map(
    ([id, secret]) =>
      `[plugins.openadr-vtn.clients.${id}]\nsecret = "${secret}"\nrole = "${id === 'bl' ? 'bl' : 'ven'}"\n`,
  )
  .join('')}`

const venConfig = (
  id: 'ven-a' | 'ven-b',
  version: '3.1.0' | '3.0.1',
  name: string,
  target: string,
) => `org = "Aggregator"
[plugins.openadr-ven]
enabled = true
vtn_url = "${base}/openadr3/${version}"
client_id = "${id}"
client_secret = "${SECRETS[id]}"
ven_name = "${name}"
version = "${version}"
poll_interval = "500ms"
[plugins.openadr-ven.resources]
"battery-1" = "${target}"
`

beforeAll(async () => {
  port = await freePort()
  base = `http://127.0.0.1:${port}`
  vtn = await startNode({ config: vtnConfig() })
  ven = await startNode({ config: venConfig('ven-a', '3.1.0', 'site-7', 'battery.site7-bat') })
  ven301 = await startNode({ config: venConfig('ven-b', '3.0.1', 'site-8', 'battery.site8-bat') })
})

afterAll(async () => {
  await cleanupAll()
})

const bl = () => new RawOpenAdrClient(base, '3.1.0', 'bl', SECRETS.bl)
const state: Record<string, AnyJson> = {}

async function publishOn(node: RunningNode, subject: string, payload: unknown): Promise<void> {
  const { nats } = await api<{ nats: { url: string } }>(node, 'GET', '/v1/status')
  const auth = JSON.parse(await readFile(join(node.dataDir, 'nats', 'auth.json'), 'utf8'))
  const nc = await connect({ servers: nats.url, user: auth.user, pass: auth.password })
  try {
    nc.publish(subject, encodeCbor(payload))
    await nc.flush()
  } finally {
    await nc.close()
  }
}

describe('openadr-ven following openadr-vtn', () => {
  test('both VENs register their ven and resource with the VTN', async () => {
    const admin = bl()
    await admin.login()
    await waitFor(
      async () => {
        const vens = (await admin.get('/vens')).body as { venName: string }[]
        const resources = (await admin.get('/resources')).body as { resourceName: string }[]
        return vens.length === 2 && resources.length === 2
      },
      20_000,
      'registration',
    )
    const vens = (await admin.get('/vens')).body as { venName: string; clientID: string; id: string }[]
    expect(vens.map((item) => [item.venName, item.clientID]).sort()).toEqual([
      ['site-7', 'ven-a'],
      ['site-8', 'ven-b'],
    ])
    state.venA = vens.find((item) => item.venName === 'site-7')!.id
    const status = (
      await api<{ id: string; connected: boolean; venID: string }[]>(ven, 'GET', '/v1/plugins')
    ).find((plugin) => plugin.id === 'openadr-ven')!
    expect(status).toMatchObject({ connected: true, venID: state.venA, ready: true })
  })

  test('an event with a capacity limit and prices acts at the right time on both VEN nodes; an ad-hoc DEMAND report arrives as telemetry on the VTN node', async () => {
    const admin = bl()
    await admin.login()
    const program = await admin.post('/programs', { programName: 'doe' })
    state.programID = (program.body as { id: string }).id
    // Telemetry on the VEN node for the DEMAND report.
    const now = Date.now()
    const readings = [0, 1, 2].map((i) => ({
      kind: 'battery',
      rid: 'site7-bat',
      q: 'power',
      v: 4000 + i * 1000,
      t: now - 30_000 + i * 10_000,
    }))
    await api(ven, 'POST', '/v1/telemetry', readings)
    const start = Date.now() + 1500
    const event = await admin.post('/events', {
      programID: state.programID,
      eventName: 'limit and prices',
      payloadDescriptors: [
        { payloadType: 'IMPORT_CAPACITY_LIMIT', units: 'KW' },
        { payloadType: 'PRICE', units: 'KWH', currency: 'EUR' },
      ],
      intervalPeriod: { start: new Date(start).toISOString(), duration: 'PT2S' },
      intervals: [
        {
          id: 0,
          payloads: [
            { type: 'IMPORT_CAPACITY_LIMIT', values: [5] },
            { type: 'PRICE', values: [0.1, 0.2] },
          ],
        },
        { id: 1, payloads: [{ type: 'IMPORT_CAPACITY_LIMIT', values: [7.5] }] },
      ],
      reportDescriptors: [{ payloadType: 'DEMAND', units: 'KW', frequency: 0 }],
    })
    expect(event.status).toBe(201)
    state.eventID = (event.body as { id: string }).id
    const limits = (node: RunningNode, rid: string) =>
      readSubject(node, `oe.ctl.battery.${rid}.limit_power`, 300).then((messages) =>
        messages.map((message) => message.data as Record<string, number | string>),
      )
    await waitFor(
      async () => (await limits(ven, 'site7-bat')).length >= 2,
      20_000,
      'two limits on the VEN node',
    )
    const applied = await limits(ven, 'site7-bat')
    expect(applied[0]).toMatchObject({
      v: 5000,
      u: 'W',
      until: start + 2000,
      source: `openadr:${state.eventID}`,
      direction: 'import',
    })
    expect(applied[1]).toMatchObject({ v: 7500, until: start + 4000 })
    // Sent when each value starts, not before.
    const ctlTimes = (await readSubject(ven, 'oe.ctl.battery.site7-bat.limit_power', 300)).length
    expect(ctlTimes).toBe(2)
    const prices = (await readSubject(ven, 'oe.evt.battery.site7-bat.price', 300)).map(
      (m) => m.data as Record<string, unknown>,
    )
    expect(prices.map((p) => [p.v, p.start, p.end])).toEqual([
      [0.1, start, start + 1000],
      [0.2, start + 1000, start + 2000],
    ])
    expect(prices[0]).toMatchObject({ type: 'PRICE', units: 'KWH', currency: 'EUR', eventID: state.eventID })
    // The 3.0.1 VEN acted on the same event.
    await waitFor(
      async () => (await limits(ven301, 'site8-bat')).length >= 2,
      20_000,
      'limits on the 3.0.1 VEN node',
    )
    expect((await limits(ven301, 'site8-bat'))[0]).toMatchObject({ v: 5000, until: start + 2000 })
    // The ad-hoc DEMAND report: mean power 5 kW → 5000 W on the VTN node.
    const rid = resourceIdFor('site-7', 'battery-1')
    await waitFor(
      async () => (await readSubject(vtn, `oe.tel.der.${rid}.power`, 300)).length >= 1,
      20_000,
      'DEMAND report telemetry',
    )
    expect((await readSubject(vtn, `oe.tel.der.${rid}.power`, 300))[0]!.data.v).toBe(5000)
  })

  test('limit_power on the VTN node reaches the VEN node as limit_power; the VEN reports the setpoint (control_result Accepted)', async () => {
    const rid = resourceIdFor('site-7', 'battery-1')
    await publishOn(vtn, `oe.ctl.der.${rid}.limit_power`, { v: 2200, u: 'W', source: 'dso' })
    await waitFor(
      async () =>
        (await readSubject(ven, 'oe.ctl.battery.site7-bat.limit_power', 300)).some(
          (m) => (m.data as { v?: number }).v === 2200,
        ),
      20_000,
      'limit on the VEN node',
    )
    const results = async () =>
      (await readSubject(vtn, `oe.evt.der.${rid}.control_result`, 300)).map(
        (m) => m.data as Record<string, unknown>,
      )
    await waitFor(async () => (await results()).some((r) => r.status === 'Accepted'), 20_000, 'Accepted')
    expect((await results()).map((r) => r.status)).toEqual(['Sent', 'Delivered', 'Accepted'])
    expect((await results()).at(-1)).toMatchObject({ v: 2200 })
  })

  test('a SIMPLE level becomes demand_level; historical USAGE and STORAGE_CHARGE_LEVEL reports follow the interval from telemetry', async () => {
    const admin = bl()
    await admin.login()
    const start = Date.now() + 1000
    await api(ven, 'POST', '/v1/telemetry', [
      { kind: 'battery', rid: 'site7-bat', q: 'energy_import', v: 1000, t: start + 100 },
      { kind: 'battery', rid: 'site7-bat', q: 'soc', v: 40, t: start + 500 },
      { kind: 'battery', rid: 'site7-bat', q: 'soc', v: 60, t: start + 1500 },
      { kind: 'battery', rid: 'site7-bat', q: 'energy_import', v: 1500, t: start + 1900 },
    ])
    const event = await admin.post('/events', {
      programID: state.programID,
      eventName: 'level and reports',
      intervalPeriod: { start: new Date(start).toISOString(), duration: 'PT2S' },
      intervals: [{ id: 5, payloads: [{ type: 'SIMPLE', values: [2] }] }],
      reportDescriptors: [
        { payloadType: 'USAGE', units: 'KWH' },
        { payloadType: 'STORAGE_CHARGE_LEVEL', units: 'PERCENT' },
      ],
    })
    const eventID = (event.body as { id: string }).id
    await waitFor(
      async () => (await readSubject(ven, 'oe.evt.battery.site7-bat.demand_level', 300)).length >= 1,
      20_000,
      'demand level',
    )
    const level = (await readSubject(ven, 'oe.evt.battery.site7-bat.demand_level', 300))[0]!.data
    expect(level).toMatchObject({ type: 'SIMPLE', v: 2, eventID, intervalId: 5, start, end: start + 2000 })
    // After the interval: both reports, on the VTN node as telemetry of the VEN's resource.
    const rid = resourceIdFor('site-7', 'battery-1')
    await waitFor(
      async () => (await readSubject(vtn, `oe.tel.der.${rid}.soc`, 300)).length >= 1,
      20_000,
      'soc report',
    )
    expect((await readSubject(vtn, `oe.tel.der.${rid}.soc`, 300)).map((m) => [m.data.v, m.data.t])).toEqual([
      [60, start],
    ])
    await waitFor(
      async () => (await readSubject(vtn, `oe.tel.der.${rid}.power`, 300)).some((m) => m.data.t === start),
      20_000,
      'usage report',
    )
    // 0.5 kWh over 2 s is a mean of 900 kW.
    expect(
      (await readSubject(vtn, `oe.tel.der.${rid}.power`, 300)).find((m) => m.data.t === start)!.data.v,
    ).toBe(900_000)
    await admin.login()
    const reports = (await admin.get(`/reports?eventID=${eventID}`)).body as {
      payloadDescriptors: { payloadType: string }[]
    }[]
    expect(reports.map((report) => report.payloadDescriptors[0]!.payloadType).sort()).toEqual([
      'STORAGE_CHARGE_LEVEL',
      'USAGE',
    ])
  })

  test('tokens of a few seconds: the VEN renews them and stays connected', async () => {
    const polls = async () =>
      (
        await api<{ id: string; connected: boolean; lastPoll?: number; lastError?: string }[]>(
          ven,
          'GET',
          '/v1/plugins',
        )
      ).find((plugin) => plugin.id === 'openadr-ven')!
    const before = await polls()
    await Bun.sleep(7_000)
    const after = await polls()
    expect(after.connected).toBe(true)
    expect(after.lastError).toBeUndefined()
    expect(after.lastPoll!).toBeGreaterThan(before.lastPoll! + 5_000)
  })

  test('the VEN rides out a VTN outage and follows new events after it', async () => {
    expect(await vtn.stop()).toBe(0)
    await Bun.sleep(1500)
    expect((await fetch(`${ven.api}/readyz`)).status).toBe(200)
    const during = (await api<{ id: string; connected: boolean }[]>(ven, 'GET', '/v1/plugins')).find(
      (p) => p.id === 'openadr-ven',
    )!
    expect(during.connected).toBe(false)
    vtn = await startNode({ dataDir: vtn.dataDir })
    const admin = bl()
    await admin.login()
    await admin.post('/events', {
      programID: state.programID,
      eventName: 'after the outage',
      payloadDescriptors: [{ payloadType: 'EXPORT_CAPACITY_LIMIT', units: 'KW' }],
      intervals: [
        {
          id: 0,
          intervalPeriod: { start: '0001-01-01', duration: 'P9999Y' },
          payloads: [{ type: 'EXPORT_CAPACITY_LIMIT', values: [1.5] }],
        },
      ],
    })
    await waitFor(
      async () =>
        (await readSubject(ven, 'oe.ctl.battery.site7-bat.limit_power', 300)).some(
          (m) => (m.data as { direction?: string }).direction === 'export',
        ),
      30_000,
      'export limit after the outage',
    )
    const last = (await readSubject(ven, 'oe.ctl.battery.site7-bat.limit_power', 300)).find(
      (m) => (m.data as { direction?: string }).direction === 'export',
    )!.data as Record<string, unknown>
    expect(last).toMatchObject({ v: 1500, u: 'W' })
    expect(last.until).toBeUndefined()
  })
})
