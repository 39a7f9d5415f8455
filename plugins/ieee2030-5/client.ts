/**
 * The transport: HTTPS with mutual TLS to the utility server, as IEEE 2030.5 / CSIP-AUS require.
 * The client presents the configured certificate and key and trusts only the configured CA.
 * 2030.5 mandates TLS 1.2 with ECDHE-ECDSA-AES128-CCM8; Bun (BoringSSL) and Node offer no CCM
 * suites, so the client offers TLS 1.2 with ECDHE-ECDSA-AES128-GCM-SHA256 first and the other
 * ECDHE-ECDSA AEAD suites after it (servers in the field accept GCM; a CCM8-only server cannot be
 * reached). Hrefs are resolved against the server URL; the client never builds paths itself.
 */
import { readFile } from 'node:fs/promises'
import { Agent, request } from 'node:https'
import { CONTENT_TYPE, type ParsedXml, parseXml } from './codec.ts'
import { CsipCertificateError, CsipTransportError } from './errors.ts'
import { lfdiFromCertificate } from './identity.ts'

export const CIPHERS = [
  'ECDHE-ECDSA-AES128-GCM-SHA256',
  'ECDHE-ECDSA-AES256-GCM-SHA384',
  'ECDHE-ECDSA-CHACHA20-POLY1305',
].join(':')

export interface CsipTransportInit {
  /** The DeviceCapability URL; hrefs are resolved against it. */
  server: string
  cert: string
  key: string
  ca: string
  timeoutSeconds: number
  maxBodyBytes: number
}

export interface HttpAnswer {
  status: number
  location?: string
  body: string
}

/** A request seen by the transport, for logs and metrics. */
export type RequestListener = (info: {
  method: string
  href: string
  status?: number
  ms: number
  error?: string
}) => void

export class CsipTransport {
  private agent: Agent | undefined
  /** LFDI of the client certificate. */
  lfdi = ''
  /** The PEMs as read at start (the notification listener presents the same certificate). */
  pems: { cert: string; key: string; ca: string } | undefined
  private listener: RequestListener = () => {}

  constructor(private readonly init: CsipTransportInit) {}

  /** Read the PEM files and set up the TLS agent. */
  async start(): Promise<void> {
    const read = async (what: string, path: string) => {
      try {
        return await readFile(path, 'utf8')
      } catch (error) {
        throw new CsipCertificateError(`cannot read ${what} '${path}': ${(error as Error).message}`, {
          cause: error,
        })
      }
    }
    const [cert, key, ca] = await Promise.all([
      read('cert', this.init.cert),
      read('key', this.init.key),
      read('ca', this.init.ca),
    ])
    this.lfdi = lfdiFromCertificate(cert)
    this.pems = { cert, key, ca }
    this.agent = new Agent({
      cert,
      key,
      ca,
      keepAlive: true,
      maxSockets: 4,
      minVersion: 'TLSv1.2',
      maxVersion: 'TLSv1.2',
      ciphers: CIPHERS,
      rejectUnauthorized: true,
    })
  }

  stop(): void {
    this.agent?.destroy()
    this.agent = undefined
  }

  onRequest(listener: RequestListener): void {
    this.listener = listener
  }

  /** Absolute URL of an href (relative hrefs are relative to the server). */
  resolve(href: string): URL {
    const url = new URL(href, this.init.server)
    const base = new URL(this.init.server)
    if (url.origin !== base.origin)
      throw new CsipTransportError(`href '${href}' points off the utility server`)
    return url
  }

  async get(href: string, options: { signal?: AbortSignal } = {}): Promise<ParsedXml> {
    const answer = await this.send('GET', href, undefined, options)
    if (answer.status !== 200)
      throw new CsipTransportError(`GET ${href}: HTTP ${answer.status}`, answer.status)
    return parseXml(answer.body, { maxBytes: this.init.maxBodyBytes })
  }

  /** POST a resource; answers the Location of what the server created, if it says. */
  async post(href: string, xml: string, options: { signal?: AbortSignal } = {}): Promise<HttpAnswer> {
    const answer = await this.send('POST', href, xml, options)
    if (answer.status >= 300)
      throw new CsipTransportError(`POST ${href}: HTTP ${answer.status}`, answer.status)
    return answer
  }

  async put(href: string, xml: string, options: { signal?: AbortSignal } = {}): Promise<HttpAnswer> {
    const answer = await this.send('PUT', href, xml, options)
    if (answer.status >= 300)
      throw new CsipTransportError(`PUT ${href}: HTTP ${answer.status}`, answer.status)
    return answer
  }

  private send(
    method: 'GET' | 'POST' | 'PUT',
    href: string,
    body: string | undefined,
    options: { signal?: AbortSignal },
  ): Promise<HttpAnswer> {
    const agent = this.agent
    if (!agent) return Promise.reject(new CsipTransportError('transport is not started'))
    const url = this.resolve(href)
    const started = performance.now()
    const signal = AbortSignal.any([
      AbortSignal.timeout(this.init.timeoutSeconds * 1000),
      ...(options.signal ? [options.signal] : []),
    ])
    return new Promise<HttpAnswer>((resolve, reject) => {
      const fail = (error: Error) => {
        this.listener({ method, href, ms: performance.now() - started, error: error.message })
        reject(
          error instanceof CsipTransportError
            ? error
            : new CsipTransportError(`${method} ${href}: ${error.message}`, undefined, { cause: error }),
        )
      }
      if (signal.aborted) return fail(new Error('aborted before it was sent'))
      const req = request(
        url,
        {
          method,
          agent,
          headers: {
            accept: CONTENT_TYPE,
            ...(body !== undefined
              ? { 'content-type': CONTENT_TYPE, 'content-length': Buffer.byteLength(body) }
              : {}),
          },
        },
        (res) => {
          const chunks: Buffer[] = []
          let size = 0
          res.on('data', (chunk: Buffer) => {
            size += chunk.length
            if (size > this.init.maxBodyBytes) {
              res.destroy()
              fail(new CsipTransportError(`${method} ${href}: body over ${this.init.maxBodyBytes} bytes`))
              return
            }
            chunks.push(chunk)
          })
          res.on('error', fail)
          res.on('end', () => {
            if (size > this.init.maxBodyBytes) return
            const status = res.statusCode ?? 0
            this.listener({ method, href, status, ms: performance.now() - started })
            const location = res.headers.location
            resolve({
              status,
              ...(typeof location === 'string' ? { location } : {}),
              body: Buffer.concat(chunks).toString('utf8'),
            })
          })
        },
      )
      const onAbort = () =>
        req.destroy(new Error(signal.reason instanceof Error ? signal.reason.message : 'aborted'))
      signal.addEventListener('abort', onAbort, { once: true })
      req.on('close', () => signal.removeEventListener('abort', onAbort))
      req.on('error', fail)
      req.end(body)
    })
  }
}
