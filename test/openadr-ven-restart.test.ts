/**
 * The OpenADR VEN plugin restarted (same data dir) while an event is in force: it keeps its
 * registration (no second ven or resource on the VTN), the limit is in force again after the
 * restart, the ad hoc report already sent is not sent twice, and an event created while the
 * VEN node was down is followed. Restarted while the VTN is away too, it enforces the events
 * it knew at once.
 */
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { freePort } from '../data-plane/index.ts'
import { RawOpenAdrClient } from '../plugins/openadr/testing.ts'
import { api } from './helpers/federation.ts'
import { cleanupAll, type RunningNode, readSubject, startNode, waitFor } from './helpers/node-process.ts'

const SECRETS = { bl: 'bl-secret-123', 'ven-r': 'ven-r-secret-1' }

let vtn: RunningNode
let ven: RunningNode
let base: string
let firstEventID: string

const venConfig = () => `org = "Aggregator"
[plugins.openadr-ven]
enabled = true
vtn_url = "${base}/openadr3/3.1.0"
client_id = "ven-r"
client_secret = "${SECRETS['ven-r']}"
ven_name = "site-r"
poll_interval = "500ms"
[plugins.openadr-ven.resources]
"battery-1" = "battery.siter-bat"
`

beforeAll(async () => {
  const port = await freePort()
  base = `http://127.0.0.1:${port}`
  vtn = await startNode({
    config: `org = "DSO"
[plugins.openadr-vtn]
enabled = true
listen = "127.0.0.1:${port}"
${Object.entries(SECRETS)
  .map(
    ([id, secret]) =>
      `[plugins.openadr-vtn.clients.${id}]\nsecret = "${secret}"\nrole = "${id === 'bl' ? 'bl' : 'ven'}"\n`,
  )
  .join('')}`,
  })
  ven = await startNode({ config: venConfig() })
})

afterAll(async () => {
  await cleanupAll()
})

const bl = async () => {
  const client = new RawOpenAdrClient(base, '3.1.0', 'bl', SECRETS.bl)
  await client.login()
  return client
}
const limits = async (node: RunningNode) =>
  (await readSubject(node, 'oe.ctl.battery.siter-bat.limit_power', 300)).map(
    (message) => message.data as Record<string, unknown>,
  )
const venStatus = async (node: RunningNode) =>
  (await api<{ id: string; connected: boolean; venID?: string }[]>(node, 'GET', '/v1/plugins')).find(
    (plugin) => plugin.id === 'openadr-ven',
  )!

describe('openadr-ven restarted while an event is in force', () => {
  test('keeps its registration, the limit in force and its reports, and follows what came meanwhile', async () => {
    const admin = await bl()
    const programID = ((await admin.post('/programs', { programName: 'restart' })).body as { id: string }).id
    await waitFor(async () => (await venStatus(ven)).venID !== undefined, 20_000, 'registration')
    const venID = (await venStatus(ven)).venID
    await api(ven, 'POST', '/v1/telemetry', [
      { kind: 'battery', rid: 'siter-bat', q: 'power', v: 3000, t: Date.now() - 5_000 },
    ])
    const start = Date.now() + 500
    const event = await admin.post('/events', {
      programID,
      eventName: 'long limit',
      payloadDescriptors: [{ payloadType: 'IMPORT_CAPACITY_LIMIT', units: 'KW' }],
      intervalPeriod: { start: new Date(start).toISOString(), duration: 'PT1H' },
      intervals: [{ id: 0, payloads: [{ type: 'IMPORT_CAPACITY_LIMIT', values: [4] }] }],
      reportDescriptors: [{ payloadType: 'DEMAND', units: 'KW', frequency: 0 }],
    })
    const eventID = (event.body as { id: string }).id
    firstEventID = eventID
    await waitFor(async () => (await limits(ven)).length >= 1, 20_000, 'limit before the restart')
    const reportsOf = async () =>
      ((await (await bl()).get(`/reports?eventID=${eventID}`)).body as unknown[]).length
    await waitFor(async () => (await reportsOf()) === 1, 20_000, 'the ad hoc report')

    expect(await ven.stop()).toBe(0)
    // Created while the VEN node is down.
    const later = await admin.post('/events', {
      programID,
      eventName: 'price meanwhile',
      intervalPeriod: { start: new Date(Date.now()).toISOString(), duration: 'PT1H' },
      payloadDescriptors: [{ payloadType: 'PRICE', units: 'KWH', currency: 'EUR' }],
      intervals: [{ id: 0, payloads: [{ type: 'PRICE', values: [0.3] }] }],
    })
    const laterID = (later.body as { id: string }).id
    ven = await startNode({ dataDir: ven.dataDir })

    await waitFor(
      async () =>
        (await readSubject(ven, 'oe.evt.battery.siter-bat.price', 300)).some(
          (message) => message.data.eventID === laterID,
        ),
      20_000,
      'the price of the event created while down',
    )
    // The limit is in force after the restart: published again, same event, same end.
    await waitFor(async () => (await limits(ven)).length >= 2, 20_000, 'limit after the restart')
    const applied = await limits(ven)
    expect(applied).toHaveLength(2)
    for (const limit of applied)
      expect(limit).toMatchObject({ v: 4000, until: start + 3_600_000, source: `openadr:${eventID}` })
    const status = await venStatus(ven)
    expect(status).toMatchObject({ connected: true, venID })
    const vens = (await admin.get('/vens')).body as unknown[]
    const resources = (await admin.get('/resources')).body as unknown[]
    expect([vens.length, resources.length]).toEqual([1, 1])
    // A few more polls: still one report of the first event.
    await Bun.sleep(2_000)
    expect(await reportsOf()).toBe(1)
  })

  test('restarted while the VTN is away, it enforces the events it knew at once', async () => {
    const before = (await limits(ven)).length
    expect(await vtn.stop()).toBe(0)
    expect(await ven.stop()).toBe(0)
    ven = await startNode({ dataDir: ven.dataDir })
    await waitFor(async () => (await limits(ven)).length > before, 20_000, 'the limit without the VTN')
    expect((await limits(ven)).at(-1)).toMatchObject({ v: 4000, source: `openadr:${firstEventID}` })
    expect((await venStatus(ven)).connected).toBe(false)
  })
})
