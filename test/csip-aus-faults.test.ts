/**
 * The csip-aus client under faults and bad input, against the in-repo utility server: an outage
 * (the envelope in force stays until it ends, then the default applies), wrong and expired client
 * certificates, malformed and hostile XML, huge lists, a server clock far from the host's, and a
 * restart (no second registration, the envelope kept). Each is named in the log; the client stays
 * ready throughout.
 */
import { readFileSync } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import { request } from 'node:https'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, afterEach, beforeAll, describe, expect, test } from 'vitest'
import { sfdiFromLfdi } from '../plugins/ieee2030-5/identity.ts'
import { memoryStore } from '../plugins/ieee2030-5/state.ts'
import { type ClientUnderTest, startClient, waitUntil } from './helpers/csip-client-harness.ts'
import { CsipTestServer, makePki, type Pki } from './helpers/csip-server.ts'

let dir: string
let pki: Pki
const cleanups: (() => Promise<void>)[] = []

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'csip-faults-'))
  pki = makePki(dir)
})
afterEach(async () => {
  while (cleanups.length > 0) await cleanups.pop()!()
})
afterAll(async () => {
  await rm(dir, { recursive: true, force: true })
})

/** A server with one program (default export 5000 W, import 8000 W), polled every second. */
async function utility(init: { clockSkewS?: number } = {}): Promise<CsipTestServer> {
  const server = new CsipTestServer({ pki, ...init })
  server.rates = {
    dcap_poll_seconds: 1,
    fsa_list_poll_seconds: 1,
    derp_list_poll_seconds: 1,
    der_list_poll_seconds: 1,
    mup_post_seconds: 1,
  }
  server.createProgram(0)
  server.setDefaultControl({ opModExpLimW: 5000, opModImpLimW: 8000 })
  await server.start()
  cleanups.push(() => server.stop())
  return server
}

async function client(
  server: CsipTestServer,
  options: Parameters<typeof startClient>[2] = {},
): Promise<ClientUnderTest> {
  const started = startClient(server, pki, options)
  cleanups.push(() => started.stop())
  await started.client.start()
  return started
}

const latest = (c: ClientUnderTest, command: string) =>
  c.commands.filter((entry) => entry.command === command).at(-1)?.payload
const warned = (c: ClientUnderTest, name: string) =>
  c.logs.some(
    (entry) => entry.level === 'warn' && (entry.name === name || String(entry.err ?? '').includes(name)),
  )

describe('faults', () => {
  test('server outage: the envelope in force stays until it ends, then the default applies', async () => {
    const server = await utility()
    const c = await client(server)
    await waitUntil(() => latest(c, 'limit_export')?.v === 5000, 10_000, 'the default envelope')
    const control = server.createControl({ start: server.now(), duration: 5, base: { opModExpLimW: 1500 } })
    await waitUntil(() => latest(c, 'limit_export')?.v === 1500, 10_000, 'the control')
    expect(latest(c, 'limit_export')).toMatchObject({ source: `csip-aus:event:${control.mrid}` })
    // The utility goes dark.
    server.online = false
    server.dropConnections()
    await waitUntil(() => warned(c, 'CsipTransportError'), 10_000, 'the outage to be logged')
    expect(latest(c, 'limit_export')?.v).toBe(1500)
    const until = latest(c, 'limit_export')!.until as number
    expect(Math.abs(until - (control.start + 5) * 1000)).toBeLessThan(2_000)
    await waitUntil(() => latest(c, 'limit_export')?.v === 5000, 10_000, 'the default after the event')
    const change = c.commands.findLast((entry) => entry.command === 'limit_export')!
    expect(change.at).toBeGreaterThanOrEqual(until - 1_100)
    expect(c.client.ready()).toBe(true)
    expect(c.client.status()).toMatchObject({
      connected: false,
      lastError: expect.stringMatching(/CsipTransportError/),
    })
    // Back online: the completion reaches the server, late but not lost.
    server.online = true
    await waitUntil(
      () => server.responses.some((r) => r.subject === control.mrid && r.status === 3),
      15_000,
      'the completed response',
    )
  }, 60_000)

  test.each([
    ['signed by another CA', 'rogue'],
    ['expired', 'expired'],
  ])(
    'a client certificate %s is refused by the server: named in the log, nothing registered',
    async (_what, which) => {
      const server = await utility()
      const c = await client(
        server,
        which === 'rogue' ? { cert: pki.rogueCert, key: pki.rogueKey } : { cert: pki.expiredCert },
      )
      await waitUntil(() => warned(c, 'CsipTransportError'), 10_000, 'the TLS failure')
      const failure = c.logs.find((entry) => entry.name === 'CsipTransportError')!
      expect(String(failure.err)).toMatch(/GET https:\/\/127\.0\.0\.1:\d+\/dcap: /)
      expect(server.requests).toEqual([])
      expect(c.client.ready()).toBe(true)
    },
    30_000,
  )

  test('a server certificate from an untrusted CA is refused by the client', async () => {
    const server = await utility()
    const c = await client(server, { config: { ca: pki.rogueCert } })
    await waitUntil(() => warned(c, 'CsipTransportError'), 10_000, 'the TLS failure')
    expect(server.requests).toEqual([])
  }, 30_000)

  test('malformed XML and a DOCTYPE with entities are refused by name; the schedule keeps what it had', async () => {
    const server = await utility()
    const c = await client(server)
    await waitUntil(() => latest(c, 'limit_export')?.v === 5000, 10_000, 'the default envelope')
    server.override = { match: /\/derc$/, body: '<DERControlList all="1"><DERControl><mRID>AB</DERControl>' }
    await waitUntil(() => warned(c, 'CsipXmlError'), 10_000, 'malformed XML to be logged')
    server.override = {
      match: /\/dderc$/,
      body: '<!DOCTYPE d [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]><DefaultDERControl><mRID>&b;</mRID></DefaultDERControl>',
    }
    await waitUntil(
      () => c.logs.some((entry) => String(entry.err ?? '').includes('DOCTYPE')),
      10_000,
      'DOCTYPE refusal',
    )
    expect(latest(c, 'limit_export')?.v).toBe(5000)
    expect(c.logs.filter((entry) => entry.level === 'error')).toEqual([])
    server.override = undefined
  }, 30_000)

  test('a huge EndDeviceList is read in pages, up to max_list_items', async () => {
    const server = await utility()
    server.padding = 20_000
    const c = await client(server, {
      config: {
        page_size: 50,
        max_list_items: 200,
        sites: {
          // Not registered yet, and the list is long: it is searched within the limit, then registered in-band.
          'site-1': {
            lfdi: '3E4F45AB31EDFE5B67E343E5E4562E31000000AA',
            meter: 'meter.m1',
            ders: [],
            rated_w: 3000,
          },
        },
      },
    })
    await waitUntil(
      () => server.devices.length === 1 && latest(c, 'limit_export') !== undefined,
      15_000,
      'registration',
    )
    const pages = server.requests.filter((r) => r.method === 'GET' && r.path === '/edev')
    expect(pages.length).toBeLessThanOrEqual(2 * 4 + 4)
    expect(c.logs.some((entry) => entry.msg === 'list longer than max_list_items: the rest is ignored')).toBe(
      true,
    )
  }, 30_000)

  test('a response body over max_body_bytes is refused by name', async () => {
    const server = await utility()
    server.override = {
      match: /^\/dcap$/,
      body: `<DeviceCapability>${' '.repeat(20_000)}</DeviceCapability>`,
    }
    const c = await client(server, { config: { max_body_bytes: 8192 } })
    await waitUntil(
      () => c.logs.some((entry) => /over 8192 bytes/.test(String(entry.err ?? ''))),
      10_000,
      'the size refusal',
    )
    expect(c.client.ready()).toBe(true)
  }, 30_000)

  test('a server clock an hour ahead: controls follow server time, the offset is logged', async () => {
    const server = await utility({ clockSkewS: 3600 })
    const c = await client(server)
    await waitUntil(() => latest(c, 'limit_export')?.v === 5000, 10_000, 'the default envelope')
    expect(
      c.logs.some(
        (entry) =>
          entry.level === 'warn' &&
          entry.msg === 'server clock differs from host clock: controls follow server time',
      ),
    ).toBe(true)
    // Starts now on the server's clock, lasts 4 s: in force at once, ending 4 s from now on the host's.
    server.createControl({ start: server.now(), duration: 4, base: { opModExpLimW: 700 } })
    await waitUntil(() => latest(c, 'limit_export')?.v === 700, 10_000, 'the control')
    const until = latest(c, 'limit_export')!.until as number
    expect(Math.abs(until - (Date.now() + 4_000))).toBeLessThan(3_000)
    await waitUntil(() => latest(c, 'limit_export')?.v === 5000, 10_000, 'the default afterwards')
  }, 30_000)

  test('a restart neither registers again nor drops the envelope in force', async () => {
    const server = await utility()
    const store = memoryStore()
    const first = await client(server, { store })
    const control = server.createControl({ start: server.now(), duration: 8, base: { opModExpLimW: 2500 } })
    await waitUntil(() => latest(first, 'limit_export')?.v === 2500, 10_000, 'the control')
    await first.stop()
    expect(server.requests.filter((r) => r.method === 'POST' && r.path === '/edev')).toHaveLength(1)
    // The utility is unreachable while the node restarts.
    server.online = false
    server.dropConnections()
    const second = await client(server, { store })
    expect(second.client.status()).toMatchObject({
      sites: {
        'site-1': { controls: { limit_export: { v: 2500, source: `csip-aus:event:${control.mrid}` } } },
      },
    })
    // Nothing new to publish while the same envelope is in force; the default after it ends.
    await new Promise((resolve) => setTimeout(resolve, 1_500))
    expect(second.commands.filter((entry) => entry.command === 'limit_export')).toEqual([])
    await waitUntil(() => latest(second, 'limit_export')?.v === 5000, 15_000, 'the default after the event')
    server.online = true
    await waitUntil(
      () => server.responses.some((r) => r.subject === control.mrid && r.status === 3),
      15_000,
      'completed',
    )
    expect(server.requests.filter((r) => r.method === 'POST' && r.path === '/edev')).toHaveLength(1)
    // The restarted client found its EndDevice by href: no second received/started either.
    expect(server.responses.filter((r) => r.subject === control.mrid).map((r) => r.status)).toEqual([1, 2, 3])
  }, 60_000)

  test('notifications wake the poll: a control arrives long before the next poll; unknown senders are refused', async () => {
    const server = new CsipTestServer({ pki })
    server.rates = {
      dcap_poll_seconds: 300,
      fsa_list_poll_seconds: 300,
      derp_list_poll_seconds: 300,
      der_list_poll_seconds: 300,
      mup_post_seconds: 300,
    }
    server.createProgram(0)
    server.setDefaultControl({ opModExpLimW: 5000 })
    await server.start()
    cleanups.push(() => server.stop())
    const c = await client(server, { config: { notify_listen: '127.0.0.1:0' } })
    await waitUntil(() => server.subscriptions.length >= 4, 10_000, 'subscriptions')
    const created = Date.now()
    server.createControl({ start: server.now(), duration: 60, base: { opModExpLimW: 1234 } })
    await waitUntil(() => latest(c, 'limit_export')?.v === 1234, 10_000, 'the control')
    expect(Date.now() - created).toBeLessThan(5_000) // the next poll was 300 s away
    expect(server.notifications.every((n) => n.status === 204)).toBe(true)
    // A sender whose certificate does not chain to the SERCA cannot post a notification.
    const uri = new URL(String(server.subscriptions[0]!.notificationURI))
    const answer = await new Promise<string>((resolve) => {
      const req = request(
        uri,
        {
          method: 'POST',
          cert: readFileSync(pki.rogueCert),
          key: readFileSync(pki.rogueKey),
          ca: readFileSync(pki.ca),
          checkServerIdentity: () => undefined,
        },
        (res) => resolve(String(res.statusCode)),
      )
      req.on('error', () => resolve('refused'))
      req.end('<Notification xmlns="urn:ieee:std:2030.5:ns"><status>0</status></Notification>')
    })
    expect(answer).toBe('refused')
  }, 30_000)

  test('device mode registers the certificate itself; a v1.3 server is answered in the v1.3 namespace', async () => {
    const server = new CsipTestServer({ pki, version: 'v1.3' })
    server.aggregator = false
    server.rates = { fsa_list_poll_seconds: 1, derp_list_poll_seconds: 1 }
    server.createProgram(0)
    server.setDefaultControl({ opModExpLimW: 5000 })
    await server.start()
    cleanups.push(() => server.stop())
    const c = await client(server, {
      config: {
        mode: 'device',
        sites: { 'site-1': { nmi: '4103000009', meter: 'meter.m1', rated_w: 4000 } },
      },
    })
    await waitUntil(() => server.devices[0]?.nmi === '4103000009', 10_000, 'registration')
    const device = server.devices[0]!
    expect(device.lfdi).toBe(server.aggregatorLfdi) // the client certificate's LFDI
    expect(device.sfdi).toBe(String(sfdiFromLfdi(device.lfdi)))
    const connectionPoint = server.requests.find((r) => r.method === 'PUT' && r.path === '/edev/1/cp')!
    expect(connectionPoint.body).toContain('xmlns:csipaus="https://csipaus.org/ns/v1.3"')
    expect(c.client.status()).toMatchObject({ version: 'v1.3', mode: 'device' })
  }, 30_000)
})
