/**
 * The VTN transport: one HTTP listener (Bun.serve) serving OpenADR 3.1.0 under
 * `/openadr3/3.1.0` and 3.0.1 under `/openadr3/3.0.1`. For each request, in this order: the
 * operation is found in the version's OpenAPI document (404, 405), the body is read within its
 * size bound (413) and parsed (400), the bearer token is checked where the document asks for
 * one (401, or 403 where the document lists no 401, as 3.0.1 does), the query is read and
 * validated against the operation's parameters (400), and the handler runs. Every answer is
 * validated against the document (status listed for the operation, body against its schema)
 * before it leaves: a body that does not fit is logged and answered with 500, never sent.
 * Error bodies are the document's `problem`.
 */
import type { Server } from 'bun'
import type { Logger } from '../../data-plane/index.ts'
import { MAX_JSON_DEPTH, nestsDeeperThan } from '../../data-plane/json-depth.ts'
import type { VersionCodec } from './codec.ts'
import { BASE_PATHS } from './config.ts'
import {
  type Contract,
  contractFor,
  OPENADR_VERSIONS,
  type OpenAdrVersion,
  type Operation,
} from './contract.ts'
import { OpenAdrListenError } from './errors.ts'
import type { Client } from './model.ts'
import { v301 } from './v301.ts'
import { v310 } from './v310.ts'

export const CODECS: Record<OpenAdrVersion, VersionCodec> = { '3.1.0': v310, '3.0.1': v301 }

/** Operations that need no bearer token (the document gives them no `security`). */
const OPEN_OPERATIONS = new Set(['fetchToken', 'getAuthServerInfo'])

export interface VtnRequest {
  version: OpenAdrVersion
  codec: VersionCodec
  contract: Contract
  operation: Operation
  params: Record<string, string>
  query: Record<string, unknown>
  /** Parsed JSON, or the form for form-encoded bodies; undefined without a body. */
  body: unknown
  form?: URLSearchParams
  headers: Headers
  client?: Client
  /** `http://host:port/openadr3/<version>` as the client reached it. */
  baseUrl: string
}

export interface VtnResponse {
  status: number
  body?: unknown
  headers?: Record<string, string>
}

export interface ProblemInit {
  status: number
  title?: string
  detail?: string
  /** Extra members (RFC 6749 `error` on the token endpoint). */
  extra?: Record<string, unknown>
  headers?: Record<string, string>
}

const TITLES: Record<number, string> = {
  400: 'Bad Request',
  401: 'Unauthorized',
  403: 'Forbidden',
  404: 'Not Found',
  405: 'Method Not Allowed',
  409: 'Conflict',
  413: 'Content Too Large',
  415: 'Unsupported Media Type',
  500: 'Internal Server Error',
  501: 'Not Implemented',
}

export function problem(init: ProblemInit): VtnResponse {
  return {
    status: init.status,
    body: {
      type: 'about:blank',
      title: init.title ?? TITLES[init.status] ?? 'Error',
      status: init.status,
      ...(init.detail ? { detail: init.detail.slice(0, 1000) } : {}),
      ...init.extra,
    },
    headers: { 'content-type': 'application/problem+json', ...init.headers },
  }
}

export interface VtnServerInit {
  host: string
  port: number
  maxBodyBytes: number
}

export interface VtnServerComponents {
  logger: Logger
  /** The client behind a bearer token, if valid. */
  authenticate(token: string | undefined): Promise<Client | undefined>
  handle(request: VtnRequest): Promise<VtnResponse>
  onResponse?(operation: string, status: number): void
  onInvalidResponse?(operation: string): void
}

class BodyTooLarge extends Error {}

async function readBody(request: Request, limit: number): Promise<Uint8Array> {
  const declared = request.headers.get('content-length')
  if (declared !== null && Number(declared) > limit) throw new BodyTooLarge()
  if (!request.body) return new Uint8Array()
  const reader = request.body.getReader()
  const chunks: Uint8Array[] = []
  let size = 0
  while (true) {
    const { value, done } = await reader.read()
    if (done) break
    size += value.byteLength
    if (size > limit) {
      await reader.cancel().catch(() => {})
      throw new BodyTooLarge()
    }
    chunks.push(value)
  }
  return Buffer.concat(chunks)
}

/** Longest a request may take to arrive whole (a slowloris defence); bodies are small here. */
export const REQUEST_TIMEOUT_SECONDS = 15

export class VtnServer {
  private server: Server<undefined> | undefined

  constructor(
    private readonly init: VtnServerInit,
    private readonly components: VtnServerComponents,
  ) {}

  get address(): { host: string; port: number } | undefined {
    return this.server ? { host: this.init.host, port: this.server.port! } : undefined
  }

  async start(options: { signal?: AbortSignal } = {}): Promise<void> {
    if (this.server) return
    options.signal?.throwIfAborted()
    for (const version of OPENADR_VERSIONS) contractFor(version)
    try {
      this.server = Bun.serve({
        hostname: this.init.host,
        port: this.init.port,
        // Bun refuses far larger bodies itself; up to here the transport answers with a problem.
        maxRequestBodySize: this.init.maxBodyBytes * 4 + 65_536,
        // Seconds from a request's first byte to its last body byte, and for an idle kept-alive
        // connection; an unfinished request head is closed by Bun after about 10 s.
        idleTimeout: REQUEST_TIMEOUT_SECONDS,
        fetch: (request) => this.respond(request),
        error: (error) => {
          this.components.logger.error({ err: error.message }, 'openadr request failed')
          return this.send(undefined, problem({ status: 500 }))
        },
      })
    } catch (error) {
      throw new OpenAdrListenError(
        `cannot listen on ${this.init.host}:${this.init.port}: ${(error as Error).message}`,
        {
          cause: error,
        },
      )
    }
  }

  async stop(): Promise<void> {
    const server = this.server
    this.server = undefined
    await server?.stop(true)
  }

  private send(
    contract: { contract: Contract; operation: Operation } | undefined,
    response: VtnResponse,
  ): Response {
    let { status, body } = response
    let headers = response.headers ?? {}
    if (contract && body !== undefined) {
      const { operation } = contract
      if (operation.statuses.has(status)) {
        const errors = contract.contract.validateResponse(operation, status, body)
        if (errors.length > 0) {
          this.components.logger.error(
            { operation: operation.id, status, errors, version: contract.contract.version },
            'openadr answer does not fit the OpenAPI document: not sent',
          )
          this.components.onInvalidResponse?.(operation.id)
          const replaced = problem({ status: 500, detail: 'the answer did not fit the OpenAPI document' })
          status = replaced.status
          body = replaced.body
          headers = replaced.headers ?? {}
        }
      }
      this.components.onResponse?.(operation.id, status)
    }
    const json = body === undefined ? null : JSON.stringify(body)
    return new Response(json, {
      status,
      headers: { 'content-type': 'application/json', 'cache-control': 'no-store', ...headers },
    })
  }

  private async respond(request: Request): Promise<Response> {
    const url = new URL(request.url)
    const version = OPENADR_VERSIONS.find(
      (candidate) =>
        url.pathname === BASE_PATHS[candidate] || url.pathname.startsWith(`${BASE_PATHS[candidate]}/`),
    )
    if (!version) {
      await request.body?.cancel().catch(() => {})
      return this.send(
        undefined,
        problem({
          status: 404,
          detail: `OpenADR 3 is served under ${Object.values(BASE_PATHS).join(' and ')}`,
        }),
      )
    }
    const contract = contractFor(version)
    const path = url.pathname.slice(BASE_PATHS[version].length) || '/'
    let matched: ReturnType<Contract['match']>
    try {
      matched = contract.match(request.method, path.length > 1 ? path.replace(/\/+$/, '') : path)
    } catch {
      return this.send(undefined, problem({ status: 400, detail: 'malformed path' }))
    }
    if ('status' in matched) {
      await request.body?.cancel().catch(() => {})
      return this.send(
        undefined,
        problem({
          status: matched.status,
          detail:
            matched.status === 404
              ? `no such path in OpenADR ${version}`
              : `allowed: ${matched.allowed!.join(', ')}`,
          ...(matched.allowed ? { headers: { allow: matched.allowed.join(', ') } } : {}),
        }),
      )
    }
    const { operation, params } = matched
    const scope = { contract, operation }
    for (const value of Object.values(params)) {
      if (!/^[a-zA-Z0-9_-]{1,128}$/.test(value))
        return this.send(
          scope,
          problem({ status: 400, detail: 'a path id is letters, digits, _ and - (at most 128)' }),
        )
    }
    // Body first (its bound holds for everyone), then who is asking.
    let raw: Uint8Array
    try {
      raw = await readBody(request, this.init.maxBodyBytes)
    } catch (error) {
      if (error instanceof BodyTooLarge) {
        return this.send(
          undefined,
          problem({ status: 413, detail: `request bodies are at most ${this.init.maxBodyBytes} bytes` }),
        )
      }
      return this.send(scope, problem({ status: 400, detail: 'the request body could not be read' }))
    }
    let client: Client | undefined
    if (!OPEN_OPERATIONS.has(operation.id)) {
      const header = request.headers.get('authorization')
      const token = header ? /^Bearer\s+(\S+)\s*$/i.exec(header)?.[1] : undefined
      client = await this.components.authenticate(token)
      if (!client) {
        return this.send(
          scope,
          problem({
            status: contract.status(operation, 401, 403),
            detail: token ? 'the bearer token is unknown or expired' : 'a bearer token is required',
            headers: {
              'www-authenticate': token ? 'Bearer error="invalid_token"' : 'Bearer',
            },
          }),
        )
      }
    }
    let body: unknown
    let form: URLSearchParams | undefined
    if (raw.byteLength > 0) {
      const type = (request.headers.get('content-type') ?? '').split(';')[0]!.trim().toLowerCase()
      const text = new TextDecoder().decode(raw)
      if (type === 'application/x-www-form-urlencoded') {
        form = new URLSearchParams(text)
      } else {
        if (type !== '' && type !== 'application/json' && !type.endsWith('+json')) {
          return this.send(
            scope,
            problem({ status: 400, detail: `content-type ${type} is not application/json` }),
          )
        }
        if (nestsDeeperThan(text, MAX_JSON_DEPTH)) {
          return this.send(
            scope,
            problem({ status: 400, detail: `the body nests deeper than ${MAX_JSON_DEPTH} levels` }),
          )
        }
        try {
          body = JSON.parse(text)
        } catch (error) {
          return this.send(
            scope,
            problem({ status: 400, detail: `the body is not JSON: ${(error as Error).message}` }),
          )
        }
      }
    }
    const query = contract.parseQuery(operation, url.searchParams)
    if ('errors' in query) return this.send(scope, problem({ status: 400, detail: query.errors.join('; ') }))
    const forwarded = request.headers.get('host') ?? `${this.init.host}:${this.server?.port}`
    try {
      const response = await this.components.handle({
        version,
        codec: CODECS[version],
        contract,
        operation,
        params,
        query: query.value,
        body,
        ...(form ? { form } : {}),
        headers: request.headers,
        ...(client ? { client } : {}),
        baseUrl: `${url.protocol}//${forwarded}${BASE_PATHS[version]}`,
      })
      return this.send(scope, response)
    } catch (error) {
      this.components.logger.error(
        { operation: operation.id, err: (error as Error).message },
        'openadr request failed',
      )
      return this.send(scope, problem({ status: 500 }))
    }
  }
}
