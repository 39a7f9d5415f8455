/**
 * The OCPI transport, server side: one HTTP listener (Bun.serve) under `/ocpi/`. For every
 * request, in this order: `X-Request-ID` and `X-Correlation-ID` are taken (or made, when the
 * caller sent none) and echoed on the answer; the route is found (404, 405); the credentials
 * token is checked where the route needs one (`Authorization: Token <base64>`, or the raw token
 * as OCPI 2.1.1-era parties send it; 401), a registration token (`CREDENTIALS_TOKEN_A`) only on
 * the credentials module; `OCPI-from-*` headers, when present, must name one of the caller's
 * own parties (403); the body is read within its bound (413) and parsed as JSON (400); then the
 * handler runs. Every answer is the OCPI envelope `{data, status_code, status_message,
 * timestamp}` with an HTTP status alongside: transport errors carry OCPI 2000, a handler's
 * failure 3000 (500), never its insides.
 */
import type { Server } from 'bun'
import type { Logger } from '../../data-plane/index.ts'
import { MAX_JSON_DEPTH, nestsDeeperThan } from '../../data-plane/json-depth.ts'
import { OcpiListenError } from './errors.ts'
import { formatDateTime, parseDateTime } from './v221.ts'

/** Who is calling, once the token is checked. */
export interface Caller {
  partner: string
  /** `registration`: a CREDENTIALS_TOKEN_A (credentials and versions only). */
  token: 'registration' | 'partner'
  /** The caller's own parties (from its credentials roles), for `OCPI-from-*` checks. */
  parties: readonly { country_code: string; party_id: string }[]
}

export interface OcpiRequest {
  method: string
  url: URL
  /** Path segments after the route's base (decoded). */
  segments: string[]
  query: URLSearchParams
  /** Parsed JSON; undefined without a body. */
  body: unknown
  caller: Caller | undefined
  requestId: string
  correlationId: string
  headers: Headers
}

export interface OcpiReply {
  /** OCPI status code (1000 success, 2xxx client errors, 3xxx server errors). */
  code: number
  /** HTTP status (default 200). */
  http?: number
  message?: string
  /** The `data` field; omitted when undefined. */
  data?: unknown
  headers?: Record<string, string>
}

export type RouteAccess = 'open' | 'registration' | 'partner'

export interface Route {
  /** Path under the listener, e.g. `/ocpi/cpo/2.2.1/locations`; longer bases win. */
  base: string
  access: RouteAccess
  /** Functional modules carry the routing headers (`OCPI-from-*`, `OCPI-to-*`). */
  functional: boolean
  handle(request: OcpiRequest): Promise<OcpiReply>
}

export interface OcpiServerInit {
  host: string
  port: number
  maxBodyBytes: number
  /** Our own party, for the routing headers of answers. */
  party: { country_code: string; party_id: string }
}

export interface OcpiServerComponents {
  logger: Logger
  /** Look a credentials token up (the plugin keeps only hashes of the tokens it checks). */
  authenticate(token: string): Promise<Caller | undefined>
  /** Count requests and refusals (metrics). */
  onRequest?(outcome: 'ok' | 'refused' | 'error'): void
}

export const ok = (data?: unknown, extra: Omit<OcpiReply, 'code' | 'data'> = {}): OcpiReply => ({
  code: 1000,
  ...(data === undefined ? {} : { data }),
  ...extra,
})

export const fail = (http: number, code: number, message: string, data?: unknown): OcpiReply => ({
  code,
  http,
  message,
  ...(data === undefined ? {} : { data }),
})

/** The envelope every OCPI answer has. */
export function envelope(reply: OcpiReply, now = Date.now()): Record<string, unknown> {
  return {
    ...(reply.data === undefined ? {} : { data: reply.data }),
    status_code: reply.code,
    ...(reply.message === undefined ? {} : { status_message: reply.message }),
    timestamp: formatDateTime(now),
  }
}

const PRINTABLE_TOKEN = /^[\x21-\x7e]{1,1024}$/

/**
 * The token of `Authorization: Token <x>`: `<x>` Base64-decoded as OCPI 2.2.1 wants it, and `<x>`
 * as it is (2.1.1 and early 2.2 parties did not encode). Both are candidates; the decoded one
 * first. Undefined without a Token header.
 */
export function tokenCandidates(header: string | null): string[] | undefined {
  if (!header) return undefined
  const match = /^Token\s+(\S+)\s*$/i.exec(header)
  if (!match) return undefined
  const raw = match[1]!
  const candidates: string[] = []
  if (/^[A-Za-z0-9+/]+={0,2}$/.test(raw) && raw.length % 4 === 0) {
    const decoded = Buffer.from(raw, 'base64').toString('utf8').replace(/\n$/, '')
    if (PRINTABLE_TOKEN.test(decoded)) candidates.push(decoded)
  }
  if (PRINTABLE_TOKEN.test(raw) && !candidates.includes(raw)) candidates.push(raw)
  return candidates
}

const ID_HEADER = /^[\x21-\x7e]{1,100}$/

/** Longest a request may take to arrive whole (a slowloris defence); bodies are small here. */
export const REQUEST_TIMEOUT_SECONDS = 15

export class OcpiServer {
  private server: Server<unknown> | undefined
  private routes: Route[] = []

  constructor(
    private readonly init: OcpiServerInit,
    private readonly components: OcpiServerComponents,
  ) {}

  get address(): { host: string; port: number } | undefined {
    return this.server ? { host: this.init.host, port: this.server.port ?? this.init.port } : undefined
  }

  /** Add routes (before or after start). */
  mount(routes: readonly Route[]): void {
    this.routes = [...this.routes, ...routes].sort((a, b) => b.base.length - a.base.length)
  }

  async start(options: { signal?: AbortSignal } = {}): Promise<void> {
    if (this.server) return
    options.signal?.throwIfAborted()
    try {
      this.server = Bun.serve({
        hostname: this.init.host,
        port: this.init.port,
        // Bun refuses far larger bodies itself; up to here the transport answers with OCPI 2000.
        maxRequestBodySize: this.init.maxBodyBytes * 2 + 65_536,
        // Seconds from a request's first byte to its last body byte, and for an idle kept-alive
        // connection; an unfinished request head is closed by Bun after about 10 s.
        idleTimeout: REQUEST_TIMEOUT_SECONDS,
        fetch: (request) => this.respond(request),
        error: (error) => {
          this.components.logger.error({ err: error.message }, 'ocpi request failed')
          return this.answer(fail(500, 3000, 'internal error'), undefined, undefined)
        },
      })
    } catch (error) {
      throw new OcpiListenError(
        `cannot listen on ${this.init.host}:${this.init.port}: ${(error as Error).message}`,
        { cause: error },
      )
    }
  }

  async stop(): Promise<void> {
    const server = this.server
    this.server = undefined
    await server?.stop(true)
  }

  private answer(
    reply: OcpiReply,
    ids: { requestId: string; correlationId: string } | undefined,
    routing: { to?: { country_code: string; party_id: string } } | undefined,
  ): Response {
    const headers: Record<string, string> = { 'content-type': 'application/json', ...reply.headers }
    if (ids) {
      headers['x-request-id'] = ids.requestId
      headers['x-correlation-id'] = ids.correlationId
    }
    if (routing) {
      headers['ocpi-from-country-code'] = this.init.party.country_code
      headers['ocpi-from-party-id'] = this.init.party.party_id
      if (routing.to) {
        headers['ocpi-to-country-code'] = routing.to.country_code
        headers['ocpi-to-party-id'] = routing.to.party_id
      }
    }
    if (reply.http === 401) headers['www-authenticate'] = 'Token'
    return new Response(JSON.stringify(envelope(reply)), { status: reply.http ?? 200, headers })
  }

  private async respond(request: Request): Promise<Response> {
    const given = (name: string) => {
      const value = request.headers.get(name)
      return value !== null && ID_HEADER.test(value) ? value : undefined
    }
    const requestId = given('x-request-id') ?? crypto.randomUUID()
    const ids = { requestId, correlationId: given('x-correlation-id') ?? crypto.randomUUID() }
    const url = new URL(request.url)
    const refuse = (reply: OcpiReply): Response => {
      this.components.onRequest?.('refused')
      return this.answer(reply, ids, undefined)
    }
    const route = this.routes.find(
      (candidate) => url.pathname === candidate.base || url.pathname.startsWith(`${candidate.base}/`),
    )
    if (!route) return refuse(fail(404, 2000, `no OCPI endpoint at ${url.pathname.slice(0, 200)}`))
    let segments: string[]
    try {
      segments = url.pathname
        .slice(route.base.length)
        .split('/')
        .filter((segment) => segment !== '')
        .map((segment) => decodeURIComponent(segment))
    } catch {
      return refuse(fail(400, 2001, 'malformed percent-encoding in the path'))
    }

    let caller: Caller | undefined
    if (route.access !== 'open') {
      const candidates = tokenCandidates(request.headers.get('authorization'))
      if (!candidates)
        return refuse(fail(401, 2000, 'an Authorization: Token <credentials token> header is required'))
      for (const candidate of candidates) {
        caller = await this.components.authenticate(candidate)
        if (caller) break
      }
      if (!caller) return refuse(fail(401, 2000, 'unknown credentials token'))
      if (caller.token === 'registration' && route.access !== 'registration')
        return refuse(fail(401, 2000, 'a registration token (A) is valid on credentials and versions only'))
      const fromCountry = request.headers.get('ocpi-from-country-code')
      const fromParty = request.headers.get('ocpi-from-party-id')
      if (
        route.functional &&
        fromCountry &&
        fromParty &&
        !caller.parties.some(
          (party) =>
            party.country_code.toUpperCase() === fromCountry.toUpperCase() &&
            party.party_id.toUpperCase() === fromParty.toUpperCase(),
        )
      ) {
        return refuse(fail(403, 2000, `OCPI-from ${fromCountry}/${fromParty} is not one of your parties`))
      }
    }

    let body: unknown
    if (request.method === 'POST' || request.method === 'PUT' || request.method === 'PATCH') {
      const read = await readBody(request, this.init.maxBodyBytes)
      if (read === 'too-large')
        return refuse(fail(413, 2000, `the body is larger than ${this.init.maxBodyBytes} bytes`))
      if (read.length > 0) {
        const text = new TextDecoder().decode(read)
        if (nestsDeeperThan(text, MAX_JSON_DEPTH))
          return refuse(fail(400, 2000, `the body nests deeper than ${MAX_JSON_DEPTH} levels`))
        try {
          body = JSON.parse(text)
        } catch {
          return refuse(fail(400, 2000, 'the body is not valid JSON'))
        }
      }
    }
    const to = caller?.parties[0]
    const headerFrom =
      request.headers.get('ocpi-from-country-code') && request.headers.get('ocpi-from-party-id')
        ? {
            country_code: request.headers.get('ocpi-from-country-code')!,
            party_id: request.headers.get('ocpi-from-party-id')!,
          }
        : to
    try {
      const reply = await route.handle({
        method: request.method,
        url,
        segments,
        query: url.searchParams,
        body,
        caller,
        requestId: ids.requestId,
        correlationId: ids.correlationId,
        headers: request.headers,
      })
      this.components.onRequest?.(reply.code === 1000 ? 'ok' : 'refused')
      return this.answer(
        reply,
        ids,
        route.functional ? { ...(headerFrom ? { to: headerFrom } : {}) } : undefined,
      )
    } catch (error) {
      this.components.onRequest?.('error')
      this.components.logger.error(
        { err: (error as Error).message, path: url.pathname, method: request.method },
        'ocpi handler failed',
      )
      return this.answer(fail(500, 3000, 'the request could not be processed'), ids, undefined)
    }
  }
}

/** Read at most `limit` bytes of a body. */
async function readBody(request: Request, limit: number): Promise<Uint8Array | 'too-large'> {
  const declared = Number(request.headers.get('content-length') ?? Number.NaN)
  if (Number.isFinite(declared) && declared > limit) return 'too-large'
  if (!request.body) return new Uint8Array(0)
  const chunks: Uint8Array[] = []
  let size = 0
  const reader = request.body.getReader()
  while (true) {
    const { value, done } = await reader.read()
    if (done) break
    size += value.byteLength
    if (size > limit) {
      await reader.cancel().catch(() => {})
      return 'too-large'
    }
    chunks.push(value)
  }
  const out = new Uint8Array(size)
  let offset = 0
  for (const chunk of chunks) {
    out.set(chunk, offset)
    offset += chunk.byteLength
  }
  return out
}

/** A list as one page of a paginated GET: filters, `X-Total-Count`, `X-Limit`, `Link` next. */
export function paginate<T>(
  items: readonly T[],
  request: OcpiRequest,
  options: {
    maxLimit: number
    /** epoch ms an item was last updated (date_from inclusive, date_to exclusive). */
    updated: (item: T) => number
    /** The public URL of this list (the Link header carries it with the next offset). */
    publicUrl: string
  },
): OcpiReply {
  const query = request.query
  const integer = (name: string, min: number): number | undefined | 'invalid' => {
    const value = query.get(name)
    if (value === null || value === '') return undefined
    if (!/^\d{1,9}$/.test(value)) return 'invalid'
    const number = Number(value)
    return number < min ? 'invalid' : number
  }
  const date = (name: string): number | undefined | 'invalid' => {
    const value = query.get(name)
    if (value === null || value === '') return undefined
    return parseDateTime(value) ?? 'invalid'
  }
  const offset = integer('offset', 0)
  const limit = integer('limit', 1)
  const from = date('date_from')
  const to = date('date_to')
  for (const [name, value] of Object.entries({ offset, limit, date_from: from, date_to: to })) {
    if (value === 'invalid') return fail(200, 2001, `invalid ${name}: '${query.get(name)?.slice(0, 40)}'`)
  }
  const start = (offset as number | undefined) ?? 0
  const size = Math.min((limit as number | undefined) ?? options.maxLimit, options.maxLimit)
  const matching = items.filter((item) => {
    const t = options.updated(item)
    return (from === undefined || t >= (from as number)) && (to === undefined || t < (to as number))
  })
  const page = matching.slice(start, start + size)
  const headers: Record<string, string> = {
    'x-total-count': String(matching.length),
    'x-limit': String(size),
  }
  if (start + size < matching.length) {
    const next = new URL(options.publicUrl)
    for (const name of ['date_from', 'date_to']) {
      const value = query.get(name)
      if (value) next.searchParams.set(name, value)
    }
    next.searchParams.set('offset', String(start + size))
    next.searchParams.set('limit', String(size))
    headers.link = `<${next.toString()}>; rel="next"`
  }
  return ok(page, { headers })
}
