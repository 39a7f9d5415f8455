/**
 * The OpenADR VEN across replicas (issue 15): two replicas of one node (their own plugin hosts,
 * data folders, NATS connections and lease managers, one real nats-server) run `openadr-ven`
 * against one real VTN (the `openadr-vtn` plugin of another node, on its own nats-server),
 * reached through a counting proxy. One replica polls; an event becomes one `limit_power`
 * command and one report. Then the owner's lease manager dies without releasing (a crash of
 * the lease, the replica itself still running): the other replica takes over, the old one stops
 * at once, the event in force is not commanded again, the report not sent again, and a new
 * event is followed with exactly one command and one report.
 */

import { jetstream } from '@nats-io/jetstream'
import type { NatsConnection, Subscription } from '@nats-io/nats-core'
import { connect } from '@nats-io/transport-node'
import { Registry } from 'prom-client'
import { afterAll, describe, expect, test } from 'vitest'
import { DataPlane, decodeCbor, freePort, LeaseManager } from '../data-plane/index.ts'
import { configSchema } from '../node/config.ts'
import { silentLogger } from '../node/logger.ts'
import { retentionLimits } from '../node/node.ts'
import { PluginHost, type PluginStatus } from '../plugins/index.ts'
import { openadrVenPlugin, openadrVtnPlugin } from '../plugins/openadr/index.ts'
import { RawOpenAdrClient } from '../plugins/openadr/testing.ts'
import { cleanupAll, startNatsServer, tempDir, waitFor } from './helpers/node-process.ts'

afterAll(cleanupAll)

const silent = silentLogger()

const SECRETS = { bl: 'bl-secret-123', 'ven-1': 'ven-1-secret-1' }
const LIMIT_SUBJECT = 'oe.ctl.battery.site-bat.limit_power'

interface Node {
  nc: NatsConnection
  dataPlane: DataPlane
  host: PluginHost
  registry: Registry
  /** A replica's lease manager, on a connection of its own (closed to kill it). */
  leases?: LeaseManager
  leaseNc?: NatsConnection
}

async function dataPlaneOn(url: string): Promise<{ nc: NatsConnection; dataPlane: DataPlane }> {
  const nc = await connect({ servers: url })
  const dataPlane = new DataPlane(
    { limits: retentionLimits(configSchema.parse({})) },
    { connection: nc, logger: silent },
  )
  await dataPlane.start()
  return { nc, dataPlane }
}

async function vtnNode(url: string, port: number): Promise<Node> {
  const { nc, dataPlane } = await dataPlaneOn(url)
  const registry = new Registry()
  const clients = Object.fromEntries(
    Object.entries(SECRETS).map(([id, secret]) => [id, { secret, role: id === 'bl' ? 'bl' : 'ven' }]),
  )
  const host = new PluginHost(
    {
      config: { 'openadr-vtn': { enabled: true, listen: `127.0.0.1:${port}`, clients } },
      dir: await tempDir(),
    },
    { dataPlane, logger: silent, registry, definitions: [openadrVtnPlugin] },
  )
  await host.start()
  return { nc, dataPlane, host, registry }
}

async function venReplica(url: string, replicaId: string, vtnUrl: string): Promise<Node> {
  const { nc, dataPlane } = await dataPlaneOn(url)
  const leaseNc = await connect({ servers: url })
  const leases = new LeaseManager(
    { replicaId, termMs: 1_500, renewMs: 300, tickMs: 50 },
    { kv: await LeaseManager.openBucket(jetstream(leaseNc)), logger: silent },
  )
  await leases.start()
  const registry = new Registry()
  const host = new PluginHost(
    {
      config: {
        'openadr-ven': {
          enabled: true,
          vtn_url: vtnUrl,
          client_id: 'ven-1',
          client_secret: SECRETS['ven-1'],
          ven_name: 'site-1',
          poll_interval: '300ms',
          resources: { 'battery-1': 'battery.site-bat' },
        },
      },
      dir: await tempDir(),
    },
    { dataPlane, logger: silent, registry, definitions: [openadrVenPlugin], leases },
  )
  await host.start()
  return { nc, dataPlane, host, registry, leases, leaseNc }
}

async function stopNode(node: Node): Promise<void> {
  await node.host.stop()
  await node.leases?.stop()
  await node.dataPlane.stop()
  await node.leaseNc?.close().catch(() => {})
  await node.nc.close()
}

/** The VTN's requests, as a proxy in front of it sees them: who (bearer token) asked what, when. */
interface Seen {
  method: string
  path: string
  token: string
  at: number
}

function countingProxy(target: string): { url: string; seen: Seen[]; stop: () => void } {
  const seen: Seen[] = []
  const server = Bun.serve({
    hostname: '127.0.0.1',
    port: 0,
    fetch: async (request) => {
      const url = new URL(request.url)
      const path = url.pathname.replace('/openadr3/3.1.0', '')
      seen.push({
        method: request.method,
        path,
        token: request.headers.get('authorization') ?? '',
        at: Date.now(),
      })
      const headers = new Headers(request.headers)
      headers.delete('host')
      const hasBody = request.method !== 'GET' && request.method !== 'HEAD'
      const answer = await fetch(`${target}${url.pathname}${url.search}`, {
        method: request.method,
        headers,
        ...(hasBody ? { body: await request.arrayBuffer() } : {}),
      })
      const answerHeaders = new Headers(answer.headers)
      answerHeaders.delete('content-encoding')
      answerHeaders.delete('content-length')
      return new Response(await answer.arrayBuffer(), { status: answer.status, headers: answerHeaders })
    },
  })
  return { url: `http://127.0.0.1:${server.port}`, seen, stop: () => void server.stop(true) }
}

const venStatus = (node: Node) =>
  node.host.status().find((plugin) => plugin.id === 'openadr-ven') as PluginStatus & Record<string, unknown>
const role = (node: Node) => venStatus(node).role
const metric = async (node: Node, name: string) =>
  ((await node.registry.getSingleMetric(`oe_plugin_openadr_ven_${name}`)?.get())?.values[0]
    ?.value as number) ?? 0
/** Event polls (GET /events) by each VTN client token. */
const pollsByToken = (seen: Seen[], since = 0) => {
  const counts = new Map<string, number>()
  for (const request of seen)
    if (request.method === 'GET' && request.path === '/events' && request.at >= since)
      counts.set(request.token, (counts.get(request.token) ?? 0) + 1)
  return counts
}

describe('openadr-ven on two replicas of one node', () => {
  test('one replica follows the VTN; after its lease dies the other takes over, nothing commanded or reported twice', async () => {
    const venServer = await startNatsServer()
    const vtnServer = await startNatsServer()
    const vtnPort = await freePort()
    const vtn = await vtnNode(vtnServer.url, vtnPort)
    const proxy = countingProxy(`http://127.0.0.1:${vtnPort}`)
    // Every limit_power published on the VEN node's data plane, from the start.
    const watcher = await connect({ servers: venServer.url })
    const commands: { source: string; v: number; at: number }[] = []
    const subscription: Subscription = watcher.subscribe(LIMIT_SUBJECT)
    void (async () => {
      for await (const message of subscription) {
        const data = decodeCbor(message.data) as { source: string; v: number }
        commands.push({ source: data.source, v: data.v, at: Date.now() })
      }
    })()
    await watcher.flush()
    const replicas: Node[] = []
    try {
      const vtnUrl = `${proxy.url}/openadr3/3.1.0`
      replicas.push(
        await venReplica(venServer.url, 'ra', vtnUrl),
        await venReplica(venServer.url, 'rb', vtnUrl),
      )
      const [a, b] = replicas as [Node, Node]

      // One replica registers and polls; the other stands by, ready.
      await waitFor(
        () => replicas.some((node) => venStatus(node).registered === true),
        15_000,
        'registration',
      )
      const owner = role(a) === 'active' ? a : b
      const standby = owner === a ? b : a
      await Bun.sleep(2_000)
      expect(role(owner)).toBe('active')
      expect(role(standby)).toBe('standby')
      expect(venStatus(owner)).toMatchObject({ connected: true, registered: true, venName: 'site-1' })
      expect(venStatus(standby)).toMatchObject({ ready: true, venName: 'site-1' })
      expect(standby.host.ready()).toBe(true)
      const pollers = pollsByToken(proxy.seen)
      expect(pollers.size).toBe(1)
      const ownerToken = [...pollers.keys()][0]!
      const pollsBefore = pollers.get(ownerToken)!
      expect(pollsBefore).toBeGreaterThanOrEqual(4)
      expect(await metric(standby, 'polls_total')).toBe(0)
      expect(await metric(owner, 'active')).toBe(1)
      expect(await metric(standby, 'active')).toBe(0)

      // Telemetry for the reports, then an event in force for an hour: one command, one report.
      const now = Date.now()
      await owner.dataPlane.publishTelemetry(
        [0, 1, 2].map((i) => ({
          kind: 'battery' as const,
          rid: 'site-bat',
          q: 'power',
          v: 4000 + i * 1000,
          t: now - 30_000 + i * 10_000,
        })),
      )
      const admin = new RawOpenAdrClient(`http://127.0.0.1:${vtnPort}`, '3.1.0', 'bl', SECRETS.bl)
      await admin.login()
      const programID = ((await admin.post('/programs', { programName: 'replicas' })).body as { id: string })
        .id
      const createEvent = async (name: string, kw: number, priority: number) => {
        const created = await admin.post('/events', {
          programID,
          eventName: name,
          priority,
          payloadDescriptors: [{ payloadType: 'IMPORT_CAPACITY_LIMIT', units: 'KW' }],
          intervalPeriod: { start: new Date().toISOString(), duration: 'PT1H' },
          intervals: [{ id: 0, payloads: [{ type: 'IMPORT_CAPACITY_LIMIT', values: [kw] }] }],
          reportDescriptors: [{ payloadType: 'DEMAND', units: 'KW', frequency: 0 }],
        })
        expect(created.status).toBe(201)
        return (created.body as { id: string }).id
      }
      const reportsOf = async (eventID: string) =>
        ((await admin.get(`/reports?eventID=${eventID}`)).body as unknown[]).length
      const commandsOf = (eventID: string) =>
        commands.filter((command) => command.source === `openadr:${eventID}`)
      const first = await createEvent('before the takeover', 5, 10)
      await waitFor(() => commandsOf(first).length >= 1, 10_000, 'the first command')
      await waitFor(async () => (await reportsOf(first)) >= 1, 10_000, 'the first report')
      expect(commandsOf(first).map((command) => command.v)).toEqual([5000])

      // The owner's lease manager dies without releasing (its replica goes on running).
      const killedAt = Date.now()
      await owner.leaseNc!.close()
      await waitFor(() => role(standby) === 'active', 5_000, 'the takeover')
      const takeoverMs = Date.now() - killedAt
      await waitFor(() => role(owner) === 'standby', 5_000, 'the old owner to stand by')
      const takenAt = Date.now()
      await waitFor(() => pollsByToken(proxy.seen, takenAt).size === 1, 5_000, 'polls by the new owner')
      const newToken = [...pollsByToken(proxy.seen, takenAt).keys()][0]!
      expect(newToken).not.toBe(ownerToken)
      const oldOwnerPolls = await metric(owner, 'polls_total')

      // A new event after the takeover (a lower priority number: it wins): one command, one report.
      const second = await createEvent('after the takeover', 3, 1)
      await waitFor(() => commandsOf(second).length >= 1, 10_000, 'the command of the new event')
      await waitFor(async () => (await reportsOf(second)) >= 1, 10_000, 'the report of the new event')
      // More polls and change points go by: still nothing twice.
      await Bun.sleep(3_000)
      const pollsAfter = pollsByToken(proxy.seen, takenAt)
      const report = {
        takeoverMs,
        pollsBefore,
        pollsAfterByNewOwner: pollsAfter.get(newToken) ?? 0,
        pollsAfterByOldOwner: pollsAfter.get(ownerToken) ?? 0,
        commands: commands.map((command) => `${command.source}=${command.v}`),
        reports: [await reportsOf(first), await reportsOf(second)],
      }
      console.info('openadr-ven replicas:', JSON.stringify(report))
      expect(takeoverMs).toBeLessThan(5_000)
      expect(report.pollsAfterByOldOwner).toBe(0)
      expect(await metric(owner, 'polls_total')).toBe(oldOwnerPolls)
      expect(report.pollsAfterByNewOwner).toBeGreaterThanOrEqual(5)
      expect(commandsOf(first).map((command) => command.v)).toEqual([5000])
      expect(commandsOf(second).map((command) => command.v)).toEqual([3000])
      expect(commands).toHaveLength(2)
      expect(report.reports).toEqual([1, 1])
      // One ven and one resource on the VTN: the new owner registered nothing again.
      expect(((await admin.get('/vens')).body as unknown[]).length).toBe(1)
      expect(((await admin.get('/resources')).body as unknown[]).length).toBe(1)
      expect(venStatus(standby)).toMatchObject({ role: 'active', connected: true, registered: true })
      expect(venStatus(owner)).toMatchObject({ role: 'standby', ready: true })
    } finally {
      await Promise.allSettled(replicas.map(stopNode))
      await stopNode(vtn).catch(() => {})
      subscription.unsubscribe()
      await watcher.close()
      proxy.stop()
    }
  })
})
