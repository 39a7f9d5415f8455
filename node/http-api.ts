/**
 * The node's HTTP API (ARCHITECTURE §9): health and metrics, telemetry and standing-data
 * ingest, and the admin endpoints the CLI and TUI use. Every endpoint needs a bearer token,
 * except health and metrics when asked from loopback. Bodies are bounded; bad input is answered
 * with a specific reason and never disturbs what was already accepted.
 */
import { createHash, timingSafeEqual } from 'node:crypto'
import { readdir, readFile, statfs } from 'node:fs/promises'
import { isIPv4 } from 'node:net'
import { join } from 'node:path'
import { headers as natsHeaders } from '@nats-io/nats-core'
import type { Server } from 'bun'
import {
  checkTelemetryRecord,
  type DataPlane,
  DataPlaneError,
  DecodeError,
  decodeCbor,
  encodeTelemetryPayload,
  isValidSubjectFilter,
  NotConnectedError,
  type OutgoingMessage,
  PublishError,
  parseResource,
  subjects,
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
import { readSecretFile } from './data-dir.ts'
import { CardError, KeyRotationError } from './errors.ts'
import { IDEMPOTENCY_KEY_PATTERN, IdempotencyStore } from './idempotency.ts'
import type { Logger } from './logger.ts'
import type { NodeMetrics } from './metrics.ts'
import type { KeyRotationResult } from './node.ts'

export interface HttpApiInit {
  /** HOST:PORT; port 0 picks a free one. */
  listen: string
  maxBodyBytes: number
  /** Records one ingest request may carry (`api.max_records`); default 100,000. */
  maxRecords?: number
  adminToken: string
  ingestTokens: readonly string[]
  /**
   * Host names (besides loopback ones, IP literals and the listen host) under which health and
   * metrics are answered without a token (`api.allowed_hosts`).
   */
  allowedHosts?: readonly string[]
  /**
   * The data dir, whose token files (`admin.token`, `tokens/ingest/<name>`, `tokens/retired.json`)
   * are re-read while the node runs, so `oe-node token rotate` needs no restart. When absent, the
   * `dataDir` field of `status()` is used; without either, the tokens above are fixed.
   */
  dataDir?: string
  /** How often the token files are re-read (default 1 s). */
  tokenReloadMs?: number
  /**
   * Seconds a request may take from its first byte to its last body byte, and a kept-alive
   * connection may stay idle (default REQUEST_TIMEOUT_SECONDS).
   */
  requestTimeoutSeconds?: number
  /** Requests in flight at once, over all clients (default 1,024); more are answered 503. */
  maxInFlight?: number
  /** Requests in flight at once from one address (default 256); more are answered 429. */
  maxInFlightPerSource?: number
  /**
   * Body bytes being read at once, over all requests (default 4 × maxBodyBytes, at least
   * 64 MiB). A request whose declared length does not fit is answered 503 before it is read.
   */
  maxBodyBytesInFlight?: number
}

/** Where the tokens `oe-node token rotate` writes are kept in a data dir. */
export interface TokenFiles {
  /** `<data-dir>/admin.token`: the admin token, one line. */
  adminToken: string
  /** `<data-dir>/tokens/ingest/`: one file per named ingest token, holding the token. */
  ingestDir: string
  /** `<data-dir>/tokens/retired.json`: digests of replaced tokens, accepted until a time. */
  retired: string
}

export function tokenFiles(dataDir: string): TokenFiles {
  return {
    adminToken: join(dataDir, 'admin.token'),
    ingestDir: join(dataDir, 'tokens', 'ingest'),
    retired: join(dataDir, 'tokens', 'retired.json'),
  }
}

/** The name of an ingest token kept in the data dir. */
export const INGEST_TOKEN_NAME = /^[a-z][a-z0-9-]{0,31}$/
/** The shortest token accepted from a file (as for `api.ingest_tokens`). */
export const MIN_TOKEN_LENGTH = 16

/** One replaced token in `retired.json`: only its digest is kept, never the token. */
export interface RetiredToken {
  /** `admin` or `ingest:<name>`. */
  token: string
  /** SHA-256 of the token, hex. */
  sha256: string
  /** ISO 8601: the token is refused from then on. */
  until: string
}

/** The SHA-256 of a token, hex: how `retired.json` names a token. */
export function tokenDigest(token: string): string {
  return createHash('sha256').update(token).digest('hex')
}

/** A token the API accepts, by digest; `until` (epoch ms) ends a retired one's grace. */
interface Credential {
  digest: Buffer
  until?: number
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
  /** Rotate the node key (`POST /v1/key/rotate`); absent where the node cannot. */
  rotateKey?: (options: { graceMs?: number }) => Promise<KeyRotationResult>
}

/** Answer to POST /v1/telemetry. */
export interface IngestResult {
  accepted: number
  rejected: number
  /** The first MAX_REPORTED_ERRORS rejections, by index. */
  errors: { index: number; reason: string }[]
  /** Present (true) when more records were rejected than `errors` lists. */
  errorsTruncated?: true
}

export const MAX_REPORTED_ERRORS = 1000
export const DEFAULT_MAX_RECORDS = 100_000
/**
 * Parts a body may hold per record it may carry: a record with every field is 15 (the object, 7
 * keys and values, separators). A body is refused when it holds more parts than `max_records`
 * full records would, so no body costs more to parse than the largest valid one.
 */
export const ITEMS_PER_RECORD = 16
/**
 * Space kept free on the embedded JetStream store's filesystem: 1 % of it, at least 8 MiB and at
 * most 256 MiB. Ingest is refused (507) below it, so that agreements, transfer marks and the
 * other KV writes still fit, and so that JetStream never meets a full disk (see `requireStoreSpace`).
 */
export const STORE_RESERVE = { share: 0.01, minBytes: 8 * 1024 * 1024, maxBytes: 256 * 1024 * 1024 }
/** What JetStream answers when its store is out of space. */
const STORE_FULL = /no space left on device|insufficient (?:storage )?resources/i
/** Longest path echoed back in an error message. */
const MAX_ECHOED_PATH = 200
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
    /** More fields for the JSON answer (e.g. the limit that was passed). */
    readonly extra: Record<string, unknown> = {},
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

function tokenMatches(given: string, expected: readonly Credential[], now = Date.now()): boolean {
  const candidate = digest(given)
  let match = false
  for (const token of expected) {
    const valid = token.until === undefined || token.until > now
    match = (timingSafeEqual(candidate, token.digest) && valid) || match
  }
  return match
}

/** A decoded path parameter; a broken percent-encoding is the client's mistake (400). */
function decodePathParameter(text: string): string {
  try {
    return decodeURIComponent(text)
  } catch {
    const shown = text.length > 100 ? `${text.slice(0, 100)}…` : text
    throw new HttpError(400, 'InvalidPath', `'${shown}' is not a valid percent-encoded path segment`)
  }
}

/** `Host: name[:port]` or `[v6]:port` (RFC 9110 §7.2), as the client sent it. */
const HOST_HEADER = /^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::(\d{1,5}))?$/

/** The host name of the Host header, normalised; missing or malformed is a 400. */
function parseHostHeader(header: string | null): string {
  if (header === null || header.trim() === '') {
    throw new HttpError(400, 'MissingHost', 'a Host header is required (HTTP/1.1)')
  }
  const match = HOST_HEADER.exec(header.trim())
  if (!match || (match[2] !== undefined && Number(match[2]) > 65_535)) {
    const shown = header.length > 100 ? `${header.slice(0, 100)}…` : header
    throw new HttpError(400, 'InvalidHost', `'${shown}' is not a Host header (host[:port], one of them)`)
  }
  return normaliseHostName(match[1]!)
}

/** Lower case, without a trailing dot; IPv4 in dotted-quad form (as a browser would send it). */
function normaliseHostName(name: string): string {
  const lower = name.toLowerCase().replace(/\.$/, '')
  if (lower.startsWith('[') || !/^[0-9a-fx.]+$/.test(lower)) return lower
  try {
    // 127.1 and 0x7f.0.0.1 are IPv4 literals to a browser too.
    const parsed = new URL(`http://${lower}/`).hostname
    return isIPv4(parsed) ? parsed : lower
  } catch {
    return lower
  }
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

/**
 * The bytes one request holds against the API's budget for bodies in memory; released when the
 * request is answered.
 */
export interface BodyAllowance {
  /** Reserve `bytes` more; false when the budget has no room. */
  take(bytes: number): boolean
}

const overloadedBodies = (): HttpError =>
  new HttpError(503, 'Overloaded', 'too many request bodies are being read at once; retry shortly')

/** Read a body up to `limit` bytes; more is a 413. */
async function readBody(request: Request, limit: number, allowance?: BodyAllowance): Promise<Uint8Array> {
  const declared = Number(request.headers.get('content-length') ?? Number.NaN)
  if (Number.isFinite(declared) && declared > limit) {
    throw new HttpError(413, 'PayloadTooLarge', `the body has ${declared} bytes; the limit is ${limit}`)
  }
  if (!request.body) return new Uint8Array(0)
  // A declared length is reserved whole, before a byte is read; a chunked body as it comes.
  const reservedUpFront = Number.isFinite(declared) && declared > 0
  if (reservedUpFront && allowance && !allowance.take(declared)) throw overloadedBodies()
  const chunks: Uint8Array[] = []
  let total = 0
  try {
    for await (const chunk of request.body) {
      total += chunk.byteLength
      if (total > limit)
        throw new HttpError(413, 'PayloadTooLarge', `the body is larger than the limit of ${limit} bytes`)
      if (!reservedUpFront && allowance && !allowance.take(chunk.byteLength)) throw overloadedBodies()
      chunks.push(chunk)
    }
  } catch (error) {
    if (error instanceof HttpError) throw error
    // The client went away or sent a broken chunked encoding.
    throw new HttpError(
      400,
      'BodyReadError',
      `the request body could not be read: ${(error as Error).message}`,
    )
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

const NDJSON_TYPES: ReadonlySet<string> = new Set([
  'application/x-ndjson',
  'application/ndjson',
  'application/jsonl',
])

/** Deepest JSON nesting any body may have; a record is a flat object. */
export const MAX_JSON_DEPTH = 64

/**
 * Refuse JSON nested deeper than MAX_JSON_DEPTH before it is parsed: a megabyte of `[` costs the
 * parser seconds and hundreds of megabytes. One pass, strings skipped.
 */
export function checkJsonDepth(body: Uint8Array, maxDepth = MAX_JSON_DEPTH): void {
  let depth = 0
  const length = body.length
  for (let i = 0; i < length; i++) {
    const c = body[i]!
    if (c === 0x22) {
      for (i++; i < length && body[i] !== 0x22; i++) if (body[i] === 0x5c) i++
    } else if (c === 0x5b || c === 0x7b) {
      if (++depth > maxDepth) throw tooDeep(maxDepth)
    } else if (c === 0x5d || c === 0x7d) depth--
  }
}

const tooDeep = (maxDepth: number): HttpError =>
  new HttpError(400, 'NestingTooDeep', `the JSON body is nested deeper than ${maxDepth} levels`, { maxDepth })

/** What an ingest body holds, as far as a count before parsing could tell. */
export interface BodyCount {
  /** Top-level records (array elements, or non-blank NDJSON lines). */
  records: number
  /** Parts: JSON containers, separators and key colons; CBOR data items. */
  items: number
}

/**
 * Count a JSON array or NDJSON body without parsing it: records, and parts (every `{` `[` `,` `:`
 * outside strings). Stops as soon as either passes its limit, so the cost is one pass over the
 * bytes at most. Malformed JSON is counted as best it can be; parsing then says what is wrong.
 */
export function countJsonBody(
  body: Uint8Array,
  ndjson: boolean,
  limits: { records: number; items: number },
): BodyCount {
  const recordDepth = ndjson ? 0 : 1
  let depth = 0
  let records = 0
  let items = 0
  let inRecord = false
  const length = body.length
  for (let i = 0; i < length; i++) {
    const c = body[i]!
    if (c === 0x20 || c === 0x09 || c === 0x0d) continue
    if (c === 0x0a) {
      if (ndjson && depth === 0) inRecord = false
      continue
    }
    if (depth === recordDepth && !inRecord && c !== 0x2c && c !== 0x5d && c !== 0x7d) {
      inRecord = true
      if (++records > limits.records) break
    }
    switch (c) {
      case 0x22: // a string: skip to its closing quote
        for (i++; i < length && body[i] !== 0x22; i++) if (body[i] === 0x5c) i++
        break
      case 0x5b:
      case 0x7b:
        if (++depth > MAX_JSON_DEPTH + recordDepth) throw tooDeep(MAX_JSON_DEPTH)
        items++
        break
      case 0x5d:
      case 0x7d:
        depth--
        break
      case 0x2c:
        items++
        if (depth === recordDepth) inRecord = false
        break
      case 0x3a:
        items++
        break
    }
    if (items > limits.items) break
  }
  return { records, items }
}

/**
 * Count a CBOR body without decoding it: the elements of its top-level array (after any tags)
 * and every data item inside (RFC 8949 §3), stopping once either passes its limit. Undefined
 * when the body is not a well-formed array, which decoding then reports.
 */
export function countCborBody(
  body: Uint8Array,
  limits: { records: number; items: number },
): BodyCount | undefined {
  const length = body.length
  let pos = 0
  /** Items left per open container; -1 for an indefinite one (ended by a break, 0xff). */
  const remaining: number[] = []
  let records = 0
  let items = 0
  // The argument of the head at `pos` (RFC 8949 §3.1), leaving `pos` after it; -1 if malformed.
  const argument = (info: number): number => {
    if (info < 24) return info
    const size = info === 24 ? 1 : info === 25 ? 2 : info === 26 ? 4 : info === 27 ? 8 : 0
    if (size === 0 || pos + size > length) return -1
    let value = 0
    for (let k = 0; k < size; k++) value = value * 256 + body[pos + k]!
    pos += size
    return value
  }
  // Tags before the array (e.g. self-described CBOR, 55799).
  while (pos < length && body[pos]! >> 5 === 6) {
    const info = body[pos++]! & 0x1f
    if (argument(info) < 0) return undefined
  }
  if (pos >= length || body[pos]! >> 5 !== 4) return undefined
  const top = body[pos++]! & 0x1f
  if (top === 31) remaining.push(-1)
  else {
    const count = argument(top)
    if (count < 0) return undefined
    remaining.push(count)
  }
  while (remaining.length > 0) {
    const level = remaining.length - 1
    const left = remaining[level]!
    if (left === 0) {
      remaining.pop()
      continue
    }
    if (pos >= length) return undefined
    const initial = body[pos]!
    if (initial === 0xff) {
      if (left !== -1) return undefined
      pos++
      remaining.pop()
      continue
    }
    if (left > 0) remaining[level] = left - 1
    if (level === 0 && ++records > limits.records) return { records, items }
    if (++items > limits.items) return { records, items }
    pos++
    const major = initial >> 5
    const info = initial & 0x1f
    const indefinite = info === 31
    const value = indefinite ? 0 : argument(info)
    if (value < 0) return undefined
    switch (major) {
      case 0:
      case 1:
        if (indefinite) return undefined
        break
      case 2:
      case 3:
        if (!indefinite) {
          pos += value
          if (pos > length) return undefined
          break
        }
        // Chunks of the same major type, each definite, until a break.
        for (;;) {
          if (pos >= length) return undefined
          const chunk = body[pos++]!
          if (chunk === 0xff) break
          if (chunk >> 5 !== major || (chunk & 0x1f) === 31) return undefined
          const size = argument(chunk & 0x1f)
          if (size < 0 || pos + size > length) return undefined
          pos += size
        }
        break
      case 4:
        remaining.push(indefinite ? -1 : value)
        break
      case 5:
        remaining.push(indefinite ? -1 : value * 2)
        break
      case 6:
        if (indefinite) return undefined
        remaining.push(1)
        break
      default:
        // Simple values and floats carry no items; a break outside an indefinite item is malformed.
        if (indefinite) return undefined
    }
  }
  return { records, items }
}

/**
 * Refuse a body that holds more records than `maxRecords`, or more parts than that many full
 * records would, before it is parsed: a few megabytes of `{}` must not become millions of
 * objects. A body no longer than `maxRecords` bytes cannot hold more, so it is not counted.
 */
export function checkBodySize(body: Uint8Array, type: string, maxRecords: number): void {
  if (body.length <= maxRecords) return
  const limits = { records: maxRecords, items: maxRecords * ITEMS_PER_RECORD + 1 }
  let count: BodyCount | undefined
  if (type === 'application/cbor') {
    count = countCborBody(body, limits)
    if (count === undefined) throw new DecodeError('malformed CBOR: the body is not a well-formed CBOR array')
  } else if (NDJSON_TYPES.has(type) || type === 'application/json' || type === '') {
    count = countJsonBody(body, NDJSON_TYPES.has(type), limits)
  } else return
  if (count.records > maxRecords) throw tooManyRecords(maxRecords)
  if (count.items > limits.items) {
    throw new HttpError(
      413,
      'TooManyRecords',
      `the body holds more values than ${maxRecords} records would (api.max_records); a record is a flat object`,
      { maxRecords },
    )
  }
}

const tooManyRecords = (maxRecords: number): HttpError =>
  new HttpError(
    413,
    'TooManyRecords',
    `the body holds more than ${maxRecords} records (api.max_records); send them in several requests`,
    { maxRecords },
  )

/** Parse an ingest body into the list of candidate records; malformed bodies throw DecodeError. */
export function parseIngestBody(body: Uint8Array, type: string, maxRecords = DEFAULT_MAX_RECORDS): unknown[] {
  if (type !== 'application/cbor' && type !== 'application/json' && type !== '' && !NDJSON_TYPES.has(type)) {
    throw new HttpError(
      415,
      'UnsupportedMediaType',
      `content-type '${type.slice(0, 100)}' is not supported; use application/json, application/x-ndjson or application/cbor`,
    )
  }
  checkBodySize(body, type, maxRecords)
  let records: unknown[]
  if (type === 'application/cbor') {
    const decoded = decodeCbor(body)
    if (!Array.isArray(decoded)) throw new DecodeError('a CBOR body must be an array of records')
    records = decoded
  } else if (NDJSON_TYPES.has(type)) {
    records = []
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
  } else {
    let decoded: unknown
    try {
      decoded = JSON.parse(decodeText(body))
    } catch (error) {
      if (error instanceof DecodeError) throw error
      throw new DecodeError(`malformed JSON: ${(error as Error).message}`)
    }
    if (!Array.isArray(decoded)) throw new DecodeError('a JSON body must be an array of records')
    records = decoded
  }
  // The count above is exact for well-formed bodies; this holds whatever it skipped.
  if (records.length > maxRecords) throw tooManyRecords(maxRecords)
  return records
}

/**
 * Validate candidates; the valid ones are returned with the reasons for the others. A rejected
 * record costs a short reason at most: past MAX_REPORTED_ERRORS only the count grows.
 */
export function validateRecords(
  candidates: readonly unknown[],
  now = Date.now(),
): { records: TelemetryRecord[]; indices: number[]; result: IngestResult } {
  const records: TelemetryRecord[] = []
  /** Where each record stood in the body. */
  const indices: number[] = []
  const errors: IngestResult['errors'] = []
  let rejected = 0
  for (let index = 0; index < candidates.length; index++) {
    const checked = checkTelemetryRecord(candidates[index], now)
    if (checked.ok) {
      records.push(checked.record)
      indices.push(index)
      continue
    }
    rejected += 1
    if (errors.length < MAX_REPORTED_ERRORS) {
      errors.push({
        index,
        reason: checked.path === '' ? checked.reason : `${checked.path}: ${checked.reason}`,
      })
    }
  }
  const result: IngestResult = { accepted: records.length, rejected, errors }
  if (rejected > errors.length) result.errorsTruncated = true
  return { records, indices, result }
}

export const DEFAULT_MAX_IN_FLIGHT = 1024
export const DEFAULT_MAX_IN_FLIGHT_PER_SOURCE = 256
/**
 * Seconds a request may take from its first byte to its last body byte, and a kept-alive
 * connection may stay idle. (Bun closes a connection whose request head is not complete within
 * about 10 s by itself, however slowly bytes trickle in.)
 */
export const REQUEST_TIMEOUT_SECONDS = 60
/** Bodies up to this size are not held against `maxBodyBytesInFlight`. */
const SMALL_BODY_BYTES = 64 * 1024
/** Routes answered whatever the load, so probes and scrapers see the truth. */
const UNLIMITED_ROUTES: ReadonlySet<string> = new Set(['livez', 'readyz', 'metrics'])

export class HttpApi {
  private server: Server<undefined> | undefined
  private readonly routes: Route[]
  private adminTokens: Credential[]
  private ingestTokens: Credential[]
  private accepting = false
  private inFlight = 0
  private readonly inFlightBySource = new Map<string, number>()
  /** Body bytes reserved by requests being read (declared lengths, or bytes read so far). */
  private bodyBytesInFlight = 0
  private tokenTimer: ReturnType<typeof setInterval> | undefined
  private tokenFilesValue: TokenFiles | undefined
  /** What the last reload found, to log changes once (names and digests, never tokens). */
  private tokenFingerprint = ''
  private tokenProblems = new Set<string>()
  private reloading: Promise<void> | undefined

  constructor(
    private readonly init: HttpApiInit,
    private readonly components: HttpApiComponents,
  ) {
    this.adminTokens = [{ digest: digest(init.adminToken) }]
    this.ingestTokens = [
      { digest: digest(init.adminToken) },
      ...init.ingestTokens.map((t) => ({ digest: digest(t) })),
    ]
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
    await this.startTokenReload()
    const { hostname, port } = parseListen(this.init.listen)
    this.server = Bun.serve({
      hostname,
      port,
      // Every body limit is ours, so that a 413 says why in JSON: Bun's own answer to a declared
      // length over its limit is an empty 413. Unread bodies are discarded by Bun.
      maxRequestBodySize: Number.MAX_SAFE_INTEGER,
      idleTimeout: this.init.requestTimeoutSeconds ?? REQUEST_TIMEOUT_SECONDS,
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
    if (this.tokenTimer) clearInterval(this.tokenTimer)
    this.tokenTimer = undefined
    const server = this.server
    this.server = undefined
    await server?.stop(false)
  }

  /** Read the token files now, then every `tokenReloadMs`, when the data dir is known. */
  private async startTokenReload(): Promise<void> {
    let dataDir = this.init.dataDir
    if (dataDir === undefined) {
      const status = await Promise.resolve()
        .then(() => this.components.status())
        .catch(() => undefined)
      const field = (status as { dataDir?: unknown } | undefined)?.dataDir
      if (typeof field === 'string' && field !== '') dataDir = field
    }
    if (dataDir === undefined) return
    this.tokenFilesValue = tokenFiles(dataDir)
    await this.reloadTokens()
    this.tokenTimer = setInterval(() => {
      this.reloading ??= this.reloadTokens().finally(() => {
        this.reloading = undefined
      })
    }, this.init.tokenReloadMs ?? 1000)
    this.tokenTimer.unref?.()
  }

  /**
   * Re-read `admin.token`, `tokens/ingest/*` and `tokens/retired.json`. A file that cannot be used
   * (unreadable, readable by others, too short) keeps what was in force and is logged once.
   */
  async reloadTokens(): Promise<void> {
    const files = this.tokenFilesValue
    if (!files) return
    const problems = new Set<string>()
    const log = this.components.logger
    let admin: Credential | undefined = this.adminTokens.find((token) => token.until === undefined)
    try {
      const text = await readSecretFile(files.adminToken)
      if (text.length < MIN_TOKEN_LENGTH)
        problems.add(`${files.adminToken} holds fewer than ${MIN_TOKEN_LENGTH} characters`)
      else admin = { digest: digest(text) }
    } catch (error) {
      problems.add(`${files.adminToken}: ${(error as Error).message}`)
    }
    const named = new Map<string, Credential>()
    const names = await readdir(files.ingestDir).catch(() => [] as string[])
    for (const name of names.sort()) {
      if (!INGEST_TOKEN_NAME.test(name)) continue
      const path = join(files.ingestDir, name)
      try {
        const text = await readSecretFile(path)
        if (text.length < MIN_TOKEN_LENGTH)
          problems.add(`${path} holds fewer than ${MIN_TOKEN_LENGTH} characters`)
        else named.set(name, { digest: digest(text) })
      } catch (error) {
        problems.add(`${path}: ${(error as Error).message}`)
      }
    }
    const retired: { token: string; credential: Credential }[] = []
    const now = Date.now()
    const retiredText = await readFile(files.retired, 'utf8').catch(() => undefined)
    if (retiredText !== undefined) {
      try {
        const parsed = JSON.parse(retiredText) as { retired?: unknown }
        for (const entry of Array.isArray(parsed.retired) ? parsed.retired : []) {
          const { token, sha256, until } = (entry ?? {}) as Partial<RetiredToken>
          const ends = typeof until === 'string' ? Date.parse(until) : Number.NaN
          if (typeof token !== 'string' || typeof sha256 !== 'string' || !/^[0-9a-f]{64}$/.test(sha256))
            continue
          if (!Number.isFinite(ends) || ends <= now) continue
          retired.push({ token, credential: { digest: Buffer.from(sha256, 'hex'), until: ends } })
        }
      } catch {
        problems.add(`${files.retired} is not JSON`)
      }
    }
    for (const problem of problems) {
      if (!this.tokenProblems.has(problem))
        log.warn({ problem }, 'token file not used; the tokens in force stay')
    }
    this.tokenProblems = problems
    const config = this.init.ingestTokens.map((token) => ({ digest: digest(token) }))
    const retiredAdmin = retired.filter((entry) => entry.token === 'admin').map((entry) => entry.credential)
    const retiredIngest = retired.filter((entry) => entry.token !== 'admin').map((entry) => entry.credential)
    const adminSet = admin ? [admin, ...retiredAdmin] : retiredAdmin
    this.adminTokens = adminSet
    this.ingestTokens = [...adminSet, ...config, ...named.values(), ...retiredIngest]
    const fingerprint = JSON.stringify([
      admin?.digest.toString('hex'),
      [...named].map(([name, credential]) => [name, credential.digest.toString('hex')]),
      retired.map((entry) => [entry.token, entry.credential.digest.toString('hex')]),
    ])
    if (this.tokenFingerprint !== '' && fingerprint !== this.tokenFingerprint) {
      log.info(
        { ingestTokens: [...named.keys()], retired: retired.map((entry) => entry.token) },
        'API tokens reloaded',
      )
    }
    this.tokenFingerprint = fingerprint
  }

  /** Bytes each request in flight holds against `maxBodyBytesInFlight`. */
  private readonly allowances = new WeakMap<Request, { held: number }>()

  private get bodyBudget(): number {
    return this.init.maxBodyBytesInFlight ?? Math.max(4 * this.init.maxBodyBytes, 64 * 1024 * 1024)
  }

  private readBody(request: Request): Promise<Uint8Array> {
    const holding = this.allowances.get(request)
    const allowance: BodyAllowance | undefined = holding && {
      take: (bytes) => {
        // Small bodies are bounded by the in-flight counts; one body alone may always be read.
        if (holding.held + bytes <= SMALL_BODY_BYTES || this.bodyBytesInFlight === 0) {
          holding.held += bytes
          this.bodyBytesInFlight += bytes
          return true
        }
        if (this.bodyBytesInFlight + bytes > this.bodyBudget) return false
        holding.held += bytes
        this.bodyBytesInFlight += bytes
        return true
      },
    }
    return readBody(request, this.init.maxBodyBytes, allowance)
  }

  private async handle(request: Request, server: Server<undefined>): Promise<Response> {
    let routeName = 'unknown'
    let response: Response
    const source = server.requestIP(request)?.address ?? ''
    let counted = false
    const holding = { held: 0 }
    this.allowances.set(request, holding)
    try {
      response = await this.route(request, server, (name) => {
        routeName = name
        if (UNLIMITED_ROUTES.has(name)) return
        // Refused before anything is read: a flood costs one answer per request.
        if (this.inFlight >= (this.init.maxInFlight ?? DEFAULT_MAX_IN_FLIGHT)) {
          throw new HttpError(503, 'Overloaded', 'too many requests in flight; retry shortly')
        }
        const fromSource = this.inFlightBySource.get(source) ?? 0
        if (fromSource >= (this.init.maxInFlightPerSource ?? DEFAULT_MAX_IN_FLIGHT_PER_SOURCE)) {
          throw new HttpError(
            429,
            'TooManyRequests',
            'too many requests in flight from this address; retry shortly',
          )
        }
        this.inFlight += 1
        this.inFlightBySource.set(source, fromSource + 1)
        counted = true
      })
    } catch (error) {
      response = this.toErrorResponse(error)
    } finally {
      this.bodyBytesInFlight -= holding.held
      holding.held = 0
      if (counted) {
        this.inFlight -= 1
        const left = (this.inFlightBySource.get(source) ?? 1) - 1
        if (left <= 0) this.inFlightBySource.delete(source)
        else this.inFlightBySource.set(source, left)
      }
    }
    this.components.metrics.httpRequests.inc({ route: routeName, status: String(response.status) })
    return response
  }

  private async route(
    request: Request,
    server: Server<undefined>,
    named: (name: string) => void,
  ): Promise<Response> {
    const host = parseHostHeader(request.headers.get('host'))
    let url: URL
    try {
      url = new URL(request.url)
    } catch {
      throw new HttpError(400, 'InvalidUrl', 'the request target is not a valid URL')
    }
    const declared = request.headers.get('content-length')
    if (declared !== null && Number(declared) > this.init.maxBodyBytes) {
      throw new HttpError(
        413,
        'PayloadTooLarge',
        `the body has ${declared.slice(0, 20)} bytes; the limit is ${this.init.maxBodyBytes} (api.max_body_bytes)`,
      )
    }
    const path = url.pathname
    const echoed = path.length > MAX_ECHOED_PATH ? `${path.slice(0, MAX_ECHOED_PATH)}…` : path
    const matching = this.routes.filter((route) => route.pattern.test(path))
    if (matching.length === 0) return errorResponse(404, 'NotFound', `no such path: ${echoed}`)
    const route = matching.find((candidate) => candidate.method === request.method)
    if (!route) {
      const allow = [...new Set(matching.map((candidate) => candidate.method))].join(', ')
      const message = `${request.method.slice(0, 20)} is not allowed on ${echoed}; use ${allow}`
      return errorResponse(405, 'MethodNotAllowed', message, {}, { allow })
    }
    named(route.name)
    if (!this.accepting) return errorResponse(503, 'ShuttingDown', 'the node is shutting down')
    const denied = this.authorize(request, server, route.access, host)
    if (denied) return denied
    const params = (route.pattern.exec(path) ?? []).slice(1).map(decodePathParameter)
    return route.handler(request, params, url)
  }

  /** Host names answered without a token, lower case, besides IP literals and `localhost`. */
  private get namedHosts(): ReadonlySet<string> {
    this.namedHostsValue ??= new Set(
      [parseListen(this.init.listen).hostname, ...(this.init.allowedHosts ?? [])].map(normaliseHostName),
    )
    return this.namedHostsValue
  }

  private namedHostsValue: Set<string> | undefined

  /**
   * Loopback clients read health and metrics without a token, but only under a host name a
   * DNS-rebinding page cannot use: a browser tricked into sending a stranger's page to 127.0.0.1
   * still names the stranger's host. IP literals cannot be rebound; `localhost`, the listen host
   * and `api.allowed_hosts` are the operator's. Any other name needs a token, as from afar.
   */
  private hostAnswersWithoutToken(hostname: string): boolean {
    return (
      hostname === 'localhost' ||
      hostname.startsWith('[') ||
      isIPv4(hostname) ||
      this.namedHosts.has(hostname)
    )
  }

  private authorize(
    request: Request,
    server: Server<undefined>,
    access: Access,
    host: string,
  ): Response | undefined {
    const header = request.headers.get('authorization') ?? ''
    if (access === 'open-on-loopback' && isLoopback(server.requestIP(request)?.address)) {
      if (this.hostAnswersWithoutToken(host)) return undefined
      if (header === '') {
        return errorResponse(
          421,
          'MisdirectedRequest',
          `'${host.slice(0, 100)}' is not a host name this API answers without a token: use 127.0.0.1 or localhost, ` +
            'list the name in api.allowed_hosts, or send a token',
        )
      }
    }
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
    if (error instanceof HttpError) {
      const headers: Record<string, string> = {}
      // The rest of a refused body is not wanted: close rather than read it.
      if (error.status === 413 || error.status === 429 || error.errorName === 'Overloaded')
        headers.connection = 'close'
      if (error.status === 429 || error.status === 503) headers['retry-after'] = '1'
      return errorResponse(error.status, error.errorName, error.message, error.extra, headers)
    }
    if (error instanceof ValidationError) {
      return errorResponse(400, error.name, error.message, { path: error.path, reason: error.reason })
    }
    if (error instanceof DecodeError) return errorResponse(400, error.name, error.message)
    if (error instanceof CardError) return errorResponse(400, error.name, error.message)
    if (error instanceof KeyRotationError) return errorResponse(409, error.name, error.message)
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
    if (error instanceof PublishError && STORE_FULL.test(error.message))
      return errorResponse(
        507,
        'InsufficientStorage',
        `JetStream could not store the records: ${error.message}`,
      )
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
    const body = await this.readBody(request)
    if (body.length === 0) return {}
    checkJsonDepth(body)
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
        const text = decodeText(await this.readBody(request))
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
      admin('POST', /^\/v1\/key\/rotate$/, 'key', async (request) => {
        const rotate = this.components.rotateKey
        if (!rotate) throw new HttpError(503, 'NotReady', 'this node cannot rotate its key')
        const body = await this.readJson(request)
        const graceMs = body.graceMs
        if (
          graceMs !== undefined &&
          (typeof graceMs !== 'number' || !Number.isSafeInteger(graceMs) || graceMs < 0)
        )
          throw new HttpError(
            400,
            'InvalidGrace',
            'graceMs must be a whole number of milliseconds, 0 or more',
          )
        return json(await rotate(graceMs === undefined ? {} : { graceMs }))
      }),
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
    const key = request.headers.get('idempotency-key')
    if (key !== null && !IDEMPOTENCY_KEY_PATTERN.test(key)) {
      throw new HttpError(
        400,
        'InvalidIdempotencyKey',
        'Idempotency-Key must be 1 to 255 visible ASCII characters',
      )
    }
    const body = await this.readBody(request)
    await this.requireStoreSpace(body.length)
    const type = mediaType(request)
    if (key === null) return json(await this.ingestBody(body, type, started))
    const dataPlane = this.requireDataPlane()
    this.idempotency ??= new IdempotencyStore(
      () => dataPlane.jetstream,
      () => dataPlane.replicas,
    )
    // The token that was accepted scopes the key.
    const scope = /^Bearer\s+(\S+)$/i.exec(request.headers.get('authorization') ?? '')?.[1] ?? ''
    const claim = await this.idempotency.claim(digest(scope).toString('hex'), key, type, body)
    switch (claim.kind) {
      case 'replay':
        return json(claim.answer, 200, { 'idempotent-replayed': 'true' })
      case 'in-progress':
        throw new HttpError(
          409,
          'IdempotencyKeyInUse',
          'a request with this Idempotency-Key is still being processed; retry later',
        )
      case 'other-body':
        throw new HttpError(
          422,
          'IdempotencyKeyReused',
          'this Idempotency-Key was used for another body in the last 10 minutes',
        )
    }
    let result: IngestResult
    try {
      result = await this.ingestBody(body, type, started, claim.messageId)
    } catch (error) {
      await claim.abandon().catch(() => {})
      throw error
    }
    await claim.complete(result).catch((error: Error) => {
      this.components.logger.warn(
        { err: error.message },
        'idempotent answer not kept; a repeat is deduplicated by JetStream',
      )
    })
    return json(result)
  }

  private idempotency: IdempotencyStore | undefined

  /**
   * Refuse ingest (507) while the embedded JetStream store's filesystem is nearly full, before
   * anything is published: nats-server answers a full disk slowly (2.10: about 20 refusals a
   * second, so a batch waits out the publish timeout) or stops storing on that stream until it
   * restarts (2.11 and later: "critical write error"). Ingest resumes by itself once space
   * returns. With an external NATS there is no local store to look at.
   */
  private async requireStoreSpace(bodyBytes: number): Promise<void> {
    const dir = await this.storeDir()
    const fs = dir === null ? undefined : await statfs(dir).catch(() => undefined)
    if (!fs) return
    const free = fs.bavail * fs.bsize
    const size = fs.blocks * fs.bsize
    const reserve = Math.min(
      STORE_RESERVE.maxBytes,
      Math.max(STORE_RESERVE.minBytes, Math.round(size * STORE_RESERVE.share)),
    )
    // A stored record takes at most about four times its share of the body (subject, headers).
    if (free >= reserve + 4 * bodyBytes) return
    const mib = (bytes: number) => (bytes / 1024 / 1024).toFixed(1)
    throw new HttpError(
      507,
      'InsufficientStorage',
      `the JetStream store has ${mib(free)} MiB free, below the ${mib(reserve)} MiB kept in reserve plus ` +
        "this request's records; nothing was stored, and ingest resumes by itself when space returns",
      { freeBytes: free, reserveBytes: reserve },
    )
  }

  private storeDirValue: Promise<string | null> | undefined

  /** The embedded JetStream store (`<data-dir>/nats/jetstream`), or null with an external NATS. */
  private storeDir(): Promise<string | null> {
    this.storeDirValue ??= Promise.resolve()
      .then(() => this.components.status())
      .then((status) => {
        const known = status as { dataDir?: unknown; nats?: { embedded?: unknown } } | undefined
        return typeof known?.dataDir === 'string' && known.nats?.embedded === true
          ? join(known.dataDir, 'nats', 'jetstream')
          : null
      })
      .catch(() => {
        this.storeDirValue = undefined
        return null
      })
    return this.storeDirValue
  }

  /** Parse, check and store one body; with `messageId`, each record carries its Nats-Msg-Id. */
  private async ingestBody(
    body: Uint8Array,
    type: string,
    started: number,
    messageId?: (index: number) => string,
  ): Promise<IngestResult> {
    const candidates = parseIngestBody(body, type, this.init.maxRecords ?? DEFAULT_MAX_RECORDS)
    const { records, indices, result } = validateRecords(candidates)
    if (records.length > 0) {
      const dataPlane = this.requireDataPlane()
      if (messageId === undefined) await dataPlane.publishTelemetry(records)
      else {
        const messages: OutgoingMessage[] = records.map((record, i) => {
          const headers = natsHeaders()
          headers.set('Nats-Msg-Id', messageId(indices[i]!))
          return {
            subject: subjects.telemetry(record.kind, record.rid, record.q),
            payload: encodeTelemetryPayload(record),
            headers,
          }
        })
        await dataPlane.publishConfirmed(messages)
      }
    }
    const { ingestRecords, ingestBatchSeconds } = this.components.metrics
    ingestRecords.inc({ result: 'accepted' }, result.accepted)
    if (result.rejected > 0) ingestRecords.inc({ result: 'rejected' }, result.rejected)
    ingestBatchSeconds.observe((performance.now() - started) / 1000)
    return result
  }

  private async putResource(request: Request, params: string[]): Promise<Response> {
    const body = await this.readBody(request)
    const type = mediaType(request)
    let input: unknown
    if (type === 'application/cbor') input = decodeCbor(body)
    else if (type === 'application/json' || type === '') {
      checkJsonDepth(body)
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
