/**
 * The OpenADR VEN plugin told of events rather than only polling: a VEN node in webhook mode
 * (subscription on the VTN with its callback and bearer token; other tokens get 401) and one
 * in MQTT mode (the VTN node's MQTT notifier), each with a poll interval of 300 s, act on a new
 * event within seconds: only the notification can explain it.
 */
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { freePort } from '../data-plane/index.ts'
import { RawOpenAdrClient } from '../plugins/openadr/testing.ts'
import { api } from './helpers/federation.ts'
import { cleanupAll, type RunningNode, readSubject, startNode, waitFor } from './helpers/node-process.ts'

const SECRETS = { bl: 'bl-secret-123', 'ven-w': 'ven-w-secret-1', 'ven-m': 'ven-m-secret-1' }

let webhookVen: RunningNode
let mqttVen: RunningNode
let base: string
let callbackPort: number
let programID: string

const venConfig = (id: 'ven-w' | 'ven-m', extra: string) => `org = "Aggregator"
[plugins.openadr-ven]
enabled = true
vtn_url = "${base}/openadr3/3.1.0"
client_id = "${id}"
client_secret = "${SECRETS[id]}"
ven_name = "${id}-site"
poll_interval = "300s"
${extra}
[plugins.openadr-ven.resources]
"battery-1" = "battery.${id}-bat"
`

type VenStatus = {
  id: string
  venID?: string
  lastPoll?: number
  notifications?: Record<string, unknown>
}
const venStatus = async (node: RunningNode) =>
  (await api<VenStatus[]>(node, 'GET', '/v1/plugins')).find((plugin) => plugin.id === 'openadr-ven')!

beforeAll(async () => {
  const port = await freePort()
  const mqttPort = await freePort()
  callbackPort = await freePort()
  base = `http://127.0.0.1:${port}`
  await startNode({
    config: `org = "DSO"
[plugins.openadr-vtn]
enabled = true
listen = "127.0.0.1:${port}"
mqtt_listen = "127.0.0.1:${mqttPort}"
webhook_attempts = 2
${Object.entries(SECRETS)
  .map(
    ([id, secret]) =>
      `[plugins.openadr-vtn.clients.${id}]\nsecret = "${secret}"\nrole = "${id === 'bl' ? 'bl' : 'ven'}"\n`,
  )
  .join('')}`,
  })
  const admin = new RawOpenAdrClient(base, '3.1.0', 'bl', SECRETS.bl)
  await admin.login()
  programID = ((await admin.post('/programs', { programName: 'notified' })).body as { id: string }).id
  webhookVen = await startNode({
    config: venConfig('ven-w', `notifications = "webhook"\nwebhook_listen = "127.0.0.1:${callbackPort}"`),
  })
  mqttVen = await startNode({ config: venConfig('ven-m', 'notifications = "mqtt"') })
})

afterAll(async () => {
  await cleanupAll()
})

async function limitEvent(kw: number): Promise<string> {
  const admin = new RawOpenAdrClient(base, '3.1.0', 'bl', SECRETS.bl)
  await admin.login()
  const created = await admin.post('/events', {
    programID,
    eventName: `limit ${kw}`,
    payloadDescriptors: [{ payloadType: 'IMPORT_CAPACITY_LIMIT', units: 'KW' }],
    intervalPeriod: { start: new Date().toISOString(), duration: 'PT1H' },
    intervals: [{ id: 0, payloads: [{ type: 'IMPORT_CAPACITY_LIMIT', values: [kw] }] }],
  })
  expect(created.status).toBe(201)
  return (created.body as { id: string }).id
}

const limitsOf = async (node: RunningNode, rid: string) =>
  (await readSubject(node, `oe.ctl.battery.${rid}.limit_power`, 300)).map(
    (message) => message.data as Record<string, unknown>,
  )

describe('openadr-ven notified by the VTN', () => {
  test('webhook: subscribes with its callback, acts on a new event at once, refuses other tokens', async () => {
    await waitFor(
      async () => (await venStatus(webhookVen)).notifications?.subscribed === true,
      20_000,
      'the subscription',
    )
    const admin = new RawOpenAdrClient(base, '3.1.0', 'bl', SECRETS.bl)
    await admin.login()
    const subscriptions = (await admin.get('/subscriptions')).body as {
      clientName: string
      objectOperations: { callbackUrl: string; bearerToken?: string }[]
    }[]
    const own = subscriptions.filter((subscription) => subscription.clientName === 'ven-w-site')
    expect(own).toHaveLength(1)
    const callbackUrl = own[0]!.objectOperations[0]!.callbackUrl
    expect(callbackUrl).toBe(`http://127.0.0.1:${callbackPort}/openadr/notifications`)
    expect(own[0]!.objectOperations[0]!.bearerToken?.length).toBeGreaterThanOrEqual(32)

    const polledAt = (await venStatus(webhookVen)).lastPoll
    const eventID = await limitEvent(6)
    await waitFor(async () => (await limitsOf(webhookVen, 'ven-w-bat')).length >= 1, 15_000, 'the limit')
    expect((await limitsOf(webhookVen, 'ven-w-bat'))[0]).toMatchObject({
      v: 6000,
      source: `openadr:${eventID}`,
    })
    // No poll explains it.
    expect((await venStatus(webhookVen)).lastPoll).toBe(polledAt)

    // A caller without the VEN's token is refused, and nothing comes of it.
    const forged = {
      objectType: 'EVENT',
      operation: 'CREATE',
      object: { id: 'forged', programID, intervals: [] },
    }
    for (const authorization of [undefined, 'Bearer not-the-token']) {
      const answer = await fetch(callbackUrl, {
        method: 'POST',
        headers: { 'content-type': 'application/json', ...(authorization ? { authorization } : {}) },
        body: JSON.stringify(forged),
      })
      expect(answer.status).toBe(401)
    }
    expect((await venStatus(webhookVen)).notifications).toMatchObject({ refused: 2 })
  })

  test('mqtt: logs in to the VTN notifier and acts on a new event at once', async () => {
    await waitFor(
      async () => (await venStatus(mqttVen)).notifications?.connected === true,
      20_000,
      'the MQTT connection',
    )
    const status = await venStatus(mqttVen)
    expect(status.notifications?.topic).toBe(`openadr-vtn/vens/${status.venID}/events/+`)
    const polledAt = status.lastPoll
    const eventID = await limitEvent(3)
    // (The first test's event, notified as it was created, applies here too; this one is newer.)
    const fromEvent = async () =>
      (await limitsOf(mqttVen, 'ven-m-bat')).find((limit) => limit.source === `openadr:${eventID}`)
    await waitFor(async () => (await fromEvent()) !== undefined, 15_000, 'the limit')
    expect(await fromEvent()).toMatchObject({ v: 3000 })
    expect((await venStatus(mqttVen)).lastPoll).toBe(polledAt)
  })
})
