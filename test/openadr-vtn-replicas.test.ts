/**
 * The OpenADR VTN across replicas (issue 15): one real nats-server, two replicas of one node
 * (their own plugin hosts, lease managers, data folders, NATS connections and VTN ports, one
 * KV bucket), started together, as behind a TCP load balancer. Plain fetch clients (BL and a
 * third-party VEN) talk to either replica. What a user notices: the control program exists
 * once; a program, an event and a report made through one replica are listed by the other
 * within a second (each replica follows the bucket through a KV watch: a few milliseconds,
 * printed at the end); a program name posted through both at once is given once; two updates
 * of one resource through both replicas at once never lose BL's target grant (compare-and-set
 * on the KV revision: the loser is redone on the newest version, or refused with 409; the test
 * fails when the revision check is bypassed); a subscriber's callback gets one notification per
 * change, not one per replica; a limit_power command becomes one event, and the VEN reading it
 * through both replicas is reported Delivered once; the bucket holds objects, control records
 * and names only.
 */

import { jetstream } from '@nats-io/jetstream'
import { Kvm } from '@nats-io/kv'
import type { NatsConnection } from '@nats-io/nats-core'
import { connect } from '@nats-io/transport-node'
import { Registry } from 'prom-client'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { DataPlane, decodeCbor, encodeCbor, LeaseManager } from '../data-plane/index.ts'
import { configSchema } from '../node/config.ts'
import { silentLogger } from '../node/logger.ts'
import { retentionLimits } from '../node/node.ts'
import { PluginHost } from '../plugins/index.ts'
import { openadrVtnPlugin, resourceIdFor } from '../plugins/openadr/index.ts'
import {
  type AnyJson,
  RawOpenAdrClient,
  startWebhookReceiver,
  type WebhookReceiver,
} from '../plugins/openadr/testing.ts'
import { cleanupAll, startNatsServer, tempDir, waitFor } from './helpers/node-process.ts'

const silent = silentLogger()

const SECRETS = { bl: 'bl-secret-123', 'ven-1': 'ven-1-secret-1', 'ven-2': 'ven-2-secret-2' }

interface Replica {
  nc: NatsConnection
  dataPlane: DataPlane
  leases: LeaseManager
  host: PluginHost
  registry: Registry
  base: string
}

async function replica(url: string, replicaId: string): Promise<Replica> {
  const nc = await connect({ servers: url })
  const dataPlane = new DataPlane(
    { limits: retentionLimits(configSchema.parse({})) },
    { connection: nc, logger: silent },
  )
  await dataPlane.start()
  const leases = new LeaseManager(
    { replicaId, termMs: 1_500, renewMs: 300, tickMs: 50 },
    { kv: await LeaseManager.openBucket(jetstream(nc)), logger: silent },
  )
  await leases.start()
  const clients = Object.fromEntries(
    Object.entries(SECRETS).map(([id, secret]) => [id, { secret, role: id === 'bl' ? 'bl' : 'ven' }]),
  )
  const registry = new Registry()
  const host = new PluginHost(
    {
      config: {
        'openadr-vtn': { enabled: true, listen: '127.0.0.1:0', clients, webhook_attempts: 2 },
      },
      dir: await tempDir('oe-vtn-replica-'),
    },
    { dataPlane, logger: silent, registry, definitions: [openadrVtnPlugin], leases },
  )
  await host.start()
  const listen = String(host.status().find((plugin) => plugin.id === 'openadr-vtn')!.listen)
  return { nc, dataPlane, leases, host, registry, base: `http://${listen}` }
}

async function stop(r: Replica): Promise<void> {
  await r.host.stop()
  await r.leases.stop()
  await r.dataPlane.stop()
  await r.nc.close()
}

let a: Replica
let b: Replica
let watcher: NatsConnection
let receiver: WebhookReceiver
const controlResults: Record<string, unknown>[] = []
/** Figures for the report at the end. */
const figures: Record<string, unknown> = {}

beforeAll(async () => {
  const server = await startNatsServer()
  receiver = startWebhookReceiver()
  watcher = await connect({ servers: server.url })
  const results = watcher.subscribe('oe.evt.der.*.control_result')
  void (async () => {
    for await (const message of results)
      controlResults.push(decodeCbor(message.data) as Record<string, unknown>)
  })()
  await watcher.flush()
  // Started together: both find an empty bucket and make their start-up objects at once.
  ;[a, b] = await Promise.all([replica(server.url, 'ra'), replica(server.url, 'rb')])
}, 30_000)

afterAll(async () => {
  if (figures.program) console.info('openadr-vtn replicas:', JSON.stringify(figures))
  receiver?.stop()
  await Promise.allSettled([a && stop(a), b && stop(b)].filter(Boolean))
  await watcher?.close()
  await cleanupAll()
})

const as = async (id: keyof typeof SECRETS, on: Replica): Promise<RawOpenAdrClient> => {
  const client = new RawOpenAdrClient(on.base, '3.1.0', id, SECRETS[id])
  await client.login()
  return client
}

/** The same client (same token) talking to another replica. */
const via = (client: RawOpenAdrClient, on: Replica): RawOpenAdrClient => {
  const other = new RawOpenAdrClient(on.base, client.version, client.clientId, client.secret)
  other.token = client.token
  return other
}

/** Call and check the answer against the document. */
async function checked(
  who: RawOpenAdrClient,
  method: string,
  path: string,
  body?: unknown,
): Promise<{ status: number; body: AnyJson }> {
  const answer = await who.request(method, path, body)
  expect(who.check(method, path, answer), `${method} ${path} → ${answer.status}`).toEqual([])
  return answer
}

/** Milliseconds until `check` holds (polled every 10 ms), failing after `timeoutMs`. */
async function within(timeoutMs: number, what: string, check: () => Promise<boolean>): Promise<number> {
  const started = Date.now()
  while (Date.now() - started < timeoutMs) {
    if (await check()) return Date.now() - started
    await Bun.sleep(10)
  }
  throw new Error(`${what}: not within ${timeoutMs} ms`)
}

const listed = async (who: RawOpenAdrClient, path: string, id: string) =>
  ((await who.get(path)).body as AnyJson[]).some((object) => object.id === id)

const ids: Record<string, string> = {}

describe('openadr-vtn on two replicas of one node', () => {
  test('the control program made at start exists once, with one id, on both replicas', async () => {
    for (const on of [a, b]) {
      const programs = (await checked(await as('bl', on), 'GET', '/programs')).body as AnyJson[]
      const control = programs.filter((program) => program.programName === 'oe-node-control')
      expect(control).toHaveLength(1)
      ids.control ??= control[0].id
      expect(control[0].id).toBe(ids.control)
    }
  })

  test('a program and an event made through A are listed by B within a second; a VEN registered through B sees the event', async () => {
    const blA = await as('bl', a)
    const blB = via(blA, b)
    const program = await checked(blA, 'POST', '/programs', {
      programName: 'flex-replicas',
      payloadDescriptors: [{ payloadType: 'PRICE', units: 'KWH', currency: 'EUR' }],
    })
    expect(program.status).toBe(201)
    ids.program = program.body.id
    figures.program = await within(1_000, 'program on B', () => listed(blB, '/programs', ids.program!))
    // The name is taken on both replicas now.
    expect((await checked(blB, 'POST', '/programs', { programName: 'flex-replicas' })).status).toBe(409)
    // Posted through both at once, a new name is given once.
    const twice = await Promise.all(
      [blA, blB].map((bl) => checked(bl, 'POST', '/programs', { programName: 'flex-twice' })),
    )
    expect(twice.map((answer) => answer.status).sort()).toEqual([201, 409])
    await waitFor(
      async () =>
        ((await blA.get('/programs')).body as AnyJson[]).filter((known) => known.programName === 'flex-twice')
          .length === 1,
      2_000,
      'one flex-twice program',
    )

    const event = await checked(blA, 'POST', '/events', {
      programID: ids.program,
      eventName: 'price-now',
      intervalPeriod: { start: new Date(Date.now() - 60_000).toISOString(), duration: 'PT2H' },
      intervals: [{ id: 0, payloads: [{ type: 'PRICE', values: [0.31] }] }],
      reportDescriptors: [{ payloadType: 'DEMAND', units: 'KW', frequency: 0 }],
    })
    expect(event.status).toBe(201)
    ids.event = event.body.id
    figures.event = await within(1_000, 'event on B', () => listed(blB, '/events', ids.event!))

    const venB = await as('ven-1', b)
    const ven = await checked(venB, 'POST', '/vens', { objectType: 'VEN_VEN_REQUEST', venName: 'site-1' })
    expect(ven.status).toBe(201)
    ids.ven = ven.body.id
    const resource = await checked(venB, 'POST', '/resources', {
      objectType: 'BL_RESOURCE_REQUEST',
      resourceName: 'battery-1',
      venID: ids.ven,
    })
    expect(resource.status).toBe(201)
    ids.resource = resource.body.id
    const events = (await checked(venB, 'GET', '/events')).body as AnyJson[]
    expect(events.map((known) => known.id)).toContain(ids.event)
    // The VEN's token (issued by B) works on A, which lists its ven too.
    figures.ven = await within(1_000, 'ven on A', () => listed(via(venB, a), '/vens', ids.ven!))
  })

  test('a report posted through A is visible through B, at once by id and in the list within a second', async () => {
    const venA = via(await as('ven-1', b), a)
    const report = await checked(venA, 'POST', '/reports', {
      programID: ids.program,
      eventID: ids.event,
      clientName: 'site-1',
      reportName: 'demand',
      resources: [
        {
          resourceName: 'battery-1',
          intervals: [{ id: 0, payloads: [{ type: 'DEMAND', values: [4.2] }] }],
        },
      ],
    })
    expect(report.status).toBe(201)
    const blB = await as('bl', b)
    // Read through on a miss: no 404 for an object made a moment ago on the other replica.
    const byId = await checked(blB, 'GET', `/reports/${report.body.id}`)
    expect(byId.status).toBe(200)
    expect(byId.body.resources[0].intervals[0].payloads[0].values).toEqual([4.2])
    figures.report = await within(1_000, 'report on B', () => listed(blB, '/reports', report.body.id))
  })

  test("two updates of one resource through both replicas at once never lose BL's target grant", async () => {
    const blA = await as('bl', a)
    const venB = await as('ven-1', b)
    const path = `/resources/${ids.resource}`
    const statuses: Record<string, number> = {}
    const rounds = 12
    for (let round = 0; round < rounds; round++) {
      const target = `group-${round}`
      const grant = () =>
        blA.put(path, {
          objectType: 'BL_RESOURCE_REQUEST',
          resourceName: 'battery-1',
          venID: ids.ven,
          targets: [target],
          attributes: [{ type: 'NOTE', values: [`bl-${round}`] }],
        })
      const describe = () =>
        venB.put(path, {
          objectType: 'VEN_RESOURCE_REQUEST',
          resourceName: 'battery-1',
          venID: ids.ven,
          attributes: [{ type: 'NOTE', values: [`ven-${round}`] }],
        })
      // Even rounds at once; odd rounds one after the other, B's copy a moment behind A's write.
      const [bl, ven] =
        round % 2 === 0 ? await Promise.all([grant(), describe()]) : [await grant(), await describe()]
      for (const answer of [bl, ven]) {
        expect([200, 409]).toContain(answer.status)
        statuses[answer.status] = (statuses[answer.status] ?? 0) + 1
      }
      expect(bl.status === 200 || ven.status === 200).toBe(true)
      // Once both replicas agree (each has read the other's write), nothing is lost.
      let stored: AnyJson
      await waitFor(
        async () => {
          const [onA, onB] = await Promise.all([blA.get(path), via(blA, b).get(path)])
          stored = onA.body
          return JSON.stringify(onA.body) === JSON.stringify(onB.body)
        },
        2_000,
        'both replicas to agree',
      )
      // BL's answered grant is kept, whichever came last (a VEN's update keeps BL's targets).
      if (bl.status === 200) expect(stored.targets).toEqual([target])
      const note = stored.attributes[0].values[0]
      if (ven.status === 200 && bl.status !== 200) expect(note).toBe(`ven-${round}`)
      else expect([`bl-${round}`, ...(ven.status === 200 ? [`ven-${round}`] : [])]).toContain(note)
    }
    // Changes redone on the newest version (the other replica's write came first).
    const redone = async (r: Replica) =>
      ((await r.registry.getSingleMetric('oe_plugin_openadr_vtn_replica_retries_total')?.get())?.values[0]
        ?.value as number) ?? 0
    figures.concurrentUpdates = { rounds, statuses, redone: (await redone(a)) + (await redone(b)) }
  })

  test('a subscriber gets one notification per change, not one per replica', async () => {
    const blA = await as('bl', a)
    const blB = via(blA, b)
    const subscription = await checked(blA, 'POST', '/subscriptions', {
      clientName: 'watcher',
      programID: ids.program,
      objectOperations: [
        {
          objects: ['EVENT'],
          operations: ['CREATE', 'UPDATE', 'DELETE'],
          callbackUrl: receiver.url,
          bearerToken: 'cb',
        },
      ],
    })
    expect(subscription.status).toBe(201)
    await waitFor(() => listed(blB, '/subscriptions', subscription.body.id), 2_000, 'subscription on B')
    receiver.received.length = 0
    const made = await checked(blB, 'POST', '/events', {
      programID: ids.program,
      eventName: 'notified',
      intervals: [{ id: 0, payloads: [{ type: 'PRICE', values: [0.1] }] }],
    })
    expect(made.status).toBe(201)
    await waitFor(() => listed(blA, '/events', made.body.id), 2_000, 'event on A')
    const changed = await checked(blA, 'PUT', `/events/${made.body.id}`, {
      programID: ids.program,
      eventName: 'notified-2',
      intervals: [{ id: 0, payloads: [{ type: 'PRICE', values: [0.2] }] }],
    })
    expect(changed.status).toBe(200)
    expect((await checked(blB, 'DELETE', `/events/${made.body.id}`)).status).toBe(200)
    await waitFor(() => receiver.received.length >= 3, 5_000, 'three notifications')
    // Time for any duplicate from the other replica to arrive.
    await Bun.sleep(1_500)
    const seen = receiver.received.map(
      ({ body }) => `${String(body.operation)} ${(body.object as AnyJson).eventName}`,
    )
    expect(seen).toEqual(['CREATE notified', 'UPDATE notified-2', 'DELETE notified-2'])
    expect(receiver.received.every(({ authorization }) => authorization === 'Bearer cb')).toBe(true)
    figures.notifications = seen.length
  })

  test('limit_power becomes one event; the VEN reading it through both replicas is reported Delivered once', async () => {
    const rid = resourceIdFor('site-1', 'battery-1')
    watcher.publish(`oe.ctl.der.${rid}.limit_power`, encodeCbor({ v: 5_000, u: 'W', source: 'dso' }))
    await waitFor(() => controlResults.some((result) => result.status === 'Sent'), 5_000, 'Sent')
    const eventID = controlResults.find((result) => result.status === 'Sent')!.eventID as string
    const venB = await as('ven-1', b)
    const venA = via(venB, a)
    await waitFor(() => listed(venA, '/events', eventID), 2_000, 'the control event on A')
    await Promise.all([venA.get('/events'), venB.get('/events'), venA.get(`/events/${eventID}`)])
    await waitFor(() => controlResults.some((result) => result.status === 'Delivered'), 5_000, 'Delivered')
    await Bun.sleep(1_000)
    expect(controlResults.filter((result) => result.status === 'Sent')).toHaveLength(1)
    expect(controlResults.filter((result) => result.status === 'Delivered')).toHaveLength(1)
    // A second command for the resource changes that event: still one control event.
    watcher.publish(`oe.ctl.der.${rid}.limit_power`, encodeCbor({ v: 3_000, u: 'W', source: 'dso' }))
    await waitFor(
      () => controlResults.filter((result) => result.status === 'Sent').length === 2,
      5_000,
      'Sent 2',
    )
    const blB = await as('bl', b)
    await waitFor(
      async () => {
        const events = (await blB.get(`/events?programID=${ids.control}`)).body as AnyJson[]
        return events.length === 1 && events[0].intervals[0].payloads[0].values[0] === 3
      },
      2_000,
      'one control event with the new limit on B',
    )
  })

  test('the bucket holds objects, control records and names only (no feeds, no claims)', async () => {
    const kv = await new Kvm(watcher).open('oe-plugin-openadr-vtn-objects')
    const keys: string[] = []
    for await (const key of await kv.keys()) keys.push(key)
    const prefixes = new Set(keys.map((key) => key.split('.')[0]))
    expect([...prefixes].sort()).toEqual([
      'ctl',
      'event',
      'names',
      'program',
      'report',
      'resource',
      'subscription',
      'ven',
    ])
    figures.keys = keys.length
  })
})
