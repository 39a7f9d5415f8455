/**
 * The OpenADR VTN plugin in a real node, with plain fetch clients as BL and third-party VENs
 * of both versions: OAuth2 client credentials, programs/events/vens/resources/reports/
 * subscriptions with the visibility rules, reports → telemetry, webhooks with retries,
 * limit_power → an event the VEN sees → control_result, and a restart that loses nothing.
 * Every answer is checked against the OpenAPI document of its version.
 */
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { connect } from '@nats-io/transport-node'
import { encode as encodeCbor } from 'cbor-x'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { freePort } from '../data-plane/index.ts'
import { resourceIdFor } from '../plugins/openadr/index.ts'
import {
  type AnyJson,
  RawOpenAdrClient,
  startWebhookReceiver,
  type WebhookReceiver,
} from '../plugins/openadr/testing.ts'
import { api } from './helpers/federation.ts'
import { cleanupAll, type RunningNode, readSubject, startNode, waitFor } from './helpers/node-process.ts'

let node: RunningNode
let port: number
let base: string
let receiver: WebhookReceiver
const SECRETS = {
  bl: 'bl-secret-123',
  ven1: 'ven1-secret-123',
  ven2: 'ven2-secret-123',
  ven3: 'ven3-secret-123',
}

function config(): string {
  return `org = "DSO"
[plugins.openadr-vtn]
enabled = true
listen = "127.0.0.1:${port}"
webhook_attempts = 4
[plugins.openadr-vtn.clients.bl]
secret = "${SECRETS.bl}"
role = "bl"
[plugins.openadr-vtn.clients.ven1]
secret = "${SECRETS.ven1}"
role = "ven"
[plugins.openadr-vtn.clients.ven2]
secret = "${SECRETS.ven2}"
role = "ven"
[plugins.openadr-vtn.clients.ven3]
secret = "${SECRETS.ven3}"
role = "ven"
`
}

beforeAll(async () => {
  port = await freePort()
  base = `http://127.0.0.1:${port}`
  receiver = startWebhookReceiver()
  node = await startNode({ config: config() })
})

afterAll(async () => {
  receiver.stop()
  await cleanupAll()
})

const client = (id: keyof typeof SECRETS, version: '3.1.0' | '3.0.1' = '3.1.0') =>
  new RawOpenAdrClient(base, version, id, SECRETS[id])

/** Call and check the answer against the document; return it. */
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

const state: Record<string, AnyJson> = {}

describe('OAuth2 client credentials', () => {
  test('tokens by form body and by HTTP Basic, in both versions; auth/server names the token URL', async () => {
    for (const version of ['3.1.0', '3.0.1'] as const) {
      const form = client('ven1', version)
      expect(await form.login('form')).toMatch(/^[A-Za-z0-9_-]{20,}$/)
      const basic = client('ven1', version)
      expect(await basic.login('basic')).not.toBe(form.token)
      expect((await checked(form, 'GET', '/programs')).status).toBe(200)
    }
    const info = await checked(client('bl'), 'GET', '/auth/server')
    expect(info.body).toEqual({ tokenURL: `${base}/openadr3/3.1.0/auth/token` })
    const response = await fetch(`${base}/openadr3/3.1.0/auth/token`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({
        grant_type: 'client_credentials',
        client_id: 'bl',
        client_secret: SECRETS.bl,
      }),
    })
    const token = await response.json()
    expect(token).toMatchObject({ token_type: 'Bearer', expires_in: 3600 })
    expect(response.headers.get('cache-control')).toBe('no-store')
  })

  test('wrong secret, unknown client, wrong grant: problem bodies with the RFC 6749 error', async () => {
    const post = (version: string, form: Record<string, string>) =>
      fetch(`${base}/openadr3/${version}/auth/token`, {
        method: 'POST',
        headers: { 'content-type': 'application/x-www-form-urlencoded' },
        body: new URLSearchParams(form),
      })
    const wrong = await post('3.1.0', {
      grant_type: 'client_credentials',
      client_id: 'ven1',
      client_secret: 'nope',
    })
    expect(wrong.status).toBe(401)
    expect(await wrong.json()).toMatchObject({ status: 401, error: 'invalid_client', title: 'Unauthorized' })
    const unknown = await post('3.1.0', {
      grant_type: 'client_credentials',
      client_id: 'who',
      client_secret: 'x',
    })
    expect(unknown.status).toBe(401)
    // 3.0.1 lists no 401 for the token endpoint: 403.
    const wrong301 = await post('3.0.1', {
      grant_type: 'client_credentials',
      client_id: 'ven1',
      client_secret: 'nope',
    })
    expect(wrong301.status).toBe(403)
    const grant = await post('3.1.0', {
      grant_type: 'password',
      client_id: 'ven1',
      client_secret: SECRETS.ven1,
    })
    expect(grant.status).toBe(400)
    expect(await grant.json()).toMatchObject({ error: 'unsupported_grant_type' })
  })
})

describe('objects and who sees them', () => {
  test('BL creates a program and events; a VEN registers its ven and a resource; untargeted events reach every VEN', async () => {
    const bl = client('bl')
    await bl.login()
    const program = await checked(bl, 'POST', '/programs', {
      programName: 'flex-1',
      intervalPeriod: { start: '2025-01-01T00:00:00+01:00', duration: 'P1Y' },
      payloadDescriptors: [{ payloadType: 'PRICE', units: 'KWH', currency: 'EUR' }],
      unknownField: 'ignored',
      programDescriptions: null,
    })
    expect(program.status).toBe(201)
    expect(program.body).toMatchObject({
      programName: 'flex-1',
      objectType: 'PROGRAM',
      intervalPeriod: { start: '2024-12-31T23:00:00.000Z', duration: 'P1Y' },
      payloadDescriptors: [{ objectType: 'EVENT_PAYLOAD_DESCRIPTOR', payloadType: 'PRICE' }],
    })
    expect(program.body.unknownField).toBeUndefined()
    expect(program.body.createdDateTime).toBe(program.body.modificationDateTime)
    state.programID = program.body.id
    expect((await checked(bl, 'POST', '/programs', { programName: 'flex-1' })).status).toBe(409)

    const event = await checked(bl, 'POST', '/events', {
      programID: state.programID,
      eventName: 'prices',
      payloadDescriptors: [{ payloadType: 'PRICE', units: 'KWH', currency: 'EUR' }],
      intervalPeriod: { start: new Date(Date.now() - 60_000).toISOString(), duration: 'PT1H' },
      intervals: [{ id: 0, payloads: [{ type: 'PRICE', values: [0.21] }] }],
      reportDescriptors: [{ payloadType: 'DEMAND', units: 'KW', frequency: 0 }],
    })
    expect(event.status).toBe(201)
    state.eventID = event.body.id
    expect((await checked(bl, 'POST', '/events', { programID: 'nope' })).status).toBe(409)

    const ven1 = client('ven1')
    await ven1.login()
    const ven = await checked(ven1, 'POST', '/vens', {
      objectType: 'VEN_VEN_REQUEST',
      venName: 'site-1',
      targets: ['sneaky'],
    })
    expect(ven.status).toBe(201)
    expect(ven.body).toMatchObject({ venName: 'site-1', clientID: 'ven1', objectType: 'VEN' })
    expect(ven.body.targets).toBeUndefined()
    state.venID = ven.body.id
    // One ven per VEN client; the name is taken anyway.
    expect((await checked(ven1, 'POST', '/vens', { venName: 'site-1b' })).status).toBe(400)
    const resource = await checked(ven1, 'POST', '/resources', {
      resourceName: 'battery 1',
      venID: state.venID,
    })
    expect(resource.status).toBe(201)
    expect(resource.body).toMatchObject({
      resourceName: 'battery 1',
      venID: state.venID,
      clientID: 'ven1',
      objectType: 'RESOURCE',
    })
    state.resourceID = resource.body.id
    expect(
      (await checked(ven1, 'POST', '/resources', { resourceName: 'battery 1', venID: state.venID })).status,
    ).toBe(409)

    // The resource is standing data on the node.
    const rid = resourceIdFor('site-1', 'battery 1')
    state.rid = rid
    expect(rid).toMatch(/^site-1_battery-1-[0-9a-f]{12}$/)
    const standing = await api<{ resource: Record<string, unknown> }>(node, 'GET', `/v1/resources/der/${rid}`)
    expect(standing.resource).toMatchObject({
      kind: 'der',
      rid,
      name: 'site-1/battery 1',
      attrs: { venName: 'site-1', resourceName: 'battery 1', source: 'openadr-vtn' },
    })

    for (const who of ['ven1', 'ven2'] as const) {
      const reader = client(who)
      await reader.login()
      const events = await checked(reader, 'GET', '/events')
      expect(events.body.map((item: { id: string }) => item.id)).toContain(state.eventID)
    }
  })

  test('targets: granted by BL on the ven, hidden from others, narrowed in answers', async () => {
    const bl = client('bl')
    await bl.login()
    const granted = await checked(bl, 'PUT', `/vens/${state.venID}`, {
      objectType: 'BL_VEN_REQUEST',
      clientID: 'ven1',
      venName: 'site-1',
      targets: ['group-1'],
    })
    expect(granted.status).toBe(200)
    expect(granted.body.targets).toEqual(['group-1'])
    const targeted = await checked(bl, 'POST', '/events', {
      programID: state.programID,
      eventName: 'for group 1',
      targets: ['group-1', 'group-secret'],
      intervalPeriod: { start: new Date().toISOString(), duration: 'PT2H' },
      intervals: [{ id: 0, payloads: [{ type: 'SIMPLE', values: [2] }] }],
    })
    state.targetedID = targeted.body.id
    const ven1 = client('ven1')
    await ven1.login()
    const seen = (await checked(ven1, 'GET', '/events')).body.find(
      (item: { id: string }) => item.id === state.targetedID,
    )
    expect(seen.targets).toEqual(['group-1'])
    expect(
      (await checked(ven1, 'GET', '/events?targets=group-1')).body.map((item: { id: string }) => item.id),
    ).toEqual([state.targetedID])
    expect((await checked(ven1, 'GET', '/events?targets=group-secret')).body).toEqual([])
    // A VEN's own update keeps what BL granted.
    const kept = await checked(ven1, 'PUT', `/vens/${state.venID}`, {
      venName: 'site-1',
      attributes: [{ type: 'X', values: [1] }],
    })
    expect(kept.body.targets).toEqual(['group-1'])

    const ven2 = client('ven2')
    await ven2.login()
    expect((await checked(ven2, 'GET', '/events')).body.map((item: { id: string }) => item.id)).not.toContain(
      state.targetedID,
    )
    expect((await checked(ven2, 'GET', `/events/${state.targetedID}`)).status).toBe(404)
    expect((await checked(ven2, 'GET', '/vens')).body).toEqual([])
    expect((await checked(ven2, 'GET', `/vens/${state.venID}`)).status).toBe(404)
    expect((await checked(ven2, 'PUT', `/vens/${state.venID}`, { venName: 'mine-now' })).status).toBe(404)
    expect((await checked(ven2, 'DELETE', `/resources/${state.resourceID}`)).status).toBe(404)
    expect((await checked(ven2, 'POST', '/programs', { programName: 'x' })).status).toBe(403)
    expect((await checked(ven2, 'POST', '/events', { programID: state.programID })).status).toBe(403)
    expect(
      (await checked(bl, 'POST', '/reports', { eventID: state.eventID, clientName: 'bl', resources: [] }))
        .status,
    ).toBe(403)
    // BL sees everything; queries filter and page.
    expect((await checked(bl, 'GET', '/vens')).body.map((item: { id: string }) => item.id)).toContain(
      state.venID,
    )
    expect((await checked(bl, 'GET', `/events?programID=${state.programID}&limit=1`)).body).toHaveLength(1)
    expect((await checked(bl, 'GET', `/events?programID=${state.programID}&skip=1&limit=1`)).body[0].id).toBe(
      state.targetedID,
    )
    expect((await checked(bl, 'GET', '/events?limit=51')).status).toBe(400)
    expect((await checked(bl, 'GET', `/resources?venID=${state.venID}`)).body).toHaveLength(1)
  })

  test('a report becomes telemetry with units converted; a 3.0.1 VEN sees targets as valuesMaps', async () => {
    const ven1 = client('ven1')
    await ven1.login()
    const t0 = Date.now() - 120_000
    const report = await checked(ven1, 'POST', '/reports', {
      eventID: state.eventID,
      clientName: 'site-1',
      payloadDescriptors: [
        { payloadType: 'DEMAND', units: 'KW' },
        { payloadType: 'STORAGE_CHARGE_LEVEL', units: 'PERCENT' },
        { payloadType: 'READING', units: 'KWH' },
      ],
      resources: [
        {
          resourceName: 'battery 1',
          intervalPeriod: { start: new Date(t0).toISOString(), duration: 'PT1M' },
          intervals: [
            {
              id: 0,
              payloads: [
                { type: 'DEMAND', values: [2.5] },
                { type: 'STORAGE_CHARGE_LEVEL', values: [0.42] },
              ],
            },
            {
              id: 1,
              payloads: [
                { type: 'DEMAND', values: [-1.25] },
                { type: 'READING', values: [12.5] },
              ],
            },
          ],
        },
        { resourceName: 'not mine', intervals: [{ id: 0, payloads: [{ type: 'DEMAND', values: [9] }] }] },
      ],
    })
    expect(report.status).toBe(201)
    expect(report.body).toMatchObject({ clientID: 'ven1', eventID: state.eventID, objectType: 'REPORT' })
    state.reportID = report.body.id
    const prefix = `oe.tel.der.${state.rid}`
    await waitFor(
      async () => (await readSubject(node, `${prefix}.>`, 300)).length >= 4,
      10_000,
      'report telemetry',
    )
    const tel = await readSubject(node, `${prefix}.>`, 300)
    const series = Object.fromEntries(
      ['power', 'soc', 'energy_import'].map((q) => [
        q,
        tel.filter((m) => m.subject === `${prefix}.${q}`).map((m) => [m.data.v, m.data.t]),
      ]),
    )
    expect(series).toEqual({
      power: [
        [2500, t0],
        [-1250, t0 + 60_000],
      ],
      soc: [[42, t0]],
      energy_import: [[12_500, t0 + 60_000]],
    })
    // BL reads reports; a 3.0.1 client reads the same report (programID filled).
    const bl301 = client('bl', '3.0.1')
    await bl301.login()
    const old = await checked(bl301, 'GET', `/reports/${state.reportID}`)
    expect(old.body).toMatchObject({ programID: state.programID, eventID: state.eventID })
    const ven301 = client('ven1', '3.0.1')
    await ven301.login()
    const events = (await checked(ven301, 'GET', '/events')).body
    expect(events.find((item: { id: string }) => item.id === state.targetedID).targets).toEqual([
      { type: 'TARGET', values: ['group-1'] },
    ])
    // 3.0.1 resources live under their ven.
    const resources = await checked(ven301, 'GET', `/vens/${state.venID}/resources`)
    expect(resources.body.map((item: { resourceName: string }) => item.resourceName)).toEqual(['battery 1'])
  })

  test('a third-party 3.0.1 VEN registers, reports with programID, and subscribes by webhook', async () => {
    const ven3 = client('ven3', '3.0.1')
    await ven3.login()
    const ven = await checked(ven3, 'POST', '/vens', { venName: 'site-3' })
    expect(ven.status).toBe(201)
    const resource = await checked(ven3, 'POST', `/vens/${ven.body.id}/resources`, { resourceName: 'pv' })
    expect(resource.status).toBe(201)
    expect(resource.body).toMatchObject({ resourceName: 'pv', venID: ven.body.id })
    const report = await checked(ven3, 'POST', '/reports', {
      programID: state.programID,
      eventID: state.eventID,
      clientName: 'site-3',
      payloadDescriptors: [{ payloadType: 'USAGE', units: 'KWH' }],
      resources: [
        {
          resourceName: 'pv',
          intervalPeriod: { start: new Date(Date.now() - 900_000).toISOString(), duration: 'PT15M' },
          intervals: [{ id: 0, payloads: [{ type: 'USAGE', values: [0.5] }] }],
        },
      ],
    })
    expect(report.status).toBe(201)
    const rid = resourceIdFor('site-3', 'pv')
    await waitFor(
      async () => (await readSubject(node, `oe.tel.der.${rid}.power`, 300)).length === 1,
      10_000,
      'usage as power',
    )
    expect((await readSubject(node, `oe.tel.der.${rid}.power`, 300))[0]!.data.v).toBe(2000)
    const wrongProgram = await checked(ven3, 'POST', '/reports', {
      programID: 'other',
      eventID: state.eventID,
      clientName: 'site-3',
      resources: [],
    })
    expect(wrongProgram.status).toBe(400)
  })

  test('webhooks: a VEN subscribed to events is notified, with its bearer token, after the callback failed twice', async () => {
    const ven1 = client('ven1')
    await ven1.login()
    const subscription = await checked(ven1, 'POST', '/subscriptions', {
      clientName: 'site-1',
      programID: state.programID,
      objectOperations: [
        {
          objects: ['EVENT'],
          operations: ['CREATE', 'UPDATE'],
          callbackUrl: receiver.url,
          bearerToken: 'hook-token',
        },
      ],
    })
    expect(subscription.status).toBe(201)
    expect(subscription.body.clientID).toBe('ven1')
    expect((await checked(client('ven2'), 'GET', '/subscriptions')).status).toBe(401)
    receiver.failNext(2)
    const bl = client('bl')
    await bl.login()
    const created = await checked(bl, 'POST', '/events', {
      programID: state.programID,
      eventName: 'notify me',
      intervals: [
        {
          id: 0,
          intervalPeriod: { start: new Date().toISOString(), duration: 'PT1H' },
          payloads: [{ type: 'PRICE', values: [0.3] }],
        },
      ],
    })
    await waitFor(
      () => receiver.received.some((entry) => (entry.body.object as { id?: string }).id === created.body.id),
      15_000,
      'notification',
    )
    const hit = receiver.received.find(
      (entry) => (entry.body.object as { id?: string }).id === created.body.id,
    )!
    expect(hit.authorization).toBe('Bearer hook-token')
    expect(hit.body).toMatchObject({
      objectType: 'EVENT',
      operation: 'CREATE',
      object: { eventName: 'notify me' },
    })
    // A targeted event for group-secret is not sent to ven1.
    await checked(bl, 'POST', '/events', {
      programID: state.programID,
      eventName: 'hidden',
      targets: ['group-secret'],
    })
    await Bun.sleep(500)
    expect(
      receiver.received.some((entry) => (entry.body.object as { eventName?: string }).eventName === 'hidden'),
    ).toBe(false)
  })
})

describe('control', () => {
  test('limit_power on oe.ctl becomes an IMPORT_CAPACITY_LIMIT event the VEN sees; reading and reporting show as control_result', async () => {
    const { nats } = await api<{ nats: { url: string } }>(node, 'GET', '/v1/status')
    const auth = JSON.parse(await readFile(join(node.dataDir, 'nats', 'auth.json'), 'utf8'))
    const nc = await connect({ servers: nats.url, user: auth.user, pass: auth.password })
    const until = Date.now() + 3_600_000
    try {
      nc.publish(`oe.ctl.der.${state.rid}.limit_power`, encodeCbor({ v: 3500, u: 'W', until, source: 'dso' }))
      await nc.flush()
    } finally {
      await nc.close()
    }
    const results = async () =>
      (await readSubject(node, `oe.evt.der.${state.rid}.control_result`, 300)).map(
        (m) => m.data as Record<string, unknown>,
      )
    await waitFor(async () => (await results()).some((r) => r.status === 'Sent'), 15_000, 'Sent')
    const sent = (await results()).find((r) => r.status === 'Sent')!
    const ven1 = client('ven1')
    await ven1.login()
    const event = await checked(ven1, 'GET', `/events/${sent.eventID}`)
    expect(event.body).toMatchObject({
      targets: [`oe:${state.rid}`],
      payloadDescriptors: [{ payloadType: 'IMPORT_CAPACITY_LIMIT', units: 'KW' }],
      intervals: [{ id: 0, payloads: [{ type: 'IMPORT_CAPACITY_LIMIT', values: [3.5] }] }],
    })
    expect(Date.parse(event.body.intervalPeriod.start) + 3_600_000).toBeGreaterThan(until - 5_000)
    // Nobody else sees it.
    const ven2 = client('ven2')
    await ven2.login()
    expect((await checked(ven2, 'GET', `/events/${sent.eventID}`)).status).toBe(404)
    await waitFor(async () => (await results()).some((r) => r.status === 'Delivered'), 10_000, 'Delivered')
    await checked(ven1, 'POST', '/reports', {
      eventID: sent.eventID,
      clientName: 'site-1',
      payloadDescriptors: [{ payloadType: 'SETPOINT', units: 'KW' }],
      resources: [
        {
          resourceName: 'battery 1',
          intervalPeriod: { start: new Date().toISOString(), duration: 'PT0S' },
          intervals: [{ id: 0, payloads: [{ type: 'SETPOINT', values: [3.5] }] }],
        },
      ],
    })
    await waitFor(async () => (await results()).some((r) => r.status === 'Accepted'), 10_000, 'Accepted')
    expect((await results()).find((r) => r.status === 'Accepted')).toMatchObject({
      v: 3500,
      eventID: sent.eventID,
    })
    state.controlEventID = sent.eventID
  })
})

describe('restart', () => {
  test('a restarted VTN has every object, and tokens issued before still work', async () => {
    const bl = client('bl')
    await bl.login()
    const before = Object.fromEntries(
      await Promise.all(
        ['/programs', '/events', '/vens', '/resources', '/reports', '/subscriptions'].map(
          async (path) => [path, (await checked(bl, 'GET', path)).body] as const,
        ),
      ),
    )
    expect(await node.stop()).toBe(0)
    node = await startNode({ dataDir: node.dataDir })
    for (const [path, objects] of Object.entries(before)) {
      expect((await checked(bl, 'GET', path)).body, path).toEqual(objects)
    }
    expect((await fetch(`${node.api}/readyz`)).status).toBe(200)
  })
})
