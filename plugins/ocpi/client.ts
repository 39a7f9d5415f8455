/**
 * The OCPI transport, client side: requests to a partner's endpoints with its credentials token
 * (`Authorization: Token <base64>`; with `encoding: 'auto'` a 401 is retried once with the raw
 * token, for 2.1.1-era servers, and the caller learns which form worked), fresh
 * `X-Request-ID`/`X-Correlation-ID`, the routing headers for functional modules, a deadline,
 * and a bound on the answer's size. The answer must be an OCPI envelope with a 1xxx status;
 * anything else is an OcpiRequestError carrying the HTTP and OCPI statuses. Paginated GETs are
 * followed page by page through their `Link: <…>; rel="next"` headers.
 */
import type * as z from 'zod'
import { OcpiRequestError } from './errors.ts'
import { describeIssues } from './v221.ts'

export type TokenEncoding = 'base64' | 'raw'

export interface Party {
  country_code: string
  party_id: string
}

export interface OcpiClientInit {
  timeoutMs: number
  /** Our own party (OCPI-from-* on functional modules). */
  party: Party
  maxResponseBytes?: number
}

export interface RequestOptions<T> {
  token: string
  encoding?: TokenEncoding | 'auto'
  body?: unknown
  /** The party addressed (OCPI-to-*); set for functional modules only. */
  to?: Party | undefined
  /** Parse `data` with this schema (lenient in); without it, `data` is returned as it came. */
  schema?: z.ZodType<T>
  /** Without `data` in the answer, this is what `data` is (PUT answers often carry none). */
  correlationId?: string
  signal?: AbortSignal
}

export interface OcpiAnswer<T> {
  data: T
  status: number
  ocpiStatus: number
  message: string | undefined
  headers: Headers
  /** The token form the partner accepted. */
  encoding: TokenEncoding
}

export const encodeToken = (token: string, encoding: TokenEncoding): string =>
  encoding === 'base64' ? Buffer.from(token, 'utf8').toString('base64') : token

/** `<https://…?offset=100&limit=100>; rel="next"` → the URL. */
export function nextLink(header: string | null): string | undefined {
  if (!header) return undefined
  for (const part of header.split(/,(?=\s*<)/)) {
    const match = /<([^>]+)>\s*;(.*)$/.exec(part.trim())
    if (match && /rel\s*=\s*"?next"?/i.test(match[2]!)) return match[1]
  }
  return undefined
}

export class OcpiClient {
  constructor(private readonly init: OcpiClientInit) {}

  async request<T = unknown>(
    method: string,
    url: string,
    options: RequestOptions<T>,
  ): Promise<OcpiAnswer<T>> {
    const first: TokenEncoding = options.encoding === 'raw' ? 'raw' : 'base64'
    try {
      return await this.once(method, url, options, first)
    } catch (error) {
      if (options.encoding === 'auto' && error instanceof OcpiRequestError && error.httpStatus === 401)
        return this.once(method, url, options, 'raw')
      throw error
    }
  }

  private async once<T>(
    method: string,
    url: string,
    options: RequestOptions<T>,
    encoding: TokenEncoding,
  ): Promise<OcpiAnswer<T>> {
    const headers: Record<string, string> = {
      authorization: `Token ${encodeToken(options.token, encoding)}`,
      'x-request-id': crypto.randomUUID(),
      'x-correlation-id': options.correlationId ?? crypto.randomUUID(),
      accept: 'application/json',
    }
    if (options.to) {
      headers['ocpi-from-country-code'] = this.init.party.country_code
      headers['ocpi-from-party-id'] = this.init.party.party_id
      headers['ocpi-to-country-code'] = options.to.country_code
      headers['ocpi-to-party-id'] = options.to.party_id
    }
    if (options.body !== undefined) headers['content-type'] = 'application/json'
    const signals = [AbortSignal.timeout(this.init.timeoutMs)]
    if (options.signal) signals.push(options.signal)
    let response: Response
    try {
      response = await fetch(url, {
        method,
        headers,
        ...(options.body === undefined ? {} : { body: JSON.stringify(options.body) }),
        signal: AbortSignal.any(signals),
        redirect: 'error',
      })
    } catch (error) {
      const reason = (error as Error).name === 'TimeoutError' ? 'no answer in time' : (error as Error).message
      throw new OcpiRequestError(url, undefined, undefined, `${method} failed: ${reason}`, { cause: error })
    }
    const limit = this.init.maxResponseBytes ?? 64 * 1024 * 1024
    const text = await readText(response, limit).catch((error: Error) => {
      throw new OcpiRequestError(url, response.status, undefined, error.message, { cause: error })
    })
    let parsed: { data?: unknown; status_code?: unknown; status_message?: unknown } | undefined
    try {
      parsed = text.length > 0 ? JSON.parse(text) : undefined
    } catch {
      parsed = undefined
    }
    const ocpiStatus = typeof parsed?.status_code === 'number' ? parsed.status_code : undefined
    const message =
      typeof parsed?.status_message === 'string' ? parsed.status_message.slice(0, 300) : undefined
    if (!response.ok) {
      throw new OcpiRequestError(
        url,
        response.status,
        ocpiStatus,
        `${method} answered HTTP ${response.status}${ocpiStatus ? ` (OCPI ${ocpiStatus})` : ''}${message ? `: ${message}` : ''}`,
      )
    }
    if (!parsed || typeof parsed !== 'object' || ocpiStatus === undefined)
      throw new OcpiRequestError(
        url,
        response.status,
        undefined,
        `${method} answered without an OCPI envelope`,
      )
    if (ocpiStatus < 1000 || ocpiStatus > 1999) {
      throw new OcpiRequestError(
        url,
        response.status,
        ocpiStatus,
        `${method} answered OCPI ${ocpiStatus}${message ? `: ${message}` : ''}`,
      )
    }
    let data = parsed.data as T
    if (options.schema) {
      const result = options.schema.safeParse(parsed.data)
      if (!result.success) {
        throw new OcpiRequestError(
          url,
          response.status,
          ocpiStatus,
          `${method} answered data that does not fit: ${describeIssues(result.error)}`,
        )
      }
      data = result.data
    }
    return { data, status: response.status, ocpiStatus, message, headers: response.headers, encoding }
  }

  /**
   * GET a paginated list, one page at a time from `url` on. Each page's raw objects come with the
   * URL of the page after it (undefined on the last), so a caller can remember where it was.
   */
  async *pages(
    url: string,
    options: Omit<RequestOptions<unknown>, 'schema' | 'body'>,
  ): AsyncGenerator<{ url: string; items: unknown[]; next: string | undefined; total: number | undefined }> {
    let current: string | undefined = url
    const seen = new Set<string>()
    while (current) {
      if (seen.has(current)) throw new OcpiRequestError(current, undefined, undefined, 'pagination loops')
      seen.add(current)
      const answer: OcpiAnswer<unknown> = await this.request('GET', current, options)
      if (!Array.isArray(answer.data))
        throw new OcpiRequestError(current, answer.status, answer.ocpiStatus, 'a list was expected')
      const total = Number(answer.headers.get('x-total-count') ?? Number.NaN)
      const next = nextLink(answer.headers.get('link'))
      yield {
        url: current,
        items: answer.data,
        next: next ? new URL(next, current).toString() : undefined,
        total: Number.isFinite(total) ? total : undefined,
      }
      current = next && answer.data.length > 0 ? new URL(next, current).toString() : undefined
    }
  }
}

async function readText(response: Response, limit: number): Promise<string> {
  const declared = Number(response.headers.get('content-length') ?? Number.NaN)
  if (Number.isFinite(declared) && declared > limit) throw new Error(`answer larger than ${limit} bytes`)
  if (!response.body) return ''
  const reader = response.body.getReader()
  const chunks: Uint8Array[] = []
  let size = 0
  while (true) {
    const { value, done } = await reader.read()
    if (done) break
    size += value.byteLength
    if (size > limit) {
      await reader.cancel().catch(() => {})
      throw new Error(`answer larger than ${limit} bytes`)
    }
    chunks.push(value)
  }
  return Buffer.concat(chunks).toString('utf8')
}
