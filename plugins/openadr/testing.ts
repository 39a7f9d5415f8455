/**
 * Test support for the OpenADR plugins (not part of the plugins themselves): a plain
 * fetch-based OpenADR client, as a third-party VEN or BL would be, and a webhook receiver.
 */
import { contractFor, type OpenAdrVersion } from './contract.ts'

export interface RawAnswer {
  status: number
  body: unknown
  headers: Headers
}

export class RawOpenAdrClient {
  token: string | undefined

  constructor(
    readonly base: string,
    readonly version: OpenAdrVersion,
    readonly clientId: string,
    readonly secret: string,
  ) {}

  get url(): string {
    return `${this.base}/openadr3/${this.version}`
  }

  async login(how: 'form' | 'basic' = 'form'): Promise<string> {
    const form = new URLSearchParams({ grant_type: 'client_credentials' })
    const headers: Record<string, string> = { 'content-type': 'application/x-www-form-urlencoded' }
    if (how === 'form') {
      form.set('client_id', this.clientId)
      form.set('client_secret', this.secret)
    } else {
      headers.authorization = `Basic ${Buffer.from(`${encodeURIComponent(this.clientId)}:${encodeURIComponent(this.secret)}`).toString('base64')}`
    }
    const response = await fetch(`${this.url}/auth/token`, { method: 'POST', headers, body: form.toString() })
    const body = (await response.json()) as { access_token?: string }
    if (response.status !== 200 || !body.access_token)
      throw new Error(`login ${this.clientId}: ${response.status} ${JSON.stringify(body)}`)
    this.token = body.access_token
    return this.token
  }

  async request(
    method: string,
    path: string,
    body?: unknown,
    options: { token?: string | null; raw?: string; headers?: Record<string, string> } = {},
  ): Promise<RawAnswer> {
    const headers: Record<string, string> = { ...options.headers }
    const token = options.token === undefined ? this.token : options.token
    if (token) headers.authorization = `Bearer ${token}`
    let payload: string | undefined = options.raw
    if (body !== undefined) payload = JSON.stringify(body)
    if (payload !== undefined) headers['content-type'] ??= 'application/json'
    const response = await fetch(`${this.url}${path}`, {
      method,
      headers,
      ...(payload !== undefined ? { body: payload } : {}),
    })
    const text = await response.text()
    let parsed: unknown = text
    try {
      parsed = text === '' ? undefined : JSON.parse(text)
    } catch {
      // keep text
    }
    return { status: response.status, body: parsed, headers: response.headers }
  }

  get = (path: string) => this.request('GET', path)
  post = (path: string, body: unknown) => this.request('POST', path, body)
  put = (path: string, body: unknown) => this.request('PUT', path, body)
  delete = (path: string) => this.request('DELETE', path)

  /** Problems of an answer against the document (the operation found by method and path). */
  check(method: string, path: string, answer: RawAnswer): string[] {
    const contract = contractFor(this.version)
    const matched = contract.match(method, path.split('?')[0]!)
    if ('status' in matched) return [`${method} ${path} is no operation`]
    return contract.validateResponse(matched.operation, answer.status, answer.body)
  }
}

export interface WebhookReceiver {
  url: string
  received: { body: Record<string, unknown>; authorization: string | null }[]
  /** Answer this status to the next N requests (to test retries). */
  failNext(count: number, status?: number): void
  stop(): void
}

export function startWebhookReceiver(): WebhookReceiver {
  const received: WebhookReceiver['received'] = []
  let failures = 0
  let failStatus = 503
  const server = Bun.serve({
    hostname: '127.0.0.1',
    port: 0,
    fetch: async (request) => {
      const body = (await request.json()) as Record<string, unknown>
      if (failures > 0) {
        failures -= 1
        return new Response('busy', { status: failStatus })
      }
      received.push({ body, authorization: request.headers.get('authorization') })
      return new Response(null, { status: 200 })
    },
  })
  return {
    url: `http://127.0.0.1:${server.port}/callback`,
    received,
    failNext: (count, status = 503) => {
      failures = count
      failStatus = status
    },
    stop: () => void server.stop(true),
  }
}

/** A parsed JSON answer, for tests that poke into it (each answer is checked against the document). */
// biome-ignore lint/suspicious/noExplicitAny: test assertions read JSON answers field by field.
export type AnyJson = any
