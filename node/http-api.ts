/**
 * The node's HTTP API (ARCHITECTURE §9): health and metrics, telemetry and standing-data
 * ingest, and the admin endpoints the CLI and TUI use. Every endpoint needs a bearer token,
 * except health and metrics when asked from loopback. Bodies are bounded; bad input is answered
 * with a specific reason and never disturbs what was already accepted.
 */
import { createHash, timingSafeEqual } from 'node:crypto'
import type { Server } from 'bun'
import {
  type DataPlane,
  DataPlaneError,
  DecodeError,
  decodeCbor,
  isValidSubjectFilter,
  NotConnectedError,
  PublishError,
  parseResource,
  parseTelemetryRecord,
  type TelemetryRecord,
  ValidationError,
} from '../data-plane/index.ts'
import {
  AgreementExpiredError,
  AgreementFormatError,
  AgreementNotFoundError,
  AgreementStateError,
  type AuditLog,
  type Federation,
  FederationError,
  type Grant,
  PeerExistsError,
  parseGrant,
  parseGrantSpec,
  UnknownPeerError,
} from '../federation/index.ts'
import { PluginError, type PluginHost } from '../plugins/index.ts'
import { parseCard } from './card.ts'
import { CardError } from './errors.ts'
import type { Logger } from './logger.ts'
import type { NodeMetrics } from './metrics.ts'

export interface HttpApiInit {
  /** HOST:PORT; port 0 picks a free one. */
  listen: string
  maxBodyBytes: number
  adminToken: string
  ingestTokens: readonly string[]
}

export interface HealthReport {
  ready: boolean
  checks: Record<string, { ok: boolean; detail?: string }>
}

export interface HttpApiComponents {
  logger: Logger
  metrics: NodeMetrics
  dataPlane: () => DataPlane | undefined
  federation: () => Federation | undefined
  audit: () => AuditLog | undefined
  plugins: () => PluginHost | undefined
  health: () => Promise<HealthReport>
  status: () => Promise<unknown>
  card: () => unknown
}

/** Answer to POST /v1/telemetry. */
export interface IngestResult {
  accepted: number
  rejected: number
  errors: { index: number; reason: string }[]
}

const MAX_REPORTED_ERRORS = 1000
const JSON_HEADERS = { 'content-type': 'application/json' }

type Access = 'open-on-loopback' | 'ingest' | 'admin'
type Handler = (request: Request, params: string[], url: URL) => Promise<Response> | Response

interface Route {
  method: string
  pattern: RegExp
  name: string
  access: Access
  handler: Handler
}

export class HttpError extends Error {
  override name = 'HttpError'
  constructor(
    readonly status: number,
    readonly errorName: string,
    message: string,
  ) {
    super(message)
  }
}

function json(body: unknown, status = 200, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(body), { status, headers: { ...JSON_HEADERS, ...headers } })
}

function errorResponse(
  status: number,
  name: string,
  message: string,
  extra: Record<string, unknown> = {},
  headers: Record<string, string> = {},
): Response {
  const auth: Record<string, string> = status === 401 ? { 'www-authenticate': 'Bearer realm="oe-node"' } : {}
  return json({ error: name, message, ...extra }, status, { ...auth, ...headers })
}

const digest = (text: string): Buffer => createHash('sha256').update(text).digest()

function tokenMatches(given: string, expected: readonly Buffer[]): boolean {
  const candidate = digest(given)
  let match = false
  for (const token of expected) match = timingSafeEqual(candidate, token) || match
  return match
}

function isLoopback(address: string | undefined): boolean {
  if (!address) return false
  return address === '::1' || address.startsWith('127.') || address.startsWith('::ffff:127.')
}

export function parseListen(listen: string): { hostname: string; port: number } {
  const index = listen.lastIndexOf(':')
  const hostname = listen.slice(0, index).replace(/^\[|\]$/g, '')
  return { hostname, port: Number(listen.slice(index + 1)) }
}

/** Read a body up to `limit` bytes; more is a 413. */
async function readBody(request: Request, limit: number): Promise<Uint8Array> {
  const declared = Number(request.headers.get('content-length') ?? Number.NaN)
  if (Number.isFinite(declared) && declared > limit) {
    throw new HttpError(413, 'PayloadTooLarge', `the body has ${declared} bytes; the limit is ${limit}`)
  }
  if (!request.body) return new Uint8Array(0)
  const chunks: Uint8Array[] = []
  let total = 0
  for await (const chunk of request.body) {
    total += chunk.byteLength
    if (total > limit)
      throw new HttpError(413, 'PayloadTooLarge', `the body is larger than the limit of ${limit} bytes`)
    chunks.push(chunk)
  }
  if (chunks.length === 1) return chunks[0]!
  const body = new Uint8Array(total)
  let offset = 0
  for (const chunk of chunks) {
    body.set(chunk, offset)
    offset += chunk.byteLength
  }
  return body
}

function mediaType(request: Request): string {
  return (request.headers.get('content-type') ?? '').split(';')[0]!.trim().toLowerCase()
}

const textDecoder = new TextDecoder('utf-8', { fatal: true })

function decodeText(body: Uint8Array): string {
  try {
    return textDecoder.decode(body)
  } catch {
    throw new DecodeError('the body is not valid UTF-8')
  }
}

/** Parse an ingest body into the list of candidate records; malformed bodies throw DecodeError. */
export function parseIngestBody(body: Uint8Array, type: string): unknown[] {
  if (type === 'application/cbor') {
    const decoded = decodeCbor(body)
    if (!Array.isArray(decoded)) throw new DecodeError('a CBOR body must be an array of records')
    return decoded
  }
  if (type === 'application/x-ndjson' || type === 'application/ndjson' || type === 'application/jsonl') {
    const records: unknown[] = []
    const lines = decodeText(body).split('\n')
    for (let i = 0; i < lines.length; i++) {
      const line = lines[i]!.trim()
      if (line === '') continue
      try {
        records.push(JSON.parse(line))
      } catch (error) {
        throw new DecodeError(`malformed NDJSON at line ${i + 1}: ${(error as Error).message}`)
      }
    }
    return records
  }
  if (type === 'application/json' || type === '') {
    let decoded: unknown
    try {
      decoded = JSON.parse(decodeText(body))
    } catch (error) {
      if (error instanceof DecodeError) throw error
      throw new DecodeError(`malformed JSON: ${(error as Error).message}`)
    }
    if (!Array.isArray(decoded)) throw new DecodeError('a JSON body must be an array of records')
    return decoded
  }
  throw new HttpError(
    415,
    'UnsupportedMediaType',
    `content-type '${type}' is not supported; use application/json, application/x-ndjson or application/cbor`,
  )
}

/** Validate candidates; the valid ones are returned with the reasons for the others. */
export function validateRecords(
  candidates: readonly unknown[],
  now = Date.now(),
): { records: TelemetryRecord[]; result: IngestResult } {
  const records: TelemetryRecord[] = []
  const errors: IngestResult['errors'] = []
  let rejected = 0
  for (let index = 0; index < candidates.length; index++) {
    try {
      records.push(parseTelemetryRecord(candidates[index], now))
    } catch (error) {
      rejected += 1
      if (errors.length < MAX_REPORTED_ERRORS) errors.push({ index, reason: (error as Error).message })
    }
  }
  return { records, result: { accepted: records.length, rejected, errors } }
}

export class HttpApi {
  private server: Server<undefined> | undefined
  private readonly routes: Route[]
  private readonly adminTokens: Buffer[]
  private readonly ingestTokens: Buffer[]
  private accepting = false

  constructor(
    private readonly init: HttpApiInit,
    private readonly components: HttpApiComponents,
  ) {
    this.adminTokens = [digest(init.adminToken)]
    this.ingestTokens = [digest(init.adminToken), ...init.ingestTokens.map(digest)]
    this.routes = [
      {
        method: 'GET',
        pattern: /^\/livez$/,
        name: 'livez',
        access: 'open-on-loopback',
        handler: () => json({ status: 'ok' }),
      },
      {
        method: 'GET',
        pattern: /^\/readyz$/,
        name: 'readyz',
        access: 'open-on-loopback',
        handler: () => this.readyz(),
      },
      {
        method: 'GET',
        pattern: /^\/metrics$/,
        name: 'metrics',
        access: 'open-on-loopback',
        handler: () => this.metricsText(),
      },
      {
        method: 'POST',
        pattern: /^\/v1\/telemetry$/,
        name: 'telemetry',
        access: 'ingest',
        handler: (r) => this.ingest(r),
      },
      {
        method: 'PUT',
        pattern: /^\/v1\/resources\/([^/]+)\/([^/]+)$/,
        name: 'resources',
        access: 'ingest',
        handler: (r, p) => this.putResource(r, p),
      },
      {
        method: 'GET',
        pattern: /^\/v1\/resources\/([^/]+)\/([^/]+)$/,
        name: 'resources',
        access: 'admin',
        handler: (_r, p) => this.getResource(p),
      },
      {
        method: 'GET',
        pattern: /^\/v1\/status$/,
        name: 'status',
        access: 'admin',
        handler: async () => json(await this.components.status()),
      },
      {
        method: 'GET',
        pattern: /^\/v1\/card$/,
        name: 'card',
        access: 'admin',
        handler: () => json(this.components.card()),
      },
      {
        method: 'GET',
        pattern: /^\/v1\/tail$/,
        name: 'tail',
        access: 'admin',
        handler: (r, _p, u) => this.tail(r, u),
      },
      ...this.federationRoutes(),
    ]
  }

  get url(): string {
    if (!this.server) throw new Error('the API is not listening')
    const host = this.server.hostname?.includes(':') ? `[${this.server.hostname}]` : this.server.hostname
    return `http://${host}:${this.server.port}`
  }

  async start(): Promise<void> {
    if (this.server) return
    const { hostname, port } = parseListen(this.init.listen)
    this.server = Bun.serve({
      hostname,
      port,
      // Our own limit answers 413 with a reason; Bun's is only a backstop.
      maxRequestBodySize: this.init.maxBodyBytes + 1024 * 1024,
      idleTimeout: 60,
      fetch: (request, server) => this.handle(request, server),
      error: (error) => {
        this.components.logger.error({ err: error.message }, 'unhandled API error')
        return errorResponse(500, 'InternalError', 'internal error')
      },
    })
    this.accepting = true
  }

  /** Stop taking new requests; in-flight ones finish. */
  async stop(): Promise<void> {
    this.accepting = false
    const server = this.server
    this.server = undefined
    await server?.stop(false)
  }

  private async handle(request: Request, server: Server<undefined>): Promise<Response> {
    const url = new URL(request.url)
    let routeName = 'unknown'
    let response: Response
    try {
      response = await this.route(request, server, url, (name) => {
        routeName = name
      })
    } catch (error) {
      response = this.toErrorResponse(error)
    }
    this.components.metrics.httpRequests.inc({ route: routeName, status: String(response.status) })
    return response
  }

  private async route(
    request: Request,
    server: Server<undefined>,
    url: URL,
    named: (name: string) => void,
  ): Promise<Response> {
    const matching = this.routes.filter((route) => route.pattern.test(url.pathname))
    if (matching.length === 0) return errorResponse(404, 'NotFound', `no such path: ${url.pathname}`)
    const route = matching.find((candidate) => candidate.method === request.method)
    if (!route) {
      const allow = [...new Set(matching.map((candidate) => candidate.method))].join(', ')
      const message = `${request.method} is not allowed on ${url.pathname}; use ${allow}`
      return errorResponse(405, 'MethodNotAllowed', message, {}, { allow })
    }
    named(route.name)
    if (!this.accepting) return errorResponse(503, 'ShuttingDown', 'the node is shutting down')
    const denied = this.authorize(request, server, route.access)
    if (denied) return denied
    const params = (route.pattern.exec(url.pathname) ?? []).slice(1).map(decodeURIComponent)
    return route.handler(request, params, url)
  }

  private authorize(request: Request, server: Server<undefined>, access: Access): Response | undefined {
    if (access === 'open-on-loopback' && isLoopback(server.requestIP(request)?.address)) return undefined
    const header = request.headers.get('authorization') ?? ''
    const match = /^Bearer\s+(\S+)$/i.exec(header)
    if (!match)
      return errorResponse(401, 'Unauthorized', 'missing bearer token (Authorization: Bearer <token>)')
    const tokens = access === 'admin' ? this.adminTokens : this.ingestTokens
    if (!tokenMatches(match[1]!, tokens)) {
      return errorResponse(
        401,
        'Unauthorized',
        access === 'admin' ? 'the admin token is required' : 'invalid token',
      )
    }
    return undefined
  }

  private toErrorResponse(error: unknown): Response {
    if (error instanceof HttpError) return errorResponse(error.status, error.errorName, error.message)
    if (error instanceof ValidationError) {
      return errorResponse(400, error.name, error.message, { path: error.path, reason: error.reason })
    }
    if (error instanceof DecodeError) return errorResponse(400, error.name, error.message)
    if (error instanceof CardError) return errorResponse(400, error.name, error.message)
    if (error instanceof AgreementNotFoundError || error instanceof UnknownPeerError) {
      return errorResponse(404, error.name, error.message)
    }
    if (
      error instanceof PeerExistsError ||
      error instanceof AgreementStateError ||
      error instanceof AgreementExpiredError
    ) {
      return errorResponse(409, error.name, error.message)
    }
    if (error instanceof AgreementFormatError) {
      return errorResponse(400, error.name, error.message, { path: error.path, reason: error.reason })
    }
    if (error instanceof FederationError) return errorResponse(400, error.name, error.message)
    if (error instanceof PluginError) return errorResponse(400, error.name, error.message)
    if (error instanceof PublishError || error instanceof NotConnectedError) {
      return errorResponse(503, error.name, error.message)
    }
    if (error instanceof DataPlaneError) return errorResponse(400, error.name, error.message)
    this.components.logger.error({ err: (error as Error)?.message }, 'API request failed')
    return errorResponse(500, 'InternalError', 'internal error')
  }

  private requireFederation(): Federation {
    const federation = this.components.federation()
    if (!federation?.started) throw new HttpError(503, 'NotReady', 'federation is not running')
    return federation
  }

  private async readJson(request: Request): Promise<Record<string, unknown>> {
    const body = await readBody(request, this.init.maxBodyBytes)
    if (body.length === 0) return {}
    let parsed: unknown
    try {
      parsed = JSON.parse(decodeText(body))
    } catch (error) {
      throw new DecodeError(`malformed JSON: ${(error as Error).message}`)
    }
    if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
      throw new DecodeError('the body must be a JSON object')
    }
    return parsed as Record<string, unknown>
  }

  private federationRoutes(): Route[] {
    const admin = (method: string, pattern: RegExp, name: string, handler: Handler): Route => ({
      method,
      pattern,
      name,
      access: 'admin',
      handler,
    })
    const reason = (body: Record<string, unknown>): string => {
      if (body.reason === undefined) return ''
      if (typeof body.reason !== 'string' || body.reason.length > 1000) {
        throw new HttpError(400, 'InvalidReason', 'reason must be text of at most 1000 characters')
      }
      return body.reason
    }
    return [
      admin('GET', /^\/v1\/peers$/, 'peers', () => json(this.requireFederation().peers())),
      admin('POST', /^\/v1\/peers$/, 'peers', async (request) => {
        const body = await this.readJson(request)
        if (typeof body.card !== 'string')
          throw new HttpError(400, 'InvalidCard', 'card must be the text of a node card')
        if (typeof body.alias !== 'string') throw new HttpError(400, 'InvalidAlias', 'alias is required')
        const card = parseCard(body.card)
        const peer = await this.requireFederation().addPeer({
          alias: body.alias,
          org: card.org,
          peerId: card.peerId,
          publicKey: card.publicKey,
          addrs: card.addrs,
        })
        return json(peer, 201)
      }),
      admin('DELETE', /^\/v1\/peers\/([^/]+)$/, 'peers', async (_request, params) => {
        await this.requireFederation().removePeer(params[0]!)
        return json({ removed: params[0] })
      }),
      admin('GET', /^\/v1\/agreements$/, 'agreements', () => json(this.requireFederation().list())),
      admin('POST', /^\/v1\/agreements$/, 'agreements', async (request) => {
        const body = await this.readJson(request)
        const result = await this.requireFederation().propose(parseProposal(body))
        return json(result, 201)
      }),
      admin('POST', /^\/v1\/agreements\/import$/, 'agreements', async (request) => {
        const text = decodeText(await readBody(request, this.init.maxBodyBytes))
        return json(await this.requireFederation().importText(text))
      }),
      admin('GET', /^\/v1\/agreements\/([0-9a-f]{64})$/, 'agreements', (_request, params) =>
        json(this.requireFederation().agreement(params[0]!)),
      ),
      admin('GET', /^\/v1\/agreements\/([0-9a-f]{64})\/export$/, 'agreements', (_request, params) => {
        const text = this.requireFederation().exportText(params[0]!)
        return new Response(text, { headers: { 'content-type': 'text/plain; charset=utf-8' } })
      }),
      admin('POST', /^\/v1\/agreements\/([0-9a-f]{64})\/accept$/, 'agreements', async (_request, params) =>
        json(await this.requireFederation().accept(params[0]!)),
      ),
      admin('POST', /^\/v1\/agreements\/([0-9a-f]{64})\/reject$/, 'agreements', async (request, params) =>
        json(await this.requireFederation().reject(params[0]!, reason(await this.readJson(request)))),
      ),
      admin('POST', /^\/v1\/agreements\/([0-9a-f]{64})\/revoke$/, 'agreements', async (request, params) =>
        json(await this.requireFederation().revoke(params[0]!, reason(await this.readJson(request)))),
      ),
      admin('GET', /^\/v1\/plugins$/, 'plugins', () => json(this.components.plugins()?.status() ?? [])),
      admin(
        'POST',
        /^\/v1\/plugins\/([a-z][a-z0-9-]*)\/actions\/([a-z][a-z0-9_-]*)$/,
        'plugins',
        async (request, params) => {
          const host = this.components.plugins()
          if (!host) throw new HttpError(503, 'NotReady', 'plugins are not running')
          return json({
            result: (await host.action(params[0]!, params[1]!, await this.readJson(request))) ?? null,
          })
        },
      ),
      admin('GET', /^\/v1\/audit$/, 'audit', (_request, _params, url) => {
        const limit = Math.min(Number(url.searchParams.get('limit') ?? 50) || 50, 500)
        return json(this.components.audit()?.recent(limit) ?? [])
      }),
    ]
  }

  private requireDataPlane(): DataPlane {
    const dataPlane = this.components.dataPlane()
    if (!dataPlane?.isConnected()) throw new NotConnectedError()
    return dataPlane
  }

  private async readyz(): Promise<Response> {
    const report = await this.components.health()
    return json(report, report.ready && this.accepting ? 200 : 503)
  }

  private async metricsText(): Promise<Response> {
    const { registry } = this.components.metrics
    return new Response(await registry.metrics(), { headers: { 'content-type': registry.contentType } })
  }

  private async ingest(request: Request): Promise<Response> {
    const started = performance.now()
    const body = await readBody(request, this.init.maxBodyBytes)
    const candidates = parseIngestBody(body, mediaType(request))
    const { records, result } = validateRecords(candidates)
    if (records.length > 0) await this.requireDataPlane().publishTelemetry(records)
    const { ingestRecords, ingestBatchSeconds } = this.components.metrics
    ingestRecords.inc({ result: 'accepted' }, result.accepted)
    if (result.rejected > 0) ingestRecords.inc({ result: 'rejected' }, result.rejected)
    ingestBatchSeconds.observe((performance.now() - started) / 1000)
    return json(result)
  }

  private async putResource(request: Request, params: string[]): Promise<Response> {
    const body = await readBody(request, this.init.maxBodyBytes)
    const type = mediaType(request)
    let input: unknown
    if (type === 'application/cbor') input = decodeCbor(body)
    else if (type === 'application/json' || type === '') {
      try {
        input = JSON.parse(decodeText(body))
      } catch (error) {
        throw new DecodeError(`malformed JSON: ${(error as Error).message}`)
      }
    } else
      throw new HttpError(
        415,
        'UnsupportedMediaType',
        `content-type '${type}' is not supported; use application/json`,
      )
    const resource = parseResource(params[0], params[1], input)
    await this.requireDataPlane().upsertResource(resource)
    this.components.metrics.resourcesUpserted.inc()
    return json({ resource })
  }

  private async getResource(params: string[]): Promise<Response> {
    const resource = parseResource(params[0], params[1], {})
    const found = await this.requireDataPlane().getResource(resource.kind, resource.rid)
    if (!found) return errorResponse(404, 'NotFound', `no resource ${resource.kind}/${resource.rid}`)
    return json({ resource: found })
  }

  /** NDJSON stream of `{subject, data}` for `?subject=…[&from_start=1]`, until the client leaves. */
  private tail(request: Request, url: URL): Response {
    const subject = url.searchParams.get('subject') ?? ''
    if (!isValidSubjectFilter(subject)) {
      throw new HttpError(400, 'InvalidSubject', `'${subject}' is not a NATS subject or filter`)
    }
    const fromStart = ['1', 'true', 'yes'].includes(url.searchParams.get('from_start') ?? '')
    const dataPlane = this.requireDataPlane()
    this.server?.timeout(request, 0)
    const abort = new AbortController()
    request.signal.addEventListener('abort', () => abort.abort(), { once: true })
    const encoder = new TextEncoder()
    const messages = dataPlane.watch(subject, { fromStart, signal: abort.signal })
    const stream = new ReadableStream<Uint8Array>({
      start: (controller) => {
        // An empty line first, so the client knows the subscription is in place.
        controller.enqueue(encoder.encode('\n'))
      },
      pull: async (controller) => {
        try {
          const next = await messages.next()
          if (next.done) controller.close()
          else controller.enqueue(encoder.encode(`${JSON.stringify(next.value)}\n`))
        } catch (error) {
          controller.enqueue(
            encoder.encode(
              `${JSON.stringify({ error: (error as Error).name, message: (error as Error).message })}\n`,
            ),
          )
          controller.close()
        }
      },
      cancel: async () => {
        abort.abort()
        await messages.return(undefined)
      },
    })
    return new Response(stream, {
      headers: { 'content-type': 'application/x-ndjson', 'cache-control': 'no-store' },
    })
  }
}

/** A time from JSON: epoch milliseconds or an ISO 8601 string. */
function parseTime(value: unknown, field: string): number {
  const ms = typeof value === 'number' ? value : typeof value === 'string' ? Date.parse(value) : Number.NaN
  if (!Number.isSafeInteger(ms) || ms < 0)
    throw new HttpError(400, 'InvalidTime', `${field} must be an ISO 8601 time`)
  return ms
}

/** The body of POST /v1/agreements: grants as CLI specs or as grant objects. */
function parseProposal(body: Record<string, unknown>) {
  if (typeof body.peer !== 'string') throw new HttpError(400, 'InvalidPeer', 'peer (an alias) is required')
  if (typeof body.purpose !== 'string' || body.purpose.trim() === '') {
    throw new HttpError(400, 'InvalidPurpose', 'purpose is required')
  }
  if (!Array.isArray(body.grants) || body.grants.length === 0)
    throw new HttpError(400, 'InvalidGrant', 'at least one grant is required')
  const grants: Grant[] = body.grants.map((grant, index) =>
    typeof grant === 'string' ? parseGrantSpec(grant) : parseGrant(grant, `grants[${index}]`),
  )
  const rate = body.maxRecordsPerSec
  if (rate !== undefined && (typeof rate !== 'number' || !Number.isSafeInteger(rate) || rate < 1)) {
    throw new HttpError(400, 'InvalidLimit', 'maxRecordsPerSec must be a whole number above 0')
  }
  const limits = rate === undefined ? undefined : { maxRecordsPerSec: rate }
  return {
    peer: body.peer,
    purpose: body.purpose,
    grants,
    validUntil: parseTime(body.validUntil, 'validUntil'),
    ...(body.validFrom !== undefined ? { validFrom: parseTime(body.validFrom, 'validFrom') } : {}),
    offer: body.offer === true,
    ...(limits ? { limits } : {}),
  }
}
