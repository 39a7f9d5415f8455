/**
 * Control across organisations, end to end: a network (Gridco) holds a `limit_power` grant on a
 * charge point operator (ChargeCo). The command goes from Gridco's oe.send.… over the agreement
 * to ChargeCo's oe.ctl.…, its OCPP plugin sends SetChargingProfile to a real OCPP 1.6 station
 * (ocpp-rpc's client), and the station's acceptance comes back as an event on ChargeCo; Gridco
 * hears that its command was delivered.
 */
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { connect } from '@nats-io/transport-node'
import { encode as encodeCbor } from 'cbor-x'
import { RPCClient } from 'ocpp-rpc'
import { afterEach, expect, test } from 'vitest'
import { freePort } from '../data-plane/index.ts'
import { api, peer, waitAgreementState } from './helpers/federation.ts'
import { cleanupAll, readSubject, startNode, waitFor } from './helpers/node-process.ts'

const stations: RPCClient[] = []
afterEach(async () => {
  for (const station of stations.splice(0)) await station.close({ force: true }).catch(() => {})
  await cleanupAll()
})

test('limit_power from Gridco reaches ChargeCo’s station, which accepts; the result comes back as events', async () => {
  const ocppPort = await freePort()
  const [gridco, chargeco] = await Promise.all([
    startNode({ config: 'org = "Gridco"\n' }),
    startNode({
      config: `org = "ChargeCo"\n[plugins.ocpp]\nenabled = true\nlisten = "127.0.0.1:${ocppPort}"\n[plugins.ocpp.stations.CP1]\npassword = "cp1-secret-password"\n`,
    }),
  ])
  await peer(gridco, 'chargeco', chargeco, 'gridco')
  const { id } = await api<{ id: string }>(gridco, 'POST', '/v1/agreements', {
    peer: 'chargeco',
    purpose: 'network constraint management',
    validUntil: new Date(Date.now() + 86_400_000).toISOString(),
    grants: [
      'telemetry:kinds=evse;quantities=power',
      'control:kinds=evse;commands=limit_power;min=0;max=22000',
    ],
  })
  await waitAgreementState(chargeco, id, 'proposed')
  await api(chargeco, 'POST', `/v1/agreements/${id}/accept`)
  await waitAgreementState(gridco, id, 'active')

  const station = new RPCClient({
    endpoint: `ws://127.0.0.1:${ocppPort}/ocpp`,
    identity: 'CP1',
    password: 'cp1-secret-password',
    protocols: ['ocpp1.6'],
    strictMode: true,
    reconnect: false,
  } as never)
  stations.push(station)
  const profiles: Record<string, unknown>[] = []
  station.handle('SetChargingProfile', async ({ params }) => {
    profiles.push(params as Record<string, unknown>)
    return { status: 'Accepted' }
  })
  await station.connect()
  await station.call('BootNotification', { chargePointVendor: 'ACME', chargePointModel: 'Wallbox' })
  await station.call('StatusNotification', { connectorId: 1, errorCode: 'NoError', status: 'Charging' })

  const { nats } = await api<{ nats: { url: string } }>(gridco, 'GET', '/v1/status')
  const auth = JSON.parse(await readFile(join(gridco.dataDir, 'nats', 'auth.json'), 'utf8'))
  const nc = await connect({ servers: nats.url, user: auth.user, pass: auth.password })
  try {
    nc.publish(
      'oe.send.chargeco.ctl.evse.CP1-1.limit_power',
      encodeCbor({ v: 7_400, u: 'W', until: Date.now() + 3_600_000, source: 'gridco' }),
    )
    // Out of the grant's bounds: refused on Gridco's side, never reaches ChargeCo.
    nc.publish(
      'oe.send.chargeco.ctl.evse.CP1-1.limit_power',
      encodeCbor({ v: 40_000, u: 'W', source: 'gridco' }),
    )
    await nc.flush()
  } finally {
    await nc.close()
  }

  await waitFor(() => profiles.length >= 1, 15_000, 'SetChargingProfile at the station')
  expect(profiles).toHaveLength(1)
  expect(profiles[0]).toMatchObject({
    connectorId: 1,
    csChargingProfiles: {
      chargingSchedule: { chargingRateUnit: 'W', chargingSchedulePeriod: [{ startPeriod: 0, limit: 7_400 }] },
    },
  })
  // ChargeCo: the command arrived on oe.ctl with its agreement, and the station's answer is an event.
  const commands = await readSubject(chargeco, 'oe.ctl.evse.CP1-1.limit_power', 500)
  expect(commands).toHaveLength(1)
  await waitFor(
    async () => (await readSubject(chargeco, 'oe.evt.evse.CP1-1.limit_result', 300)).length > 0,
    10_000,
    'limit_result',
  )
  const results = await readSubject(chargeco, 'oe.evt.evse.CP1-1.limit_result', 300)
  expect(results[0]!.data).toMatchObject({ status: 'Accepted' })
  // Gridco: one delivered, one refused by the grant's bounds.
  await waitFor(
    async () => (await readSubject(gridco, 'oe.peer.chargeco.evt.>', 300)).length >= 2,
    10_000,
    'control results',
  )
  const outcomes = (await readSubject(gridco, 'oe.peer.chargeco.evt.evse.CP1-1.control_result', 300)).map(
    (m) => m.data,
  )
  expect(outcomes).toEqual(
    expect.arrayContaining([
      expect.objectContaining({ ok: true, id }),
      expect.objectContaining({ ok: false, reason: expect.stringMatching(/above the bound 22000/) }),
    ]),
  )
})
