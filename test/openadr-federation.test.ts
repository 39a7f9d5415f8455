/**
 * OpenADR across the federation, end to end, with three real nodes:
 * - A (Gridco, a network partner) holds a control grant and a telemetry grant on B;
 * - B (Aggregator) runs the VTN;
 * - C (Site) runs the VEN plugin against B's VTN, its battery registered as a VEN resource.
 * A publishes `oe.send.b.ctl.der.<rid>.limit_power` for C's resource as B knows it; B receives
 * it under the control grant on `oe.ctl…`, its VTN turns it into an IMPORT_CAPACITY_LIMIT event
 * for C's VEN, C's VEN publishes `limit_power` on C's data plane and reports the setpoint, the
 * report becomes telemetry on B, and the telemetry grant carries it to A as `oe.peer.b.tel…`.
 * Along the way both operators' status shows the link: B's VTN lists the VEN with its last
 * report, C's VEN its VTN connection and the active event.
 */
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { connect } from '@nats-io/transport-node'
import { encode as encodeCbor } from 'cbor-x'
import { afterAll, expect, test } from 'vitest'
import { freePort } from '../data-plane/index.ts'
import { resourceIdFor } from '../plugins/openadr/index.ts'
import { api, peer, waitAgreementState } from './helpers/federation.ts'
import { cleanupAll, readSubject, startNode, waitFor } from './helpers/node-process.ts'

afterAll(async () => {
  await cleanupAll()
})

interface PluginJson {
  id: string
  [key: string]: unknown
}

test('a partner’s limit_power reaches a VEN through the VTN, and the VEN’s report comes back as telemetry', async () => {
  const vtnPort = await freePort()
  const [a, b] = await Promise.all([
    startNode({ config: 'org = "Gridco"\n' }),
    startNode({
      config: `org = "Aggregator"
[plugins.openadr-vtn]
enabled = true
listen = "127.0.0.1:${vtnPort}"
[plugins.openadr-vtn.clients.ven-c]
secret = "ven-c-secret-123"
role = "ven"
`,
    }),
  ])
  const c = await startNode({
    config: `org = "Site"
[plugins.openadr-ven]
enabled = true
vtn_url = "http://127.0.0.1:${vtnPort}/openadr3/3.1.0"
client_id = "ven-c"
client_secret = "ven-c-secret-123"
ven_name = "site-c"
poll_interval = "1s"
[plugins.openadr-ven.resources]
battery = "battery.c-bat"
`,
  })
  // C's battery as B sees it: a VEN resource, standing data of kind der.
  const rid = resourceIdFor('site-c', 'battery')
  await waitFor(
    async () => (await b.fetch(`/v1/resources/der/${rid}`)).status === 200,
    20_000,
    "C's VEN resource on B",
  )

  await peer(a, 'b', b, 'a')
  const { id } = await api<{ id: string }>(a, 'POST', '/v1/agreements', {
    peer: 'b',
    purpose: 'flexibility dispatch through the aggregator',
    validUntil: new Date(Date.now() + 86_400_000).toISOString(),
    grants: ['control:kinds=der;commands=limit_power', 'telemetry:kinds=der;quantities=power_limit'],
  })
  await waitAgreementState(b, id, 'proposed')
  await api(b, 'POST', `/v1/agreements/${id}/accept`)
  await waitAgreementState(a, id, 'active')

  const { nats } = await api<{ nats: { url: string } }>(a, 'GET', '/v1/status')
  const auth = JSON.parse(await readFile(join(a.dataDir, 'nats', 'auth.json'), 'utf8'))
  const nc = await connect({ servers: nats.url, user: auth.user, pass: auth.password })
  const until = Date.now() + 3_600_000
  try {
    nc.publish(
      `oe.send.b.ctl.der.${rid}.limit_power`,
      encodeCbor({ v: 4_000, u: 'W', until, source: 'gridco' }),
    )
    await nc.flush()
  } finally {
    await nc.close()
  }

  // B: the command under the control grant, and the VTN's event for C's VEN.
  await waitFor(
    async () => (await readSubject(b, `oe.ctl.der.${rid}.limit_power`, 300)).length === 1,
    15_000,
    'oe.ctl on B',
  )
  const results = async () =>
    (await readSubject(b, `oe.evt.der.${rid}.control_result`, 300)).map(
      (m) => m.data as Record<string, unknown>,
    )
  await waitFor(async () => (await results()).some((r) => r.status === 'Sent'), 15_000, 'event sent')
  const eventID = (await results()).find((r) => r.status === 'Sent')!.eventID as string

  // C: its VEN reads the event and limits the battery on C's data plane.
  await waitFor(
    async () => (await readSubject(c, 'oe.ctl.battery.c-bat.limit_power', 300)).length >= 1,
    15_000,
    'limit_power on C',
  )
  const [command] = await readSubject(c, 'oe.ctl.battery.c-bat.limit_power', 300)
  expect(command!.data).toMatchObject({ v: 4_000, u: 'W', source: `openadr:${eventID}`, direction: 'import' })
  expect(Math.abs((command!.data.until as number) - until)).toBeLessThan(5_000)

  // B: C's setpoint report is telemetry, and the VTN counts the limit as taken.
  await waitFor(
    async () => (await readSubject(b, `oe.tel.der.${rid}.power_limit`, 300)).length >= 1,
    15_000,
    'report telemetry on B',
  )
  expect((await readSubject(b, `oe.tel.der.${rid}.power_limit`, 300))[0]!.data.v).toBe(4_000)
  await waitFor(async () => (await results()).some((r) => r.status === 'Accepted'), 10_000, 'Accepted')

  // A: the telemetry grant brings it home, and the federation says the command was delivered.
  await waitFor(
    async () => (await readSubject(a, `oe.peer.b.tel.der.${rid}.power_limit`, 300)).length >= 1,
    20_000,
    'power_limit on A',
  )
  expect((await readSubject(a, `oe.peer.b.tel.der.${rid}.power_limit`, 300))[0]!.data.v).toBe(4_000)
  const outcomes = (await readSubject(a, `oe.peer.b.evt.der.${rid}.control_result`, 300)).map((m) => m.data)
  expect(outcomes).toEqual(expect.arrayContaining([expect.objectContaining({ ok: true, id })]))

  // The operators' view: B's VTN lists C's VEN, its resource, the active event and the report.
  const vtn = (await api<{ plugins: PluginJson[] }>(b, 'GET', '/v1/status')).plugins.find(
    (plugin) => plugin.id === 'openadr-vtn',
  )!
  expect(vtn.vens).toEqual([
    expect.objectContaining({
      name: 'site-c',
      clientID: 'ven-c',
      resources: ['battery'],
      lastSeen: expect.any(Number),
      activeEvents: 1,
      lastReport: expect.objectContaining({ eventID, values: { SETPOINT: 4 } }),
    }),
  ])
  expect(vtn.activeEvents).toEqual([
    expect.objectContaining({
      id: eventID,
      program: 'oe-node-control',
      targets: [`oe:${rid}`],
      now: { type: 'IMPORT_CAPACITY_LIMIT', value: 4 },
    }),
  ])
  // C's VEN: its VTN, registered, polling, the event in force.
  const ven = (await api<{ plugins: PluginJson[] }>(c, 'GET', '/v1/status')).plugins.find(
    (plugin) => plugin.id === 'openadr-ven',
  )!
  expect(ven).toMatchObject({
    vtn: `http://127.0.0.1:${vtnPort}/openadr3/3.1.0`,
    openadrVersion: '3.1.0',
    connected: true,
    registered: true,
    venID: expect.any(String),
    lastPoll: expect.any(Number),
    activeEvents: [
      expect.objectContaining({
        id: eventID,
        resources: ['battery'],
        now: [{ type: 'IMPORT_CAPACITY_LIMIT', value: 4 }],
      }),
    ],
  })
})
