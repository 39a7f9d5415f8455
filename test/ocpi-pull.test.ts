/**
 * The eMSP pulls 5,000 locations across 50 pages from a CPO platform (a scripted one, so that
 * faults land where the test wants them): cut by a kill -9 of the node mid-pull, it resumes
 * after the restart from the page it had reached; cut again by the CPO answering 503, it
 * resumes on `ocpi pull`. Every location ends up as standing data once.
 */
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { jetstream } from '@nats-io/jetstream'
import { Kvm } from '@nats-io/kv'
import { connect } from '@nats-io/transport-node'
import { afterAll, expect, test } from 'vitest'
import { freePort } from '../data-plane/index.ts'
import { api } from './helpers/federation.ts'
import {
  cleanupAll,
  killOrphanNatsServer,
  type RunningNode,
  startNode,
  waitFor,
} from './helpers/node-process.ts'
import { type FakePartner, startFakePartner } from './ocpi-partner.ts'

const LOCATIONS = 5_000
let partner: FakePartner | undefined

afterAll(async () => {
  await partner?.stop()
  await cleanupAll()
})

async function countResources(node: RunningNode): Promise<{ stations: number; evses: number }> {
  const { nats } = await api<{ nats: { url: string } }>(node, 'GET', '/v1/status')
  const auth = JSON.parse(await readFile(join(node.dataDir, 'nats', 'auth.json'), 'utf8'))
  const nc = await connect({ servers: nats.url, user: auth.user, pass: auth.password })
  try {
    const kv = await new Kvm(jetstream(nc)).open('oe-resources')
    let stations = 0
    let evses = 0
    for await (const key of await kv.keys()) {
      if (key.startsWith('station.DE_TNM_')) stations += 1
      if (key.startsWith('evse.DE_TNM_')) evses += 1
    }
    return { stations, evses }
  } finally {
    await nc.close()
  }
}

async function pulling(node: RunningNode): Promise<string[]> {
  const plugins = await api<{ id: string; emsp?: { pulling: string[] } }[]>(node, 'GET', '/v1/plugins')
  return plugins.find((plugin) => plugin.id === 'ocpi')?.emsp?.pulling ?? []
}

test('a pull of 5,000 locations across pages survives a kill -9 and a failing page, resuming where it was', async () => {
  partner = await startFakePartner({
    role: 'CPO',
    countryCode: 'DE',
    partyId: 'TNM',
    locations: LOCATIONS,
    pageLimit: 100,
    pageDelayMs: 10,
  })
  const port = await freePort()
  const config = [
    'org = "MSP"',
    '[plugins.ocpi]',
    'enabled = true',
    `listen = "127.0.0.1:${port}"`,
    'country_code = "NL"',
    'party_id = "MSP"',
    'roles = ["emsp"]',
    'page_limit = 100',
    'pull_interval = 0',
  ].join('\n')
  let node = await startNode({ config })
  const registered = await api<{ result: { state: string } }>(
    node,
    'POST',
    '/v1/plugins/ocpi/actions/register',
    {
      url: partner.versionsUrl,
      token: partner.tokenA,
      name: 'bigcpo',
    },
  )
  expect(registered.result.state).toBe('registered')

  // Registration starts a pull; the node is killed while it is on page 21.
  await waitFor(() => partner!.offsets.includes(2_000), 60_000, 'the pull to reach offset 2000')
  await node.kill()
  await killOrphanNatsServer(node.dataDir)
  const servedBefore = partner.offsets.length
  const lastBefore = partner.offsets.at(-1)!
  expect(partner.offsets.slice(0, 3)).toEqual([0, 100, 200])

  // After the restart the pull resumes by itself, from the page it had reached, not from 0;
  // the CPO then fails the page at 3000.
  partner.failAt(3_000, '503')
  node = await startNode({ config, dataDir: node.dataDir })
  await waitFor(
    () => partner!.offsets.slice(servedBefore).includes(3_000),
    60_000,
    'the resumed pull to reach 3000',
  )
  await waitFor(
    async () => (await pulling(node)).length === 0,
    20_000,
    'the pull to stop at the failing page',
  )
  const resumedFrom = partner.offsets[servedBefore]!
  expect(resumedFrom).toBeGreaterThan(0)
  expect(resumedFrom).toBeGreaterThanOrEqual(lastBefore - 100)
  expect(resumedFrom).toBeLessThanOrEqual(lastBefore)

  // `ocpi pull` resumes from the failed page and completes.
  const servedBeforeAction = partner.offsets.length
  const pulled = await api<{ result: { pulled: { bigcpo: { locations: Record<string, unknown> } } } }>(
    node,
    'POST',
    '/v1/plugins/ocpi/actions/pull',
    { partner: 'bigcpo', module: 'locations' },
  )
  expect(pulled.result.pulled.bigcpo.locations).toMatchObject({
    complete: true,
    resumed: true,
    total: LOCATIONS,
    invalid: 0,
  })
  const offsets = partner.offsets.slice(servedBeforeAction)
  expect(offsets[0]).toBe(3_000)
  expect(offsets.at(-1)).toBe(4_900)
  expect(offsets).toHaveLength(20)

  // Every location once, as a station with its EVSE.
  expect(await countResources(node)).toEqual({ stations: LOCATIONS, evses: LOCATIONS })
  const sample = await api<{ resource: { attrs: Record<string, unknown> } }>(
    node,
    'GET',
    '/v1/resources/evse/DE_TNM_LOC04321-1',
  )
  expect(sample.resource.attrs).toMatchObject({
    source: 'ocpi',
    partner: 'bigcpo',
    status: 'AVAILABLE',
    ocpi: { evse_uid: 'LOC04321-E1' },
    maxPowerW: 230 * 16 * 3,
  })
}, 90_000)
