/**
 * The OCPP-J transport: an HTTP(S) listener whose only use is WebSocket upgrades on
 * `/ocpp/<stationId>`, with ocpp-rpc's RPCServer in strict mode behind it (schema validation of
 * every call and answer, OCPP-J CALLERRORs for malformed frames). The upgrade is decided before
 * the WebSocket exists, in this order: path (404), station id (400), credentials (401:
 * Security Profile 1, HTTP Basic with the station id as user; Security Profile 2 when TLS is on;
 * Security Profile 3 with `tlsCa`: a client certificate the CA issued, whose CN is the station
 * id), subprotocol (400 unless the station offers `ocpp2.0.1` or `ocpp1.6`; 2.0.1 preferred).
 * With client certificates the listener is a TLS server whose connections are handed to the
 * HTTP server (Bun's HTTPS server does not show the peer certificate; its TLS sockets do).
 * Refusals are logged at most once a minute per station, with a count (refusals.ts).
 */
import { readFile } from 'node:fs/promises'
import { createServer as createHttpServer, type IncomingMessage, type Server } from 'node:http'
import { createServer as createHttpsServer } from 'node:https'
import type { AddressInfo, Socket } from 'node:net'
import type { Duplex } from 'node:stream'
import { createServer as createTlsServer, type TLSSocket, type Server as TlsServer } from 'node:tls'
import { RPCServer } from 'ocpp-rpc'
import type RPCServerClient from 'ocpp-rpc/lib/server-client'
import type { Logger } from '../../data-plane/index.ts'
import { STATION_ID_PATTERN } from './config.ts'
import { OcppListenError } from './errors.ts'
import { type StationRefusal, StationRefusals } from './refusals.ts'
import { OCPP_VERSIONS, type OcppVersion, strictValidators } from './validators.ts'

export const OCPP_PATH = '/ocpp'

export interface OcppServerInit {
  host: string
  port: number
  tlsCert?: string | undefined
  tlsKey?: string | undefined
  /** PEM CA(s) of stations' client certificates (Security Profile 3). */
  tlsCa?: string | undefined
  maxMessageBytes: number
  callTimeoutMs: number
  /** WebSocket ping period; a station that misses a pong is dropped. */
  pingIntervalMs?: number
  /** Consecutive malformed frames tolerated before the connection is closed (1002). */
  maxBadMessages?: number
  /** Refusals of one station are logged once per this interval, with a count. */
  refusalLogIntervalMs?: number
}

export type AuthDecision = 'accept' | 'unknown' | 'wrong-password'

export interface OcppServerComponents {
  logger: Logger
  /** Decide on a station's credentials (password is the raw HTTP Basic password, if any). */
  authenticate(station: string, password: Buffer | undefined): AuthDecision
  /** A station is connected and speaks `version`. */
  onStation(client: RPCServerClient, version: OcppVersion): void
  /** An upgrade was refused (for metrics). */
  onRefused?(reason: string): void
}

/** What a station's client certificate says, when it presented one. */
interface PresentedCertificate {
  trusted: boolean
  error?: string
  commonName?: string
}

function presentedCertificate(socket: unknown): PresentedCertificate | undefined {
  const tls = socket as Partial<TLSSocket>
  if (typeof tls.getPeerCertificate !== 'function') return undefined
  const certificate = tls.getPeerCertificate()
  if (!certificate || Object.keys(certificate).length === 0) return undefined
  const cn = certificate.subject?.CN
  const error = tls.authorizationError
  return {
    trusted: tls.authorized === true,
    ...(error ? { error: String(error) } : {}),
    ...(cn !== undefined ? { commonName: Array.isArray(cn) ? cn.join(',') : cn } : {}),
  }
}

export class OcppServer {
  private rpc: RPCServer | undefined
  private http: Server | undefined
  private tlsServer: TlsServer | undefined
  private readonly tlsSockets = new Set<TLSSocket>()
  private bound: { host: string; port: number } | undefined
  private refusals: StationRefusals | undefined
  private refusalTimer: ReturnType<typeof setInterval> | undefined

  constructor(
    private readonly init: OcppServerInit,
    private readonly components: OcppServerComponents,
  ) {}

  /** `host:port` actually bound (the port is known once listening). */
  get address(): { host: string; port: number } | undefined {
    return this.bound
  }

  get tls(): boolean {
    return this.init.tlsCert !== undefined
  }

  /** Stations may present client certificates (Security Profile 3). */
  get clientCertificates(): boolean {
    return this.init.tlsCa !== undefined
  }

  async start(options: { signal?: AbortSignal } = {}): Promise<void> {
    if (this.http) return
    options.signal?.throwIfAborted()
    const { logger } = this.components
    const rpc = new RPCServer({
      protocols: [...OCPP_VERSIONS],
      strictMode: true,
      strictModeValidators: strictValidators,
      callTimeoutMs: this.init.callTimeoutMs,
      pingIntervalMs: this.init.pingIntervalMs ?? 30_000,
      // One outstanding call per direction (OCPP-J §4.1.1).
      callConcurrency: 1,
      maxBadMessages: this.init.maxBadMessages ?? 100,
      respondWithDetailedErrors: false,
      wssOptions: { maxPayload: this.init.maxMessageBytes },
    })
    const refusals = new StationRefusals(this.init.refusalLogIntervalMs ?? 60_000)
    this.refusals = refusals
    const noteRefusal = (refusal: StationRefusal, code: number, detail?: Record<string, unknown>): void => {
      this.components.onRefused?.(refusal.reason)
      if (refusals.note(refusal)) logger.warn({ ...refusal, code, ...detail }, 'station refused')
    }
    rpc.auth((accept, reject, handshake) => {
      const refuse = (
        code: number,
        message: string,
        reason: string,
        detail?: Record<string, unknown>,
      ): void => {
        noteRefusal(
          { station: handshake.identity.slice(0, 128), reason, remote: handshake.remoteAddress },
          code,
          detail,
        )
        reject(code, message)
      }
      if (handshake.endpoint !== OCPP_PATH)
        return refuse(404, `OCPP endpoint is ${OCPP_PATH}/<stationId>`, 'path')
      if (!STATION_ID_PATTERN.test(handshake.identity))
        return refuse(400, 'station id must be letters, digits, _ : - (at most 120)', 'station-id')
      // Security Profile 3: the certificate is the station's identity.
      const certificate = this.tlsServer ? presentedCertificate(handshake.request.socket) : undefined
      if (certificate && !certificate.trusted)
        return refuse(401, 'Unauthorized', 'certificate-untrusted', {
          certificateError: certificate.error?.slice(0, 200),
          certificateCn: certificate.commonName?.slice(0, 128),
        })
      if (certificate && certificate.commonName !== handshake.identity)
        return refuse(401, 'Unauthorized', 'certificate-mismatch', {
          certificateCn: certificate.commonName?.slice(0, 128),
        })
      const decision = certificate
        ? 'accept'
        : this.components.authenticate(handshake.identity, handshake.password)
      if (decision !== 'accept') return refuse(401, 'Unauthorized', decision)
      const version = OCPP_VERSIONS.find((candidate) => handshake.protocols.has(candidate))
      if (!version) {
        return refuse(
          400,
          `no supported OCPP version offered (Sec-WebSocket-Protocol: ${OCPP_VERSIONS.join(', ')})`,
          'subprotocol',
        )
      }
      accept({ version }, version)
    })
    rpc.on('client', (client: RPCServerClient) => {
      const version = client.session.version as OcppVersion
      this.components.onStation(client, version)
    })
    rpc.on('error', (error: Error) => logger.warn({ err: error.message }, 'ocpp websocket server error'))

    const notFound = (_request: unknown, response: { statusCode: number; end(): void }) => {
      response.statusCode = 404
      response.end()
    }
    let http: Server
    let listener: Server | TlsServer
    if (this.init.tlsCert !== undefined && this.init.tlsKey !== undefined) {
      const read = (path: string, key: string) =>
        readFile(path).catch((error: Error) => {
          throw new OcppListenError(`cannot read ${key} ${path}: ${error.message}`)
        })
      const [cert, key, ca] = await Promise.all([
        read(this.init.tlsCert, 'tls_cert'),
        read(this.init.tlsKey, 'tls_key'),
        this.init.tlsCa === undefined ? undefined : read(this.init.tlsCa, 'tls_ca'),
      ])
      if (ca !== undefined) {
        // Client certificates are asked for and judged at the upgrade (a refusal with a reason
        // there, instead of a failed handshake nobody hears of).
        http = createHttpServer(notFound)
        const tlsServer = createTlsServer(
          { cert, key, ca, requestCert: true, rejectUnauthorized: false, minVersion: 'TLSv1.2' },
          (socket) => {
            this.tlsSockets.add(socket)
            socket.once('close', () => this.tlsSockets.delete(socket))
            http.emit('connection', socket)
          },
        )
        tlsServer.on('tlsClientError', (error: Error) =>
          logger.debug({ err: error.message }, 'ocpp tls handshake failed'),
        )
        this.tlsServer = tlsServer
        listener = tlsServer
      } else {
        // OCPP security: TLS 1.2 at least.
        http = createHttpsServer({ cert, key, minVersion: 'TLSv1.2' }, notFound) as unknown as Server
        listener = http
      }
    } else {
      http = createHttpServer(notFound)
      listener = http
    }
    const upgrade = rpc.handleUpgrade
    http.on('upgrade', (request: IncomingMessage, socket: Duplex, head: Buffer) => {
      // ocpp-rpc decodes the station id outside its own error handling: a malformed
      // percent-encoding would reject unobserved and leave the socket hanging.
      try {
        decodeURIComponent(new URL(request.url ?? '/', 'http://localhost').pathname.split('/').pop() ?? '')
      } catch {
        noteRefusal(
          { station: '(undecodable id)', reason: 'station-id', remote: request.socket.remoteAddress },
          400,
        )
        socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n')
        return
      }
      upgrade(request, socket as Socket, head).catch((error: Error) => {
        logger.warn({ err: error.message }, 'ocpp upgrade failed')
        socket.destroy()
      })
    })
    await new Promise<void>((resolve, reject) => {
      const onError = (error: Error) =>
        reject(new OcppListenError(`cannot listen on ${this.init.host}:${this.init.port}: ${error.message}`))
      listener.once('error', onError)
      listener.listen({ host: this.init.host, port: this.init.port }, () => {
        listener.off('error', onError)
        resolve()
      })
    })
    listener.on('error', (error: Error) => logger.warn({ err: error.message }, 'ocpp listener error'))
    const address = listener.address() as AddressInfo
    this.bound = { host: this.init.host, port: address.port }
    this.rpc = rpc
    this.http = http
    this.refusalTimer = setInterval(() => this.logRefusals(), Math.min(refusals.intervalMs / 4, 10_000))
    this.refusalTimer.unref?.()
  }

  /** One line per station whose refusals were counted in an interval that ended. */
  private logRefusals(all = false): void {
    for (const summary of this.refusals?.flush(Date.now(), all) ?? []) {
      this.components.logger.warn(summary, `station refused ${summary.count} more time(s)`)
    }
  }

  async stop(): Promise<void> {
    if (this.refusalTimer) clearInterval(this.refusalTimer)
    this.refusalTimer = undefined
    this.logRefusals(true)
    this.refusals = undefined
    const rpc = this.rpc
    const http = this.http
    const tlsServer = this.tlsServer
    this.rpc = undefined
    this.http = undefined
    this.tlsServer = undefined
    this.bound = undefined
    if (rpc) {
      await Promise.race([
        rpc.close({ code: 1001, reason: 'server stopping' }),
        new Promise((resolve) => setTimeout(resolve, 2_000).unref()),
      ]).catch(() => {})
    }
    if (http) {
      http.closeAllConnections?.()
      if (tlsServer) {
        for (const socket of this.tlsSockets) socket.destroy()
        this.tlsSockets.clear()
        await new Promise<void>((resolve) => tlsServer.close(() => resolve()))
        return
      }
      await new Promise<void>((resolve) => http.close(() => resolve()))
    }
  }
}
