/**
 * A scripted OCPI 2.2.1 partner platform for tests: versions, version details and credentials
 * (both ways: it registers with a node, or the node registers with it), and a CPO locations
 * Sender with pagination over as many generated locations as asked, with faults on request
 * (an HTTP 503 or a cut connection at a given offset). It records every request it gets.
 */
import type { Server } from 'bun'
import { formatDateTime } from '../plugins/ocpi/index.ts'

export interface RecordedRequest {
  method: string
  path: string
  query: URLSearchParams
  authorization: string | null
  body: unknown
}

export interface FakePartnerOptions {
  role: 'CPO' | 'EMSP'
  countryCode: string
  partyId: string
  /** Generated locations served by the locations Sender (CPO only). */
  locations?: number
  /** Largest page the Sender serves. */
  pageLimit?: number
  /** Delay of each locations page, ms. */
  pageDelayMs?: number
}

export interface FakePartner {
  versionsUrl: string
  /** The token the node registers with (our CREDENTIALS_TOKEN_A). */
  readonly tokenA: string
  /** The token we issued the node after registration (C). */
  tokenForNode: string | undefined
  /** The token the node gave us to call it (B, or its C when we registered). */
  tokenFromNode: string | undefined
  readonly requests: RecordedRequest[]
  /** Offsets of the locations pages served (in order). */
  readonly offsets: number[]
  /** Answer the locations page at this offset with `fault` once. */
  failAt(offset: number, fault: '503' | 'cut'): void
  /** Register with a node: GET its versions and details, POST credentials with its token A. */
  registerWith(
    versionsUrl: string,
    tokenA: string,
  ): Promise<{ status: number; body: Record<string, unknown> }>
  /** A request to the node with the token it gave us. */
  call(
    method: string,
    url: string,
    options?: { body?: unknown; token?: string | null; raw?: string; headers?: Record<string, string> },
  ): Promise<{ status: number; headers: Headers; body: Record<string, unknown> }>
  stop(): Promise<void>
}

const b64 = (token: string) => Buffer.from(token).toString('base64')

export function fakeLocation(
  countryCode: string,
  partyId: string,
  index: number,
  base = Date.UTC(2026, 0, 1),
) {
  const id = `LOC${String(index).padStart(5, '0')}`
  return {
    country_code: countryCode,
    party_id: partyId,
    id,
    publish: true,
    address: `Street ${index}`,
    city: 'Berlin',
    country: 'DEU',
    coordinates: { latitude: '52.520008', longitude: '13.404954' },
    evses: [
      {
        uid: `${id}-E1`,
        evse_id: `DE*${partyId}*E${index}`,
        status: 'AVAILABLE',
        connectors: [
          {
            id: '1',
            standard: 'IEC_62196_T2',
            format: 'SOCKET',
            power_type: 'AC_3_PHASE',
            max_voltage: 230,
            max_amperage: 16,
            last_updated: formatDateTime(base + index * 1000),
          },
        ],
        last_updated: formatDateTime(base + index * 1000),
      },
    ],
    time_zone: 'Europe/Berlin',
    last_updated: formatDateTime(base + index * 1000),
  }
}

export async function startFakePartner(options: FakePartnerOptions): Promise<FakePartner> {
  const tokenA = `fake-A-${crypto.randomUUID()}`
  const requests: RecordedRequest[] = []
  const offsets: number[] = []
  const faults = new Map<number, '503' | 'cut'>()
  const locations = Array.from({ length: options.locations ?? 0 }, (_, i) =>
    fakeLocation(options.countryCode, options.partyId, i + 1),
  )
  const pageLimit = options.pageLimit ?? 100
  let server: Server<unknown> | undefined
  const partner: FakePartner = {
    versionsUrl: '',
    tokenA,
    tokenForNode: undefined,
    tokenFromNode: undefined,
    requests,
    offsets,
    failAt: (offset, fault) => {
      faults.set(offset, fault)
    },
    registerWith: async (versionsUrl, nodeTokenA) => {
      const versions = (await (
        await fetch(versionsUrl, { headers: { authorization: `Token ${b64(nodeTokenA)}` } })
      ).json()) as { data: { version: string; url: string }[] }
      const detailsUrl = versions.data.find((version) => version.version === '2.2.1')!.url
      const details = (await (
        await fetch(detailsUrl, { headers: { authorization: `Token ${b64(nodeTokenA)}` } })
      ).json()) as { data: { endpoints: { identifier: string; url: string }[] } }
      const credentialsUrl = details.data.endpoints.find(
        (endpoint) => endpoint.identifier === 'credentials',
      )!.url
      partner.tokenForNode = `fake-B-${crypto.randomUUID()}`
      const response = await fetch(credentialsUrl, {
        method: 'POST',
        headers: { authorization: `Token ${b64(nodeTokenA)}`, 'content-type': 'application/json' },
        body: JSON.stringify(credentials(partner.tokenForNode)),
      })
      const body = (await response.json()) as Record<string, unknown>
      const data = body.data as { token?: string } | undefined
      if (data?.token) partner.tokenFromNode = data.token
      return { status: response.status, body }
    },
    call: async (method, url, call = {}) => {
      const headers: Record<string, string> = { ...call.headers }
      const token = call.token === undefined ? partner.tokenFromNode : call.token
      if (token !== null && token !== undefined) headers.authorization = `Token ${b64(token)}`
      if (call.body !== undefined || call.raw !== undefined) headers['content-type'] = 'application/json'
      const response = await fetch(url, {
        method,
        headers,
        ...(call.raw !== undefined
          ? { body: call.raw }
          : call.body !== undefined
            ? { body: JSON.stringify(call.body) }
            : {}),
      })
      const text = await response.text()
      return { status: response.status, headers: response.headers, body: text ? JSON.parse(text) : {} }
    },
    stop: async () => {
      await server?.stop(true)
    },
  }

  const credentials = (token: string) => ({
    token,
    url: partner.versionsUrl,
    roles: [
      {
        role: options.role,
        party_id: options.partyId,
        country_code: options.countryCode,
        business_details: { name: `Fake ${options.role}` },
      },
    ],
  })
  const envelope = (data: unknown, status = 1000, message?: string) =>
    Response.json({
      ...(data === undefined ? {} : { data }),
      status_code: status,
      ...(message ? { status_message: message } : {}),
      timestamp: formatDateTime(Date.now()),
    })
  /** Tokens we accept: A until registration, then the node's one (C we issued or B it gave). */
  const authorised = (header: string | null) => {
    const raw = /^Token (\S+)$/.exec(header ?? '')?.[1]
    if (!raw) return false
    const token = Buffer.from(raw, 'base64').toString('utf8')
    return token === tokenA || token === partner.tokenForNode || raw === tokenA
  }

  server = Bun.serve({
    hostname: '127.0.0.1',
    port: 0,
    fetch: async (request, self) => {
      const url = new URL(request.url)
      const text = request.method === 'GET' ? '' : await request.text()
      const body = text ? JSON.parse(text) : undefined
      requests.push({
        method: request.method,
        path: url.pathname,
        query: url.searchParams,
        authorization: request.headers.get('authorization'),
        body,
      })
      if (!authorised(request.headers.get('authorization')))
        return Response.json({ status_code: 2000, timestamp: formatDateTime(Date.now()) }, { status: 401 })
      const base = `http://127.0.0.1:${self.port}/ocpi`
      if (url.pathname === '/ocpi/versions') return envelope([{ version: '2.2.1', url: `${base}/2.2.1` }])
      if (url.pathname === '/ocpi/2.2.1') {
        const endpoints = [{ identifier: 'credentials', role: 'SENDER', url: `${base}/2.2.1/credentials` }]
        if (options.role === 'CPO')
          endpoints.push({ identifier: 'locations', role: 'SENDER', url: `${base}/cpo/2.2.1/locations` })
        else
          endpoints.push({ identifier: 'locations', role: 'RECEIVER', url: `${base}/emsp/2.2.1/locations` })
        return envelope({ version: '2.2.1', endpoints })
      }
      if (url.pathname === '/ocpi/2.2.1/credentials' && request.method === 'POST') {
        // The node registers with us: it gave us its token B; we issue C.
        partner.tokenFromNode = (body as { token: string }).token
        partner.tokenForNode = `fake-C-${crypto.randomUUID()}`
        return envelope(credentials(partner.tokenForNode))
      }
      if (url.pathname === '/ocpi/2.2.1/credentials' && request.method === 'DELETE')
        return envelope(undefined)
      if (url.pathname === '/ocpi/cpo/2.2.1/locations' && request.method === 'GET') {
        const offset = Number(url.searchParams.get('offset') ?? 0)
        const limit = Math.min(Number(url.searchParams.get('limit') ?? pageLimit), pageLimit)
        offsets.push(offset)
        const fault = faults.get(offset)
        if (fault) {
          faults.delete(offset)
          if (fault === 'cut') {
            self.timeout(request, 1)
            await Bun.sleep(3_000)
          }
          return Response.json({ status_code: 3000, timestamp: formatDateTime(Date.now()) }, { status: 503 })
        }
        if (options.pageDelayMs) await Bun.sleep(options.pageDelayMs)
        const page = locations.slice(offset, offset + limit)
        const headers: Record<string, string> = {
          'x-total-count': String(locations.length),
          'x-limit': String(limit),
        }
        if (offset + limit < locations.length)
          headers.link = `<${base}/cpo/2.2.1/locations?offset=${offset + limit}&limit=${limit}>; rel="next"`
        const response = envelope(page)
        for (const [name, value] of Object.entries(headers)) response.headers.set(name, value)
        return response
      }
      // Pushes to us as an eMSP are accepted and recorded.
      if (url.pathname.startsWith('/ocpi/emsp/')) return envelope(undefined)
      return Response.json({ status_code: 2000, timestamp: formatDateTime(Date.now()) }, { status: 404 })
    },
  })
  partner.versionsUrl = `http://127.0.0.1:${server.port}/ocpi/versions`
  return partner
}
