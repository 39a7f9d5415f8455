/**
 * OCPI transport and format against a real node (roles CPO and eMSP) with a scripted partner
 * platform: the envelope and request ids, credentials tokens in both header forms, the
 * specification's error cases each with its OCPI status (wrong token, unknown object,
 * malformed JSON, invalid objects, a partner touching another's objects, oversized bodies),
 * CDRs posted either way, the CPO's pagination, and credentials update and unregistration.
 */
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { freePort } from '../data-plane/index.ts'
import { api } from './helpers/federation.ts'
import { cleanupAll, type RunningNode, startNode, waitFor } from './helpers/node-process.ts'
import { type FakePartner, fakeLocation, startFakePartner } from './ocpi-partner.ts'

let node: RunningNode
let partner: FakePartner
let base: string
const STATIONS = 25

const b64 = (token: string) => Buffer.from(token).toString('base64')
const action = <T>(name: string, input: Record<string, unknown> = {}) =>
  api<{ result: T }>(node, 'POST', `/v1/plugins/ocpi/actions/${name}`, input).then((answer) => answer.result)

beforeAll(async () => {
  const port = await freePort()
  base = `http://127.0.0.1:${port}/ocpi`
  node = await startNode({
    config: [
      'org = "OEN"',
      '[plugins.ocpi]',
      'enabled = true',
      `listen = "127.0.0.1:${port}"`,
      'country_code = "NL"',
      'party_id = "OEN"',
      'roles = ["cpo", "emsp"]',
      'max_body_bytes = 65536',
      'page_limit = 10',
      'pull_interval = 0',
      '[plugins.ocpi.location]',
      'address = "Stationsplein 1"',
      'city = "Utrecht"',
      'country = "NLD"',
      'latitude = "52.089444"',
      'longitude = "5.110278"',
      'time_zone = "Europe/Amsterdam"',
      '[plugins.ocpi.tokens.T1]',
      'contract_id = "NL-OEN-C00001"',
    ].join('\n'),
  })
  for (let i = 1; i <= STATIONS; i++) {
    await api(node, 'PUT', `/v1/resources/station/S${i}`, { name: `Station ${i}` })
    await api(node, 'PUT', `/v1/resources/evse/S${i}-1`, { attrs: { station: `S${i}`, evse: 1 } })
  }
  partner = await startFakePartner({ role: 'EMSP', countryCode: 'DE', partyId: 'MSP' })
  const { token } = await action<{ token: string }>('token_create', { name: 'fake' })
  const registered = await partner.registerWith(`${base}/versions`, token)
  expect(registered.body.status_code).toBe(1000)
  await waitFor(
    async () => {
      const { body } = await partner.call('GET', `${base}/cpo/2.2.1/locations`)
      return (body.data as unknown[] | undefined)?.length === 10
    },
    15_000,
    'the stations as locations',
  )
}, 60_000)

afterAll(async () => {
  await partner?.stop()
  await cleanupAll()
})

describe('transport and format', () => {
  test('versions and version details: open, in the envelope, request and correlation ids echoed or made', async () => {
    const response = await fetch(`${base}/versions`, {
      headers: { 'x-request-id': 'req-1', 'x-correlation-id': 'corr-1' },
    })
    expect(response.status).toBe(200)
    expect(response.headers.get('x-request-id')).toBe('req-1')
    expect(response.headers.get('x-correlation-id')).toBe('corr-1')
    const body = (await response.json()) as Record<string, unknown>
    expect(body).toMatchObject({ status_code: 1000, data: [{ version: '2.2.1', url: `${base}/2.2.1` }] })
    expect(body.timestamp).toMatch(/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$/)

    const bare = await fetch(`${base}/2.2.1`)
    expect(bare.headers.get('x-request-id')).toMatch(/^[0-9a-f-]{36}$/)
    expect(bare.headers.get('x-correlation-id')).toMatch(/^[0-9a-f-]{36}$/)
    const details = (await bare.json()) as { data: { endpoints: { identifier: string; role: string }[] } }
    const modules = details.data.endpoints.map((endpoint) => `${endpoint.identifier}:${endpoint.role}`)
    expect(modules).toEqual(
      expect.arrayContaining([
        'credentials:SENDER',
        'locations:SENDER',
        'locations:RECEIVER',
        'sessions:SENDER',
        'sessions:RECEIVER',
        'cdrs:SENDER',
        'cdrs:RECEIVER',
        'tokens:RECEIVER',
        'tokens:SENDER',
        'commands:RECEIVER',
        'commands:SENDER',
        'chargingprofiles:RECEIVER',
        'tariffs:SENDER',
      ]),
    )
  })

  test('credentials tokens: Base64 and raw (2.1.1-era) both work; missing, unknown or a registration token on a module → 401', async () => {
    const url = `${base}/cpo/2.2.1/locations?limit=1`
    const token = partner.tokenFromNode!
    const encoded = await fetch(url, { headers: { authorization: `Token ${b64(token)}` } })
    expect(encoded.status).toBe(200)
    const raw = await fetch(url, { headers: { authorization: `Token ${token}` } })
    expect(raw.status).toBe(200)
    // Routing headers on functional modules: from us, to the caller.
    expect(raw.headers.get('ocpi-from-country-code')).toBe('NL')
    expect(raw.headers.get('ocpi-from-party-id')).toBe('OEN')
    expect(raw.headers.get('ocpi-to-party-id')).toBe('MSP')
    for (const authorization of [undefined, 'Token bm9wZQ==', `Bearer ${token}`]) {
      const response = await fetch(url, { headers: authorization ? { authorization } : {} })
      expect(response.status).toBe(401)
      expect(((await response.json()) as { status_code: number }).status_code).toBe(2000)
      expect(response.headers.get('x-request-id')).toBeTruthy()
    }
    // A fresh registration token (A) is good for credentials only.
    const { token: tokenA } = await action<{ token: string }>('token_create', { name: 'someone' })
    const withA = await fetch(url, { headers: { authorization: `Token ${b64(tokenA)}` } })
    expect(withA.status).toBe(401)
    const credentials = await fetch(`${base}/2.2.1/credentials`, {
      headers: { authorization: `Token ${b64(tokenA)}` },
    })
    expect(credentials.status).toBe(200)
    expect(((await credentials.json()) as { data: { token: string } }).data.token).toBe(tokenA)
  })

  test('the error cases get their OCPI status: unknown objects, malformed JSON, invalid objects, oversized bodies, unknown endpoints', async () => {
    const unknownLocation = await partner.call('GET', `${base}/cpo/2.2.1/locations/NOPE`)
    expect([unknownLocation.status, unknownLocation.body.status_code]).toEqual([404, 2003])
    const unknownEvse = await partner.call('GET', `${base}/cpo/2.2.1/locations/S1/NOPE`)
    expect([unknownEvse.status, unknownEvse.body.status_code]).toEqual([404, 2003])
    const unknownToken = await partner.call('GET', `${base}/cpo/2.2.1/tokens/DE/MSP/NOPE`)
    expect([unknownToken.status, unknownToken.body.status_code]).toEqual([404, 2004])
    const authorizeUnknown = await partner.call('POST', `${base}/emsp/2.2.1/tokens/NOPE/authorize`)
    expect([authorizeUnknown.status, authorizeUnknown.body.status_code]).toEqual([404, 2004])

    const malformed = await partner.call('PUT', `${base}/emsp/2.2.1/locations/DE/MSP/L1`, { raw: '{"id": ' })
    expect([malformed.status, malformed.body.status_code]).toEqual([400, 2000])

    const invalid = await partner.call('PUT', `${base}/emsp/2.2.1/locations/DE/MSP/L1`, {
      body: { ...fakeLocation('DE', 'MSP', 1), id: 'L1', coordinates: { latitude: 'north' } },
    })
    expect([invalid.status, invalid.body.status_code]).toEqual([200, 2001])
    expect(String(invalid.body.status_message)).toContain('coordinates.latitude')
    const mismatch = await partner.call('PUT', `${base}/emsp/2.2.1/locations/DE/MSP/L1`, {
      body: fakeLocation('DE', 'MSP', 2),
    })
    expect(mismatch.body.status_code).toBe(2001)
    const good = await partner.call('PUT', `${base}/emsp/2.2.1/locations/DE/MSP/LOC00001`, {
      body: fakeLocation('DE', 'MSP', 1),
    })
    expect([good.status, good.body.status_code]).toEqual([201, 1000])
    const noLastUpdated = await partner.call(
      'PATCH',
      `${base}/emsp/2.2.1/locations/DE/MSP/LOC00001/LOC00001-E1`,
      {
        body: { status: 'CHARGING' },
      },
    )
    expect(noLastUpdated.body.status_code).toBe(2001)
    expect(String(noLastUpdated.body.status_message)).toContain('last_updated')
    const patch = await partner.call('PATCH', `${base}/emsp/2.2.1/locations/DE/MSP/LOC00001/LOC00001-E1`, {
      body: { status: 'CHARGING', last_updated: '2026-06-01T10:00:00Z' },
    })
    expect(patch.body.status_code).toBe(1000)
    const patchUnknown = await partner.call('PATCH', `${base}/emsp/2.2.1/locations/DE/MSP/NOPE/E1`, {
      body: { status: 'CHARGING', last_updated: '2026-06-01T10:00:00Z' },
    })
    expect([patchUnknown.status, patchUnknown.body.status_code]).toEqual([404, 2003])
    const evse = await partner.call('GET', `${base}/emsp/2.2.1/locations/DE/MSP/LOC00001/LOC00001-E1`)
    expect(evse.body.data).toMatchObject({
      uid: 'LOC00001-E1',
      status: 'CHARGING',
      last_updated: '2026-06-01T10:00:00Z',
    })
    // The EVSE became standing data with its status.
    const resource = await api<{ resource: { attrs: Record<string, unknown> } }>(
      node,
      'GET',
      '/v1/resources/evse/DE_MSP_LOC00001-1',
    )
    expect(resource.resource.attrs).toMatchObject({ status: 'CHARGING', station: 'DE_MSP_LOC00001', evse: 1 })

    const big = JSON.stringify({ ...fakeLocation('DE', 'MSP', 3), name: 'x'.repeat(70_000) })
    const oversized = await partner.call('PUT', `${base}/emsp/2.2.1/locations/DE/MSP/LOC00003`, { raw: big })
    expect([oversized.status, oversized.body.status_code]).toEqual([413, 2000])

    const nowhere = await partner.call('GET', `${base}/emsp/2.2.1/nothing`)
    expect([nowhere.status, nowhere.body.status_code]).toEqual([404, 2000])
    const wrongMethod = await partner.call('DELETE', `${base}/cpo/2.2.1/locations`)
    expect([wrongMethod.status, wrongMethod.body.status_code]).toEqual([405, 2000])
  })

  test('a partner sees and changes only its own objects', async () => {
    const foreignPut = await partner.call('PUT', `${base}/emsp/2.2.1/locations/BE/BEC/LOC1`, {
      body: fakeLocation('BE', 'BEC', 1),
    })
    expect([foreignPut.status, foreignPut.body.status_code]).toEqual([404, 2000])
    const foreignGet = await partner.call('GET', `${base}/emsp/2.2.1/locations/NL/OEN/LOC00001`)
    expect([foreignGet.status, foreignGet.body.status_code]).toEqual([404, 2003])
    const foreignToken = await partner.call('PUT', `${base}/cpo/2.2.1/tokens/NL/TNM/012345678`, {
      body: {
        country_code: 'NL',
        party_id: 'TNM',
        uid: '012345678',
        type: 'RFID',
        contract_id: 'NL-TNM-1',
        issuer: 'TNM',
        valid: true,
        whitelist: 'ALLOWED',
        last_updated: '2026-01-01T00:00:00Z',
      },
    })
    expect([foreignToken.status, foreignToken.body.status_code]).toEqual([404, 2000])
    const ownToken = await partner.call('PUT', `${base}/cpo/2.2.1/tokens/DE/MSP/012345678`, {
      body: {
        country_code: 'DE',
        party_id: 'MSP',
        uid: '012345678',
        type: 'RFID',
        contract_id: 'DE-MSP-1',
        issuer: 'MSP',
        valid: true,
        whitelist: 'ALLOWED',
        last_updated: '2026-01-01T00:00:00Z',
      },
    })
    expect([ownToken.status, ownToken.body.status_code]).toEqual([201, 1000])
    const tokenPatch = await partner.call('PATCH', `${base}/cpo/2.2.1/tokens/DE/MSP/012345678`, {
      body: { valid: false, last_updated: '2026-01-02T00:00:00Z' },
    })
    expect(tokenPatch.body.status_code).toBe(1000)
    const token = await partner.call('GET', `${base}/cpo/2.2.1/tokens/DE/MSP/012345678?type=RFID`)
    expect(token.body.data).toMatchObject({ valid: false, contract_id: 'DE-MSP-1' })
    // Claiming another party in the routing headers.
    const spoofed = await partner.call('GET', `${base}/cpo/2.2.1/locations`, {
      headers: { 'ocpi-from-country-code': 'BE', 'ocpi-from-party-id': 'BEC' },
    })
    expect([spoofed.status, spoofed.body.status_code]).toEqual([403, 2000])
    // Sessions and CDRs of the CPO role: only those of the caller's tokens (none yet).
    const sessions = await partner.call('GET', `${base}/cpo/2.2.1/sessions`)
    expect(sessions.body).toMatchObject({ status_code: 1000, data: [] })
    // A command with another party's token is refused.
    const start = await partner.call('POST', `${base}/cpo/2.2.1/commands/START_SESSION`, {
      body: {
        response_url: `${partner.versionsUrl.replace('/versions', '')}/emsp/2.2.1/commands/START_SESSION/1`,
        token: { ...(token.body.data as object), country_code: 'NL', party_id: 'TNM' },
        location_id: 'S1',
      },
    })
    expect(start.body).toMatchObject({ status_code: 1000, data: { result: 'REJECTED' } })
    // …and a response URL off the partner's platform too (no requests elsewhere on its behalf).
    const elsewhere = await partner.call('POST', `${base}/cpo/2.2.1/commands/STOP_SESSION`, {
      body: { response_url: 'http://192.0.2.1/steal', session_id: 'x' },
    })
    expect(elsewhere.body.status_code).toBe(2001)
    const unknownLocation = await partner.call('POST', `${base}/cpo/2.2.1/commands/UNLOCK_CONNECTOR`, {
      body: {
        response_url: `${partner.versionsUrl.replace('/versions', '')}/emsp/2.2.1/commands/UNLOCK_CONNECTOR/2`,
        location_id: 'NOPE',
        evse_uid: 'X',
        connector_id: '1',
      },
    })
    expect(unknownLocation.body).toMatchObject({ status_code: 2003, data: { result: 'REJECTED' } })
  })

  test('CDRs: POSTed to the collection URL or a URL with their id; the same again is fine, a changed one refused', async () => {
    const cdr = (id: string, kwh: number) => ({
      country_code: 'DE',
      party_id: 'MSP',
      id,
      start_date_time: '2026-02-01T10:00:00Z',
      end_date_time: '2026-02-01T11:00:00Z',
      cdr_token: {
        country_code: 'NL',
        party_id: 'OEN',
        uid: 'T1',
        type: 'RFID',
        contract_id: 'NL-OEN-C00001',
      },
      auth_method: 'WHITELIST',
      cdr_location: {
        id: 'LOC00001',
        address: 'Street 1',
        city: 'Berlin',
        country: 'DEU',
        coordinates: { latitude: '52.520008', longitude: '13.404954' },
        evse_uid: 'LOC00001-E1',
        evse_id: 'DE*MSP*E1',
        connector_id: '1',
        connector_standard: 'IEC_62196_T2',
        connector_format: 'SOCKET',
        connector_power_type: 'AC_3_PHASE',
      },
      currency: 'EUR',
      charging_periods: [
        { start_date_time: '2026-02-01T10:00:00Z', dimensions: [{ type: 'ENERGY', volume: kwh }] },
      ],
      total_cost: { excl_vat: 3.5, incl_vat: 4.24 },
      total_energy: kwh,
      total_time: 1,
      last_updated: '2026-02-01T11:00:05Z',
      unknown_field: 'ignored',
    })
    const first = await partner.call('POST', `${base}/emsp/2.2.1/cdrs`, { body: cdr('CDR-1', 10) })
    expect([first.status, first.body.status_code]).toEqual([201, 1000])
    const location = first.headers.get('location')!
    expect(location).toBe(`${base}/emsp/2.2.1/cdrs/DE/MSP/CDR-1`)
    const fetched = await partner.call('GET', location)
    expect(fetched.body.data).toMatchObject({ id: 'CDR-1', total_energy: 10 })
    expect(fetched.body.data).not.toHaveProperty('unknown_field')
    const withId = await partner.call('POST', `${base}/emsp/2.2.1/cdrs/CDR-2`, { body: cdr('CDR-2', 20) })
    expect([withId.status, withId.body.status_code]).toEqual([201, 1000])
    const again = await partner.call('POST', `${base}/emsp/2.2.1/cdrs`, { body: cdr('CDR-1', 10) })
    expect([again.status, again.body.status_code]).toEqual([200, 1000])
    const changed = await partner.call('POST', `${base}/emsp/2.2.1/cdrs`, { body: cdr('CDR-1', 11) })
    expect(changed.body.status_code).toBe(2001)
    const wrongId = await partner.call('POST', `${base}/emsp/2.2.1/cdrs/CDR-9`, { body: cdr('CDR-3', 1) })
    expect(wrongId.body.status_code).toBe(2001)
    const foreign = await partner.call('POST', `${base}/emsp/2.2.1/cdrs`, {
      body: { ...cdr('CDR-4', 1), country_code: 'BE', party_id: 'BEC' },
    })
    expect([foreign.status, foreign.body.status_code]).toEqual([404, 2000])
  })

  test('the CPO paginates: X-Total-Count, X-Limit, Link to the next page with the filters, bad parameters 2001', async () => {
    const seen: string[] = []
    let url: string | undefined = `${base}/cpo/2.2.1/locations?limit=7`
    let pages = 0
    while (url) {
      const page = await partner.call('GET', url)
      pages += 1
      expect(page.headers.get('x-total-count')).toBe(String(STATIONS))
      expect(page.headers.get('x-limit')).toBe('7')
      for (const location of page.body.data as { id: string; evses: unknown[] }[]) {
        seen.push(location.id)
        expect(location.evses).toHaveLength(1)
      }
      url = /<([^>]+)>;\s*rel="next"/.exec(page.headers.get('link') ?? '')?.[1]
    }
    expect(pages).toBe(4)
    expect(new Set(seen).size).toBe(STATIONS)
    // The server caps a page at page_limit.
    const capped = await partner.call('GET', `${base}/cpo/2.2.1/locations?limit=500`)
    expect(capped.headers.get('x-limit')).toBe('10')
    expect(capped.headers.get('link')).toContain('offset=10&limit=10')
    // date_from keeps the filter in the next link; nothing after the far future.
    const future = await partner.call('GET', `${base}/cpo/2.2.1/locations?date_from=2099-01-01T00:00:00Z`)
    expect(future.body.data).toEqual([])
    expect(future.headers.get('x-total-count')).toBe('0')
    const filtered = await partner.call(
      'GET',
      `${base}/cpo/2.2.1/locations?date_from=2000-01-01T00:00:00Z&limit=5`,
    )
    expect(filtered.headers.get('link')).toContain('date_from=2000-01-01T00%3A00%3A00Z')
    for (const bad of ['offset=-1', 'limit=0', 'limit=ten', 'date_from=yesterday']) {
      const response = await partner.call('GET', `${base}/cpo/2.2.1/locations?${bad}`)
      expect(response.body.status_code).toBe(2001)
    }
    const one = await partner.call('GET', `${base}/cpo/2.2.1/locations/S7`)
    expect(one.body.data).toMatchObject({
      id: 'S7',
      country_code: 'NL',
      party_id: 'OEN',
      address: 'Stationsplein 1',
    })
  })

  test('credentials: a second POST is 405; PUT issues a new token; DELETE unregisters and the token stops working', async () => {
    const credentialsUrl = `${base}/2.2.1/credentials`
    const again = await partner.call('POST', credentialsUrl, {
      body: { token: 'x', url: partner.versionsUrl, roles: [] },
    })
    expect([again.status, again.body.status_code]).toEqual([405, 2000])
    const old = partner.tokenFromNode!
    const put = await partner.call('PUT', credentialsUrl, {
      body: {
        token: partner.tokenForNode,
        url: partner.versionsUrl,
        roles: [{ role: 'EMSP', party_id: 'MSP', country_code: 'DE', business_details: { name: 'Fake' } }],
      },
    })
    expect(put.body.status_code).toBe(1000)
    const renewed = (put.body.data as { token: string }).token
    expect(renewed).not.toBe(old)
    const withOld = await partner.call('GET', `${base}/cpo/2.2.1/locations`, { token: old })
    expect(withOld.status).toBe(401)
    partner.tokenFromNode = renewed
    const partners = await action<{ partners: { id: string; state: string; modules: string[] }[] }>(
      'partners',
    )
    expect(partners.partners.find((p) => p.id === 'fake')).toMatchObject({
      state: 'registered',
      modules: ['locations:receiver'],
    })
    const deleted = await partner.call('DELETE', credentialsUrl)
    expect(deleted.body.status_code).toBe(1000)
    const after = await partner.call('GET', `${base}/cpo/2.2.1/locations`)
    expect(after.status).toBe(401)
    const gone = await action<{ partners: { id: string }[] }>('partners')
    expect(gone.partners.map((p) => p.id)).not.toContain('fake')
  })
})
