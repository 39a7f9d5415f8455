/**
 * The OpenADR 3.1.0 MQTT notifier binding, served by the node's own nats-server: `/notifiers`
 * names the broker and `OAUTH2_BEARER_TOKEN`, the topic endpoints name each client's topics, a
 * real MQTT client (the `mqtt` package) logs in as a VEN with its bearer token and receives the
 * event notifications meant for it (a limit_power event for its resource, and nothing targeted
 * at another VEN); another VEN's topics, wildcards above its own, the node's own subjects and
 * publishing are refused; wrong or borrowed tokens and unregistered clients cannot connect.
 * With TLS configured the broker is `mqtts://` and the connection ends when the token expires;
 * with an external NATS the binding is not offered and the status says why.
 */
import { execFileSync } from 'node:child_process'
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { connect as connectNats, type NatsConnection } from '@nats-io/transport-node'
import { encode as encodeCbor } from 'cbor-x'
import { connect, connectAsync, type MqttClient } from 'mqtt'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { freePort } from '../data-plane/index.ts'
import { contractFor } from '../plugins/openadr/contract.ts'
import { resourceIdFor } from '../plugins/openadr/index.ts'
import { type AnyJson, RawOpenAdrClient } from '../plugins/openadr/testing.ts'
import { api } from './helpers/federation.ts'
import {
  cleanupAll,
  type RunningNode,
  runCli,
  startNatsServer,
  startNode,
  tempDir,
  waitFor,
} from './helpers/node-process.ts'

const SECRETS = {
  bl: 'bl-secret-123',
  ven1: 'ven1-secret-123',
  ven2: 'ven2-secret-123',
  ven3: 'ven3-secret-123',
}
let node: RunningNode
let base: string
let mqttPort: number
const mqttClients: MqttClient[] = []
let nats: NatsConnection
const ids: Record<string, string> = {}

beforeAll(async () => {
  const port = await freePort()
  mqttPort = await freePort()
  base = `http://127.0.0.1:${port}`
  node = await startNode({
    config: `org = "DSO"
[plugins.openadr-vtn]
enabled = true
listen = "127.0.0.1:${port}"
mqtt_listen = "127.0.0.1:${mqttPort}"
${Object.entries(SECRETS)
  .map(
    ([id, secret]) =>
      `[plugins.openadr-vtn.clients.${id}]\nsecret = "${secret}"\nrole = "${id === 'bl' ? 'bl' : 'ven'}"\n`,
  )
  .join('')}`,
  })
  const status = await api<{ nats: { url: string } }>(node, 'GET', '/v1/status')
  const auth = JSON.parse(await readFile(join(node.dataDir, 'nats', 'auth.json'), 'utf8'))
  nats = await connectNats({ servers: status.nats.url, user: auth.user, pass: auth.password })
})

afterAll(async () => {
  for (const client of mqttClients) await client.endAsync(true).catch(() => {})
  await nats?.close()
  await cleanupAll()
})

const client = (id: keyof typeof SECRETS) => new RawOpenAdrClient(base, '3.1.0', id, SECRETS[id])

async function checked(who: RawOpenAdrClient, method: string, path: string, body?: unknown) {
  const answer = await who.request(method, path, body)
  expect(who.check(method, path, answer), `${method} ${path} → ${answer.status}`).toEqual([])
  return answer as { status: number; body: AnyJson }
}

/** An MQTT client that logs in as an OpenADR client would: client id and bearer token. */
async function mqttLogin(username: string, password: string, clientId = username): Promise<MqttClient> {
  const mqtt = await connectAsync(`mqtt://127.0.0.1:${mqttPort}`, {
    username,
    password,
    clientId,
    reconnectPeriod: 0,
    connectTimeout: 5_000,
  })
  mqttClients.push(mqtt)
  return mqtt
}

function collect(mqtt: MqttClient): { topic: string; body: AnyJson }[] {
  const received: { topic: string; body: AnyJson }[] = []
  mqtt.on('message', (topic, payload) => received.push({ topic, body: JSON.parse(payload.toString()) }))
  return received
}

describe('MQTT notifier binding', () => {
  test('setup: BL has a program, ven1 and ven2 are registered with a resource each', async () => {
    const bl = client('bl')
    await bl.login()
    ids.program = (await checked(bl, 'POST', '/programs', { programName: 'mqtt-flex' })).body.id
    for (const [who, name] of [
      ['ven1', 'site-1'],
      ['ven2', 'site-2'],
    ] as const) {
      const ven = client(who)
      await ven.login()
      const created = await checked(ven, 'POST', '/vens', { objectType: 'VEN_VEN_REQUEST', venName: name })
      expect(created.status).toBe(201)
      ids[who] = created.body.id
      const resource = await checked(ven, 'POST', '/resources', {
        objectType: 'VEN_RESOURCE_REQUEST',
        resourceName: 'battery',
        venID: created.body.id,
      })
      expect(resource.status).toBe(201)
    }
  })

  test('/notifiers names the broker, JSON and OAuth2 bearer tokens; each client is told its own topics', async () => {
    const ven1 = client('ven1')
    await ven1.login()
    const notifiers = await checked(ven1, 'GET', '/notifiers')
    expect(notifiers.body).toEqual({
      WEBHOOK: true,
      MQTT: {
        URIS: [`mqtt://127.0.0.1:${mqttPort}`],
        serialization: 'JSON',
        authentication: { method: 'OAUTH2_BEARER_TOKEN', username: '{clientID}' },
      },
    })
    const own = await checked(ven1, 'GET', `/notifiers/mqtt/topics/vens/${ids.ven1}/events`)
    expect(own.body).toEqual({
      topics: {
        CREATE: `openadr-vtn/vens/${ids.ven1}/events/create`,
        UPDATE: `openadr-vtn/vens/${ids.ven1}/events/update`,
        DELETE: `openadr-vtn/vens/${ids.ven1}/events/delete`,
        ALL: `openadr-vtn/vens/${ids.ven1}/events/+`,
      },
    })
    // The programs a VEN may see come under its own ven too.
    expect((await checked(ven1, 'GET', '/notifiers/mqtt/topics/programs')).body.topics.CREATE).toBe(
      `openadr-vtn/vens/${ids.ven1}/programs/create`,
    )
    expect(
      (await checked(ven1, 'GET', `/notifiers/mqtt/topics/programs/${ids.program}/events`)).body,
    ).toEqual(own.body)
    // Not another VEN's, not BL's.
    expect((await checked(ven1, 'GET', `/notifiers/mqtt/topics/vens/${ids.ven2}/events`)).status).toBe(404)
    expect((await checked(ven1, 'GET', '/notifiers/mqtt/topics/events')).status).toBe(403)
    expect((await checked(ven1, 'GET', '/notifiers/mqtt/topics/vens')).status).toBe(403)
    const bl = client('bl')
    await bl.login()
    expect((await checked(bl, 'GET', '/notifiers/mqtt/topics/programs')).body.topics).toEqual({
      CREATE: 'openadr-vtn/programs/create',
      UPDATE: 'openadr-vtn/programs/update',
      DELETE: 'openadr-vtn/programs/delete',
      ALL: 'openadr-vtn/programs/+',
    })
    expect((await checked(bl, 'GET', `/notifiers/mqtt/topics/programs/${ids.program}`)).body.topics).toEqual({
      UPDATE: `openadr-vtn/programs/${ids.program}/update`,
      DELETE: `openadr-vtn/programs/${ids.program}/delete`,
      ALL: `openadr-vtn/programs/${ids.program}/+`,
    })
    expect((await checked(bl, 'GET', '/notifiers/mqtt/topics/programs/no-such-program')).status).toBe(404)
    // Every topic endpoint answers within the document.
    for (const path of [
      '/notifiers/mqtt/topics/reports',
      '/notifiers/mqtt/topics/subscriptions',
      '/notifiers/mqtt/topics/resources',
      `/notifiers/mqtt/topics/vens/${ids.ven2}`,
      `/notifiers/mqtt/topics/vens/${ids.ven2}/programs`,
      `/notifiers/mqtt/topics/vens/${ids.ven2}/resources`,
    ])
      expect((await checked(bl, 'GET', path)).status).toBe(200)
  })

  test('a VEN logged in with its token gets its event notifications, not another VEN’s', async () => {
    const ven1 = client('ven1')
    const ven2 = client('ven2')
    const bl = client('bl')
    await Promise.all([ven1.login(), ven2.login(), bl.login()])
    const topics1 = (await checked(ven1, 'GET', `/notifiers/mqtt/topics/vens/${ids.ven1}/events`)).body.topics
    const topics2 = (await checked(ven2, 'GET', `/notifiers/mqtt/topics/vens/${ids.ven2}/events`)).body.topics
    const mqtt1 = await mqttLogin('ven1', ven1.token!)
    const mqtt2 = await mqttLogin('ven2', ven2.token!)
    const blMqtt = await mqttLogin('bl', bl.token!)
    const received1 = collect(mqtt1)
    const received2 = collect(mqtt2)
    const receivedBl = collect(blMqtt)
    expect(await mqtt1.subscribeAsync(topics1.ALL, { qos: 1 })).toEqual([{ topic: topics1.ALL, qos: 1 }])
    await mqtt2.subscribeAsync(topics2.ALL, { qos: 0 })
    await blMqtt.subscribeAsync('openadr-vtn/events/+', { qos: 0 })

    // An event for everyone, then limit_power on ven1's resource: an event targeted at ven1 only.
    const everyone = await checked(bl, 'POST', '/events', {
      programID: ids.program,
      eventName: 'for all',
      intervalPeriod: { start: new Date().toISOString(), duration: 'PT1H' },
      intervals: [{ id: 0, payloads: [{ type: 'PRICE', values: [0.25] }] }],
    })
    const rid = resourceIdFor('site-1', 'battery')
    nats.publish(
      `oe.ctl.der.${rid}.limit_power`,
      encodeCbor({ v: 4_000, u: 'W', until: Date.now() + 3_600_000, source: 'dso' }),
    )
    await waitFor(
      () => received1.filter((message) => message.topic === topics1.CREATE).length >= 2,
      15_000,
      'two event notifications on ven1',
    )
    const validate = (body: unknown) => contractFor('3.1.0').validateNotification(body)
    for (const message of received1) expect(validate(message.body), message.topic).toEqual([])
    const control = received1.find(
      (message) => message.body.object.payloadDescriptors?.[0]?.payloadType === 'IMPORT_CAPACITY_LIMIT',
    )
    expect(control?.body).toMatchObject({
      objectType: 'EVENT',
      operation: 'CREATE',
      object: {
        programID: expect.any(String),
        targets: [`oe:${rid}`],
        intervals: [{ payloads: [{ type: 'IMPORT_CAPACITY_LIMIT', values: [4] }] }],
      },
    })
    expect(received1.map((message) => message.body.object.id)).toContain(everyone.body.id)
    // ven2 hears the event for all, never ven1's control event.
    await waitFor(() => received2.length >= 1, 10_000, 'ven2 notification')
    await waitFor(() => receivedBl.length >= 2, 10_000, 'BL notifications')
    expect(received2.map((message) => message.body.object.id)).toEqual([everyone.body.id])
    expect(receivedBl.map((message) => message.body.object.id)).toEqual(
      expect.arrayContaining([everyone.body.id, control!.body.object.id]),
    )
  })

  test('another VEN’s topics, wider wildcards, the node’s subjects and publishing are refused', async () => {
    const ven1 = client('ven1')
    await ven1.login()
    const mqtt = await mqttLogin('ven1', ven1.token!, 'ven1-snooper')
    const received = collect(mqtt)
    for (const filter of [
      `openadr-vtn/vens/${ids.ven2}/events/+`,
      `openadr-vtn/vens/${ids.ven2}/#`,
      'openadr-vtn/vens/+/events/+',
      'openadr-vtn/events/+',
      'openadr-vtn/#',
      'oe/tel/#',
      '#',
      '$MQTT/sub/#',
    ])
      await expect(mqtt.subscribeAsync(filter, { qos: 0 }), filter).rejects.toThrow()
    // The connection survives the refusals, and its own topics still work.
    await mqtt.subscribeAsync(`openadr-vtn/vens/${ids.ven1}/#`, { qos: 0 })
    // A VEN publishes nothing: not on its own topics, not into the data plane.
    const heard: string[] = []
    const spy = nats.subscribe('>', {
      callback: (_error, message) => {
        heard.push(message.subject)
      },
    })
    await nats.flush()
    for (const topic of [`openadr-vtn/vens/${ids.ven1}/events/create`, 'oe/tel/der/x/power'])
      await mqtt.publishAsync(topic, '{"forged":true}', { qos: 0 })
    await Bun.sleep(500)
    spy.unsubscribe()
    expect(
      heard.filter((subject) => subject.startsWith('openadr-vtn.') || subject.startsWith('oe.tel.')),
    ).toEqual([])
    expect(received).toEqual([])
  })

  test('a wrong token, another client’s token, a client without a ven, and plain NATS are refused', async () => {
    const ven1 = client('ven1')
    const ven3 = client('ven3')
    await Promise.all([ven1.login(), ven3.login()])
    await expect(mqttLogin('ven1', 'not-a-token', 'x1')).rejects.toThrow(/Not authorized|Bad user/i)
    await expect(mqttLogin('ven2', ven1.token!, 'x2')).rejects.toThrow(/Not authorized|Bad user/i)
    await expect(mqttLogin('ven3', ven3.token!, 'x3')).rejects.toThrow(/Not authorized|Bad user/i)
    // The callout decides MQTT clients only: a NATS client with a VEN's token gets nothing.
    await expect(
      connectNats({
        servers: (await api<{ nats: { url: string } }>(node, 'GET', '/v1/status')).nats.url,
        user: 'ven1',
        pass: ven1.token!,
        reconnect: false,
      }),
    ).rejects.toThrow()
    expect((await fetch(`${node.api}/readyz`)).status).toBe(200)
  })

  test('status shows the MQTT listener', async () => {
    const status = await api<{ plugins: AnyJson[] }>(node, 'GET', '/v1/status')
    const vtn = status.plugins.find((plugin) => plugin.id === 'openadr-vtn')
    expect(vtn.mqtt).toMatchObject({ url: `mqtt://127.0.0.1:${mqttPort}` })
  })
})

describe('MQTT over TLS, and tokens that expire', () => {
  test('mqtts:// with the configured certificate; the connection ends when the bearer token expires', async () => {
    const dir = await tempDir('oe-mqtt-tls-')
    const cert = join(dir, 'cert.pem')
    const key = join(dir, 'key.pem')
    // openssl is a test prerequisite (scripts/setup installs it): without it this test fails.
    execFileSync(
      'openssl',
      [
        'req',
        '-x509',
        '-newkey',
        'ec',
        '-pkeyopt',
        'ec_paramgen_curve:prime256v1',
        '-nodes',
        '-keyout',
        key,
        '-out',
        cert,
        '-days',
        '1',
        '-subj',
        '/CN=localhost',
        '-addext',
        'subjectAltName=DNS:localhost,IP:127.0.0.1',
      ],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    )
    const port = await freePort()
    const tlsPort = await freePort()
    const tlsNode = await startNode({
      config: `[plugins.openadr-vtn]
enabled = true
listen = "127.0.0.1:${port}"
mqtt_listen = "127.0.0.1:${tlsPort}"
mqtt_tls_cert = "${cert}"
mqtt_tls_key = "${key}"
token_lifetime = "3s"
[plugins.openadr-vtn.clients.bl]
secret = "${SECRETS.bl}"
role = "bl"
`,
    })
    const bl = new RawOpenAdrClient(`http://127.0.0.1:${port}`, '3.1.0', 'bl', SECRETS.bl)
    await bl.login()
    const notifiers = await bl.request('GET', '/notifiers')
    expect(notifiers.body).toMatchObject({ MQTT: { URIS: [`mqtts://127.0.0.1:${tlsPort}`] } })
    // Plain MQTT on the TLS port gets nowhere.
    const plain = connect(`mqtt://127.0.0.1:${tlsPort}`, {
      username: 'bl',
      password: bl.token!,
      reconnectPeriod: 0,
      connectTimeout: 2_000,
    })
    const plainOutcome = await new Promise<string>((resolve) => {
      plain.once('connect', () => resolve('connected'))
      plain.once('close', () => resolve('closed'))
      setTimeout(() => resolve('no answer'), 4_000)
    })
    plain.end(true)
    expect(plainOutcome).not.toBe('connected')
    const secure = await connectAsync(`mqtts://127.0.0.1:${tlsPort}`, {
      username: 'bl',
      password: bl.token!,
      clientId: 'bl-tls',
      ca: await readFile(cert),
      reconnectPeriod: 0,
    })
    mqttClients.push(secure)
    const received = collect(secure)
    await secure.subscribeAsync('openadr-vtn/programs/+', { qos: 0 })
    expect((await bl.request('POST', '/programs', { programName: 'over tls' })).status).toBe(201)
    await waitFor(() => received.length === 1, 10_000, 'notification over TLS')
    expect(received[0]).toMatchObject({
      topic: 'openadr-vtn/programs/create',
      body: { objectType: 'PROGRAM', object: { programName: 'over tls' } },
    })
    // The token lives 3 s: then the server ends the session.
    const closed = new Promise<void>((resolve) => secure.once('close', () => resolve()))
    await Promise.race([closed, Bun.sleep(8_000).then(() => Promise.reject(new Error('still connected')))])
    expect((await fetch(`${tlsNode.api}/readyz`)).status).toBe(200)
  })
})

describe('an external NATS', () => {
  test('no MQTT binding is offered, the status says to enable MQTT on the cluster, notifications still go to its subjects', async () => {
    const external = await startNatsServer()
    const port = await freePort()
    const node = await startNode({
      args: ['--nats-url', external.url],
      config: `[plugins.openadr-vtn]
enabled = true
listen = "127.0.0.1:${port}"
mqtt_listen = "127.0.0.1:1883"
[plugins.openadr-vtn.clients.bl]
secret = "${SECRETS.bl}"
role = "bl"
`,
    })
    const bl = new RawOpenAdrClient(`http://127.0.0.1:${port}`, '3.1.0', 'bl', SECRETS.bl)
    await bl.login()
    expect((await bl.request('GET', '/notifiers')).body).toEqual({ WEBHOOK: true })
    expect((await bl.request('GET', '/notifiers/mqtt/topics/programs')).status).toBe(404)
    const vtn = (await api<{ plugins: AnyJson[] }>(node, 'GET', '/v1/status')).plugins.find(
      (plugin) => plugin.id === 'openadr-vtn',
    )
    expect(vtn.mqtt.unavailable).toMatch(/external NATS.*enable MQTT on that cluster/)
    const text = (await runCli(['--data-dir', node.dataDir, 'status'])).stdout
    expect(text).toMatch(/MQTT +not served: the node uses an external NATS/)
    // The cluster's own MQTT listener, once its operator enables one, carries the notifications.
    const watcher = await connectNats({ servers: external.url })
    const subjects: string[] = []
    const subscription = watcher.subscribe('openadr-vtn.>', {
      callback: (_error, message) => {
        subjects.push(message.subject)
      },
    })
    await watcher.flush()
    expect((await bl.request('POST', '/programs', { programName: 'external' })).status).toBe(201)
    await waitFor(() => subjects.includes('openadr-vtn.programs.create'), 10_000, 'notification subject')
    subscription.unsubscribe()
    await watcher.close()
  })
})
