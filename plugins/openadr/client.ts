/**
 * The VEN transport: requests to a VTN by the operation ids of the version's OpenAPI document.
 * Every request body and query is validated against the document before it is sent (strict
 * out: a request that does not fit throws OpenAdrContractError and is not sent); answers are
 * checked too and a misfit is reported to the caller's logger, not refused (lenient in).
 *
 * Tokens: OAuth2 client credentials at the token URL (config `token_url`, else the VTN's
 * `GET /auth/server` answer in 3.1.0, else `<vtn_url>/auth/token`), credentials in the form body.
 * A token is reused until shortly before it expires; an answer of 401 (or 403 to a request that
 * carried a token the VTN may have forgotten) gets one new token and one retry.
 */
import type { Logger } from '../../data-plane/index.ts'
import { type Contract, contractFor, type OpenAdrVersion, type Operation } from './contract.ts'
import { OpenAdrContractError, VtnRequestError } from './errors.ts'

export interface VtnClientInit {
  baseUrl: string
  version: OpenAdrVersion
  clientId: string
  clientSecret: string
  tokenUrl?: string | undefined
  timeoutMs: number
}

export interface VtnClientComponents {
  logger: Logger
  fetch?: typeof fetch
}

export interface VtnAnswer<T = unknown> {
  status: number
  body: T
  /** Seconds the VTN asked to wait (Retry-After), if it did. */
  retryAfterS?: number
}

export class VtnClient {
  readonly contract: Contract
  private token: { value: string; expiresAt: number } | undefined
  private tokenUrl: string | undefined
  private readonly fetch: typeof fetch
  private readonly base: string

  constructor(
    private readonly init: VtnClientInit,
    private readonly components: VtnClientComponents,
  ) {
    this.contract = contractFor(init.version)
    this.fetch = components.fetch ?? fetch
    this.base = init.baseUrl.replace(/\/+$/, '')
    this.tokenUrl = init.tokenUrl
  }

  /** Call an operation; throws VtnRequestError for answers other than 2xx. */
  async call<T = unknown>(
    operationId: string,
    input: { params?: Record<string, string>; query?: Record<string, unknown>; body?: unknown } = {},
    options: { signal?: AbortSignal } = {},
  ): Promise<VtnAnswer<T>> {
    const operation = this.contract.operation(operationId)
    const url = this.url(operation, input.params ?? {}, input.query ?? {})
    if (input.body !== undefined) {
      const errors = this.contract.validateRequest(operation, input.body)
      if (errors.length > 0) throw new OpenAdrContractError('openadr-ven', errors, `${operationId} request`)
    }
    let answer = await this.send(operation, url, input.body, false, options)
    if (answer.status === 401 || (answer.status === 403 && operationId !== 'fetchToken' && this.token)) {
      this.token = undefined
      answer = await this.send(operation, url, input.body, true, options)
    }
    if (answer.status < 200 || answer.status >= 300) {
      const detail =
        typeof answer.body === 'object' && answer.body !== null
          ? String(
              (answer.body as { detail?: unknown; title?: unknown }).detail ??
                (answer.body as { title?: unknown }).title ??
                '',
            )
          : ''
      throw new VtnRequestError(
        answer.status,
        `${operationId}: ${answer.status}${detail ? ` ${detail}` : ''}`,
        {
          retryAfterS: answer.retryAfterS,
        },
      )
    }
    const errors = this.contract.validateResponse(operation, answer.status, answer.body)
    if (errors.length > 0) {
      this.components.logger.warn(
        { operation: operationId, errors },
        'VTN answer does not fit the OpenAPI document (used anyway)',
      )
    }
    return answer as VtnAnswer<T>
  }

  private url(operation: Operation, params: Record<string, string>, query: Record<string, unknown>): string {
    const checked = this.contract.parseQuery(operation, toSearch(query))
    if ('errors' in checked)
      throw new OpenAdrContractError('openadr-ven', checked.errors, `${operation.id} query`)
    const path = operation.template.replace(/\{([^}]+)\}/g, (_all, name: string) => {
      const value = params[name]
      if (value === undefined)
        throw new OpenAdrContractError('openadr-ven', [`${name} is missing`], `${operation.id} path`)
      return encodeURIComponent(value)
    })
    const search = toSearch(query).toString()
    return `${this.base}${path}${search ? `?${search}` : ''}`
  }

  private async send(
    operation: Operation,
    url: string,
    body: unknown,
    fresh: boolean,
    options: { signal?: AbortSignal },
  ): Promise<VtnAnswer> {
    const headers: Record<string, string> = { accept: 'application/json' }
    headers.authorization = `Bearer ${await this.accessToken(fresh, options)}`
    if (body !== undefined) headers['content-type'] = 'application/json'
    return this.exchange(url, {
      method: operation.method,
      headers,
      ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
      ...options,
    })
  }

  private async exchange(url: string, init: RequestInit & { signal?: AbortSignal }): Promise<VtnAnswer> {
    const signal = AbortSignal.any([
      ...(init.signal ? [init.signal] : []),
      AbortSignal.timeout(this.init.timeoutMs),
    ])
    let response: Response
    try {
      response = await this.fetch(url, { ...init, signal, redirect: 'error' })
    } catch (error) {
      throw new VtnRequestError(
        undefined,
        `${init.method ?? 'GET'} ${redactUrl(url)}: ${(error as Error).message}`,
        {
          cause: error,
        },
      )
    }
    const text = await response.text()
    let parsed: unknown = text
    try {
      parsed = text === '' ? undefined : JSON.parse(text)
    } catch {
      // Not JSON: kept as text for the error message.
    }
    const retryAfter = response.headers.get('retry-after')
    return {
      status: response.status,
      body: parsed,
      ...(retryAfter && /^\d{1,6}$/.test(retryAfter) ? { retryAfterS: Number(retryAfter) } : {}),
    }
  }

  /** A valid bearer token (fetching one when needed). */
  async accessToken(fresh = false, options: { signal?: AbortSignal } = {}): Promise<string> {
    if (!fresh && this.token && this.token.expiresAt > Date.now()) return this.token.value
    const tokenUrl = await this.discoverTokenUrl(options)
    const operation = this.contract.operation('fetchToken')
    const form = {
      grant_type: 'client_credentials',
      client_id: this.init.clientId,
      client_secret: this.init.clientSecret,
    }
    const errors = this.contract.validateRequest(operation, form)
    if (errors.length > 0) throw new OpenAdrContractError('openadr-ven', errors, 'token request')
    const answer = await this.exchange(tokenUrl, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded', accept: 'application/json' },
      body: new URLSearchParams(form).toString(),
      ...options,
    })
    if (answer.status !== 200)
      throw new VtnRequestError(answer.status, `token request refused: ${answer.status}`)
    const token = answer.body as { access_token?: unknown; expires_in?: unknown }
    if (typeof token?.access_token !== 'string')
      throw new VtnRequestError(answer.status, 'token answer has no access_token')
    const lifetimeS = typeof token.expires_in === 'number' && token.expires_in > 0 ? token.expires_in : 3600
    // Renew a little early (10 % of the lifetime, at most a minute).
    this.token = {
      value: token.access_token,
      expiresAt: Date.now() + lifetimeS * 1000 - Math.min(60_000, lifetimeS * 100),
    }
    return this.token.value
  }

  private async discoverTokenUrl(options: { signal?: AbortSignal }): Promise<string> {
    if (this.tokenUrl) return this.tokenUrl
    const fallback = `${this.base}/auth/token`
    if (this.init.version === '3.1.0') {
      try {
        const answer = await this.exchange(`${this.base}/auth/server`, { method: 'GET', ...options })
        const tokenURL = (answer.body as { tokenURL?: unknown } | undefined)?.tokenURL
        if (answer.status === 200 && typeof tokenURL === 'string') {
          this.tokenUrl = new URL(tokenURL, `${this.base}/`).toString()
          return this.tokenUrl
        }
      } catch (error) {
        if (error instanceof VtnRequestError && error.status === undefined) throw error
      }
    }
    this.tokenUrl = fallback
    return fallback
  }
}

function toSearch(query: Record<string, unknown>): URLSearchParams {
  const search = new URLSearchParams()
  for (const [key, value] of Object.entries(query)) {
    if (value === undefined) continue
    if (Array.isArray(value)) for (const item of value) search.append(key, String(item))
    else search.append(key, String(value))
  }
  return search
}

function redactUrl(url: string): string {
  try {
    const parsed = new URL(url)
    return `${parsed.protocol}//${parsed.host}${parsed.pathname}`
  } catch {
    return '(invalid url)'
  }
}
