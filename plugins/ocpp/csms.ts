/**
 * The CSMS: ties the transport (server.ts), the version codecs (v16.ts, v201.ts), the
 * normaliser and the node's data plane together. It keeps the connected stations, publishes
 * their data in the canonical model, turns `limit_power` control commands into
 * SetChargingProfile and the EVSE commands (commands.ts) into their OCPP calls, reporting each
 * outcome as an event, routes commands to the replica holding a station's socket (routing.ts),
 * asks the node's token authorisation about drivers' tokens, runs the operators' actions, and
 * notices stations going silent.
 */
import { createHash, createPrivateKey, timingSafeEqual, X509Certificate } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import { createRPCError, type RPCError } from 'ocpp-rpc'
import type RPCServerClient from 'ocpp-rpc/lib/server-client'
import {
  checkTelemetryRecord,
  type Logger,
  type ResourceKind,
  type TelemetryRecord,
} from '../../data-plane/index.ts'
import type { ControlMessage, PluginDataPlane, PluginMetrics } from '../api.ts'
import {
  defined,
  type OutboundCall,
  type StationLink,
  type TokenDecision,
  type VersionCodec,
} from './codec.ts'
import {
  commandCall,
  commandStatus,
  EVSE_COMMANDS,
  type EvseCommand,
  failureStatus,
  isEvseCommand,
} from './commands.ts'
import type { OcppConfig } from './config.ts'
import {
  OcppActionInputError,
  OcppError,
  OcppListenError,
  StationCallError,
  StationNotConnectedError,
} from './errors.ts'
import { type MeterValueInput, normaliseMeterValues } from './normalise.ts'
import { MAX_HOPS, StationRouter } from './routing.ts'
import { type AuthDecision, OcppServer } from './server.ts'
import { type LimitState, OcppState, type StateStore } from './state.ts'
import { ocpp16 } from './v16.ts'
import { ocpp201 } from './v201.ts'
import { OCPP_VERSIONS, type OcppVersion, strictValidators } from './validators.ts'
import { issueCertificate, parseCertificateRequest, type SigningAuthority } from './x509.ts'

const CODECS: Record<OcppVersion, VersionCodec> = { 'ocpp1.6': ocpp16, 'ocpp2.0.1': ocpp201 }

export interface OcppCsmsInit {
  config: OcppConfig
  /** `<data-dir>/plugins/ocpp`. */
  dataDir: string
  host: string
  port: number
  /** This replica's id (routing.ts). */
  replica: string
}

export interface OcppCsmsComponents {
  dataPlane: PluginDataPlane
  logger: Logger
  metrics: PluginMetrics
  /** Where station state and socket claims live (the plugin's KV bucket). */
  store: StateStore
}

/** How long a token authorisation may take before the station is answered as before. */
const AUTHORIZE_TIMEOUT_MS = 5_000

interface Connection {
  id: string
  version: OcppVersion
  codec: VersionCodec
  client: RPCServerClient
  remote: string | undefined
  connectedAt: number
  lastSeen: number
  /** False once silent for twice the heartbeat interval (until it speaks again). */
  online: boolean
  booted: boolean
  closed: boolean
  /** Inbound calls of one station are processed in order. */
  queue: Promise<unknown>
  /** Limits already sent on this connection, per EVSE (not sent again on boot). */
  applied: Map<number, LimitState>
  link: StationLink
}

/** A limit_power command: `{ v, u, until, source }` (ARCHITECTURE §5). */
function parseLimit(
  payload: Record<string, unknown>,
): { watts: number; until?: number; source?: string } | string {
  const { v, u, until, source } = payload
  if (typeof v !== 'number' || !Number.isFinite(v) || v < 0) return 'v must be a non-negative number'
  const factor = u === undefined || u === 'W' ? 1 : u === 'kW' ? 1000 : undefined
  if (factor === undefined) return `unit '${String(u)}' is not W or kW`
  if (until !== undefined && until !== null && (typeof until !== 'number' || !Number.isFinite(until)))
    return 'until must be epoch milliseconds'
  return defined({
    watts: v * factor,
    until: typeof until === 'number' ? until : undefined,
    source: typeof source === 'string' ? source.slice(0, 200) : undefined,
  })
}

/** `CS1-2` → station CS1, EVSE 2 (the station id may contain dashes itself). */
export function parseEvseId(rid: string): { station: string; evse: number } | undefined {
  const match = /^(.+)-(\d{1,6})$/.exec(rid)
  if (!match) return undefined
  const evse = Number(match[2])
  return evse > 0 ? { station: match[1]!, evse } : undefined
}

const digest = (value: Buffer) => createHash('sha256').update(value).digest()

/** OCPP-J (1.6 §4.1.3, 2.0.1 §4.2): a message id is at most 36 characters. */
export const MAX_MESSAGE_ID_LENGTH = 36

/**
 * Refuse a call whose message id is longer than OCPP-J allows, before it is processed: 1.6 has
 * no framework error and calls a malformed frame a FormationViolation; 2.0.1 says RpcFrameworkError.
 */
function checkMessageId(messageId: unknown, version: OcppVersion): void {
  if (typeof messageId === 'string' && messageId.length <= MAX_MESSAGE_ID_LENGTH) return
  throw createRPCError(
    version === 'ocpp1.6' ? 'FormationViolation' : 'RpcFrameworkError',
    `a message id is at most ${MAX_MESSAGE_ID_LENGTH} characters`,
    {},
  )
}

export class OcppCsms {
  private readonly server: OcppServer
  private readonly state: OcppState
  private readonly router: StationRouter
  /** The operator CA that signs stations' CSRs (`signing_ca_cert` / `signing_ca_key`). */
  private authority: (SigningAuthority & { pem: string }) | undefined
  private readonly stations = new Map<string, Connection>()
  /** Stations seen since start (configured ones are known too). */
  private readonly seen = new Set<string>()
  private readonly passwords: Map<string, Buffer>
  /** Last attributes written per resource, to skip standing-data writes that change nothing. */
  private readonly described = new Map<string, string>()
  private silenceTimer: ReturnType<typeof setInterval> | undefined
  private listening = false
  /** The heartbeat interval stations are told (whole seconds, as OCPP carries it). */
  private readonly heartbeatS: number
  private started = false
  private remoteStartId = Math.floor(Date.now() / 1000) % 1_000_000_000
  private readonly metric: {
    connected: { set(value: number): void }
    messages: { inc(value?: number): void }
    refused: { inc(value?: number): void }
    invalid: { inc(value?: number): void }
    records: { inc(value?: number): void }
    skipped: { inc(value?: number): void }
    commands: { inc(value?: number): void }
    forwarded: { inc(value?: number): void }
    authorizations: { inc(value?: number): void }
  }

  constructor(
    private readonly init: OcppCsmsInit,
    private readonly components: OcppCsmsComponents,
  ) {
    const { config } = init
    this.heartbeatS = Math.max(1, Math.round(config.heartbeat_interval))
    this.passwords = new Map(
      Object.entries(config.stations).map(([id, station]) => [id, Buffer.from(station.password, 'utf8')]),
    )
    this.state = new OcppState({ dir: init.dataDir }, { logger: components.logger, store: components.store })
    this.router = new StationRouter(
      { replica: init.replica },
      {
        store: components.store,
        dataPlane: components.dataPlane,
        logger: components.logger,
        onSuperseded: (station, by) => {
          const stale = this.stations.get(station)
          if (!stale) return
          components.logger.info({ station, replica: by }, 'station reconnected at another replica')
          void stale.client
            .close({ code: 1000, reason: 'replaced by a connection at another replica' })
            .catch(() => {})
        },
      },
    )
    this.server = new OcppServer(
      {
        host: init.host,
        port: init.port,
        tlsCert: config.tls_cert,
        tlsKey: config.tls_key,
        tlsCa: config.tls_ca,
        maxMessageBytes: config.max_message_bytes,
        callTimeoutMs: config.call_timeout * 1000,
      },
      {
        logger: components.logger,
        authenticate: (station, password) => this.authenticate(station, password),
        onStation: (client, version) => this.onStation(client, version),
        onRefused: () => this.metric.refused.inc(),
      },
    )
    const { metrics } = components
    this.metric = {
      connected: metrics.gauge('stations_connected', 'OCPP stations connected now'),
      messages: metrics.counter('messages_received_total', 'OCPP calls received from stations'),
      refused: metrics.counter('connections_refused_total', 'OCPP connections refused before the upgrade'),
      invalid: metrics.counter(
        'messages_invalid_total',
        'OCPP frames or calls refused as malformed or invalid',
      ),
      records: metrics.counter('records_published_total', 'canonical telemetry records published from OCPP'),
      skipped: metrics.counter(
        'samples_skipped_total',
        'OCPP sampled values skipped: no canonical quantity, out of range or implausible',
      ),
      commands: metrics.counter('commands_total', 'EVSE control commands taken from the data plane'),
      forwarded: metrics.counter(
        'commands_forwarded_total',
        'control commands forwarded to the replica holding the station',
      ),
      authorizations: metrics.counter(
        'token_authorizations_total',
        "drivers' tokens decided by the node's token authorisation",
      ),
    }
  }

  async start(options: { signal?: AbortSignal } = {}): Promise<void> {
    if (this.started) return
    this.started = true
    try {
      this.authority = await this.loadAuthority()
      await this.state.load()
      await this.server.start(options)
    } catch (error) {
      this.started = false
      throw error
    }
    this.listening = true
    const address = this.server.address!
    this.components.logger.info(
      { listen: `${address.host}:${address.port}`, tls: this.server.tls, stations: this.passwords.size },
      'ocpp listening',
    )
    if (!this.server.tls && this.passwords.size > 0 && !isLoopback(address.host)) {
      this.components.logger.warn(
        { listen: address.host },
        'station passwords travel in clear text without tls_cert / tls_key (Security Profile 1)',
      )
    }
    const period = Math.min(Math.max((this.heartbeatS * 1000) / 4, 250), 30_000)
    this.silenceTimer = setInterval(() => this.checkSilence(), period)
    this.silenceTimer.unref?.()
    this.router.start()
    const { dataPlane } = this.components
    dataPlane.onControl({ kinds: ['evse', 'station'], commands: ['limit_power'] }, (message) =>
      this.onLimitPower(message, 0),
    )
    dataPlane.onControl({ kinds: ['evse'], commands: [...EVSE_COMMANDS] }, (message) =>
      this.onEvseCommand(message, 0),
    )
    // Commands other replicas took for stations whose socket is here.
    dataPlane.onControl({ kinds: ['station'], commands: [this.router.command] }, (message) =>
      this.onForwarded(message),
    )
  }

  async stop(): Promise<void> {
    if (!this.started) return
    this.started = false
    this.listening = false
    if (this.silenceTimer) clearInterval(this.silenceTimer)
    this.silenceTimer = undefined
    for (const connection of this.stations.values()) connection.closed = true
    this.stations.clear()
    this.metric.connected.set(0)
    await this.server.stop()
    await this.router.stop().catch(() => {})
    await this.state.flush()
  }

  ready(): boolean {
    return this.listening
  }

  status(): Record<string, unknown> {
    const address = this.server.address
    const versions: Record<string, number> = Object.fromEntries(OCPP_VERSIONS.map((version) => [version, 0]))
    for (const connection of this.stations.values()) versions[connection.version]! += 1
    return {
      listen: address ? `${formatHost(address.host)}:${address.port}` : this.init.config.listen,
      tls: this.server.tls,
      clientCertificates: this.server.clientCertificates,
      signsCertificates: this.authority !== undefined,
      stations: { connected: this.stations.size, known: this.knownStations().length },
      versions,
      sessions: this.state.openSessions(),
      replica: this.router.replica,
    }
  }

  private knownStations(): string[] {
    return [...new Set([...this.passwords.keys(), ...this.seen])].sort()
  }

  // ---- connections -----------------------------------------------------------------------

  private authenticate(station: string, password: Buffer | undefined): AuthDecision {
    const expected = this.passwords.get(station)
    if (expected === undefined) return this.init.config.auto_accept ? 'accept' : 'unknown'
    // Compare digests: constant time whatever the lengths.
    if (password === undefined || !timingSafeEqual(digest(password), digest(expected)))
      return 'wrong-password'
    return 'accept'
  }

  private onStation(client: RPCServerClient, version: OcppVersion): void {
    const id = client.identity!
    const { logger } = this.components
    const previous = this.stations.get(id)
    if (previous) {
      // A station that reconnects before its old socket timed out: the new connection wins.
      previous.closed = true
      void previous.client.close({ code: 1000, reason: 'replaced by a new connection' }).catch(() => {})
    }
    const now = Date.now()
    const connection: Connection = {
      id,
      version,
      codec: CODECS[version],
      client,
      remote: client.handshake.remoteAddress,
      connectedAt: now,
      lastSeen: now,
      online: true,
      booted: false,
      closed: false,
      queue: Promise.resolve(),
      applied: new Map(),
      link: undefined as unknown as StationLink,
    }
    connection.link = this.link(connection)
    // The station's sessions and limits come from the KV (it may have been at another replica,
    // or here before a restart), and it is claimed for this replica, before any call runs.
    connection.queue = this.attach(connection)
    this.stations.set(id, connection)
    this.seen.add(id)
    this.metric.connected.set(this.stations.size)
    logger.info({ station: id, version, remote: connection.remote }, 'station connected')

    client.on('message', ({ outbound }: { outbound: boolean }) => {
      if (!outbound) this.touch(connection)
    })
    client.on('badMessage', ({ error }: { error: Error }) => {
      this.metric.invalid.inc()
      logger.debug({ station: id, err: error.message }, 'malformed OCPP frame')
    })
    client.on(
      'strictValidationFailure',
      ({ error, method, outbound }: { error: Error; method: string; outbound: boolean }) => {
        if (!outbound) this.metric.invalid.inc()
        logger.debug({ station: id, method, outbound, err: error.message }, 'OCPP schema violation')
      },
    )
    client.on('close', ({ code, reason }: { code?: number; reason?: string }) => {
      const current = this.stations.get(id) === connection
      if (current) {
        this.stations.delete(id)
        this.metric.connected.set(this.stations.size)
      }
      logger.info({ station: id, code, reason }, 'station disconnected')
      const wasOnline = !connection.closed && connection.online
      connection.closed = true
      if (!current) return
      const t = Date.now()
      void (async () => {
        // Gone from here; perhaps already at another replica (then it is not offline).
        const elsewhere = this.started ? await this.router.release(id).catch(() => undefined) : undefined
        if (!this.stations.has(id)) this.state.detach(id)
        if (wasOnline && elsewhere === undefined)
          await this.publishStationEvent(id, 'offline', defined({ reason: 'closed', code, t }))
      })()
    })

    const { codec } = connection
    for (const [method, handler] of Object.entries(codec.handlers)) {
      client.handle(method, async ({ params, messageId }) => {
        checkMessageId(messageId, version)
        try {
          return await this.serial(connection, () => handler(params, connection.link))
        } catch (error) {
          if ((error as RPCError).rpcErrorCode) throw error
          // E.g. the data plane could not store it: the station may retry (1.6 transaction
          // messages are retried), and it learns nothing about the node's insides.
          logger.warn({ station: id, method, err: (error as Error).message }, 'OCPP call not processed')
          throw createRPCError('InternalError', `${method} could not be processed`, {})
        }
      })
    }
    client.handle(async ({ method, messageId }) => {
      checkMessageId(messageId, version)
      if (method !== undefined && codec.acknowledged.has(method)) {
        logger.debug({ station: id, method }, 'notification acknowledged')
        return {}
      }
      // Known to the schema (else validation said NotImplemented) but not something a CSMS takes.
      throw createRPCError('NotSupported', `${method} is not supported by this CSMS`, {})
    })
    client.on('call', ({ outbound }: { outbound: boolean }) => {
      if (!outbound) this.metric.messages.inc()
    })

    void this.publishStationEvent(id, 'online', { version, t: now })
    // A 1.6 station that resumes a connection does not boot again: resend limits after a while.
    setTimeout(() => {
      if (!connection.closed && !connection.booted) void this.resendLimits(connection)
    }, 5_000).unref?.()
  }

  private async attach(connection: Connection): Promise<void> {
    try {
      await this.state.attach(connection.id)
      await this.router.claim(connection.id)
    } catch (error) {
      this.components.logger.warn(
        { station: connection.id, err: (error as Error).message },
        'station state not loaded from the data plane',
      )
    }
  }

  /** Run one inbound call after the station's previous ones (ordered side effects). */
  private serial<T>(connection: Connection, work: () => Promise<T>): Promise<T> {
    const run = connection.queue.then(work, work)
    connection.queue = run.catch(() => {})
    return run
  }

  private touch(connection: Connection): void {
    connection.lastSeen = Date.now()
    if (!connection.online && !connection.closed) {
      connection.online = true
      void this.publishStationEvent(connection.id, 'online', {
        version: connection.version,
        reason: 'resumed',
        t: connection.lastSeen,
      })
    }
  }

  private checkSilence(): void {
    const now = Date.now()
    const limit = this.heartbeatS * 2000
    for (const connection of this.stations.values()) {
      if (connection.online && now - connection.lastSeen > limit) {
        connection.online = false
        this.components.logger.warn(
          { station: connection.id, silentS: Math.round((now - connection.lastSeen) / 1000) },
          'station silent: offline',
        )
        void this.publishStationEvent(connection.id, 'offline', {
          reason: 'silent',
          lastSeen: connection.lastSeen,
          t: now,
        })
      }
    }
  }

  private async publishStationEvent(
    station: string,
    type: string,
    event: Record<string, unknown>,
  ): Promise<void> {
    if (!this.started) return
    try {
      await this.components.dataPlane.publishEvent('station', station, type, event)
    } catch (error) {
      this.components.logger.warn(
        { station, type, err: (error as Error).message },
        'station event not published',
      )
    }
  }

  // ---- the data-plane side of one station ----------------------------------------------

  private target(station: string, evse: number): { kind: ResourceKind; rid: string } {
    return evse === 0 ? { kind: 'station', rid: station } : { kind: 'evse', rid: `${station}-${evse}` }
  }

  private link(connection: Connection): StationLink {
    const { dataPlane, logger } = this.components
    const id = connection.id
    return {
      id,
      version: connection.version,
      logger,
      heartbeatInterval: this.heartbeatS,
      state: this.state,
      meterValues: async (evse: number, meterValues: readonly MeterValueInput[]) => {
        const target = this.target(id, evse)
        const { records, skipped } = normaliseMeterValues(
          { ...target, stationLevel: evse === 0 },
          meterValues,
        )
        if (skipped.length > 0) {
          this.metric.skipped.inc(skipped.length)
          logger.debug({ station: id, evse, skipped }, 'sampled values skipped')
        }
        await this.publish(records)
      },
      reading: async (evse, quantity, value, t) => {
        // A register the model refuses (negative, stamped before 2000) is skipped like a sample,
        // so the station's message is still answered and the rest of it kept.
        const checked = checkTelemetryRecord({ ...this.target(id, evse), q: quantity, v: value, t })
        if (!checked.ok) {
          this.metric.skipped.inc()
          logger.debug(
            { station: id, evse, quantity, reason: `${checked.path}: ${checked.reason}` },
            'reading skipped',
          )
          return
        }
        await this.publish([checked.record])
      },
      event: async (evse, type, event) => {
        const { kind, rid } = this.target(id, evse)
        await dataPlane.publishEvent(kind, rid, type, event)
      },
      describeStation: (attrs) =>
        this.describe('station', id, { ...attrs, ocppVersion: connection.version.replace('ocpp', '') }),
      describeEvse: async (evse, attrs = {}) => {
        if (evse === 0) return
        await this.describe('evse', `${id}-${evse}`, { station: id, evse, ...attrs })
      },
      booted: () => {
        connection.booted = true
        // After the answer to BootNotification is on the wire.
        setTimeout(() => void this.resendLimits(connection), 50).unref?.()
      },
      authorize: (evse, token, type) => this.authorize(id, evse, token, type),
      signCertificate: async (csr, certificateType) => this.signCertificate(connection, csr, certificateType),
    }
  }

  private async loadAuthority(): Promise<(SigningAuthority & { pem: string }) | undefined> {
    const { signing_ca_cert: certPath, signing_ca_key: keyPath } = this.init.config
    if (certPath === undefined || keyPath === undefined) return undefined
    try {
      const [pem, key] = await Promise.all([readFile(certPath, 'utf8'), readFile(keyPath, 'utf8')])
      const certificate = new X509Certificate(pem)
      const privateKey = createPrivateKey(key)
      if (!certificate.checkPrivateKey(privateKey))
        throw new Error('signing_ca_key is not the key of signing_ca_cert')
      return { certificate, key: privateKey, pem: certificate.toString() }
    } catch (error) {
      throw new OcppListenError(`signing CA (${certPath}, ${keyPath}): ${(error as Error).message}`, {
        cause: error,
      })
    }
  }

  /**
   * SignCertificate (2.0.1, Security Profile 3): sign the station's CSR with the operator's CA
   * when its CN is the station's own id, then send the chain as CertificateSigned.
   */
  private async signCertificate(
    connection: Connection,
    csr: string,
    certificateType: string | undefined,
  ): Promise<'Accepted' | 'Rejected'> {
    const { logger } = this.components
    const refuse = (reason: string): 'Rejected' => {
      logger.warn({ station: connection.id, reason }, 'certificate signing refused')
      void this.publishStationEvent(connection.id, 'certificate_signed', {
        status: 'Rejected',
        reason,
        t: Date.now(),
      })
      return 'Rejected'
    }
    const authority = this.authority
    if (!authority) return refuse('no signing CA is configured (signing_ca_cert, signing_ca_key)')
    if (certificateType === 'V2GCertificate') return refuse('V2G certificates come from the V2G PKI')
    let issued: ReturnType<typeof issueCertificate>
    try {
      const request = parseCertificateRequest(csr)
      if (request.commonName !== connection.id)
        return refuse(`the CSR's CN '${request.commonName ?? ''}' is not the station id`)
      issued = issueCertificate(request, authority, { days: this.init.config.signed_cert_days })
    } catch (error) {
      return refuse((error as Error).message.slice(0, 200))
    }
    // After the answer to SignCertificate is on the wire.
    setTimeout(() => {
      void (async () => {
        let status = 'Error'
        try {
          const response = (await this.call(connection, {
            method: 'CertificateSigned',
            params: {
              certificateChain: `${issued.pem}${authority.pem}`,
              certificateType: 'ChargingStationCertificate',
            },
          })) as { status?: string }
          status = response.status ?? 'Unknown'
        } catch (error) {
          logger.warn({ station: connection.id, err: (error as Error).message }, 'CertificateSigned failed')
        }
        logger.info({ station: connection.id, serial: issued.serial, status }, 'station certificate signed')
        await this.publishStationEvent(connection.id, 'certificate_signed', {
          status,
          serial: issued.serial,
          notAfter: issued.notAfter,
          t: Date.now(),
        })
      })()
    }, 50).unref?.()
    return 'Accepted'
  }

  /**
   * Ask the node's token authorisation (e.g. the OCPI plugin with its eMSPs' tokens). When no
   * one there decides, the token is accepted, as the plugin has always done without a list.
   */
  private async authorize(
    station: string,
    evse: number,
    token: string,
    type?: string,
  ): Promise<TokenDecision> {
    const ask = this.components.dataPlane.authorizeToken
    if (!ask) return { status: 'Accepted' }
    try {
      const answer = await ask(defined({ token, type, ...this.target(station, evse) }), {
        timeoutMs: AUTHORIZE_TIMEOUT_MS,
      })
      // `by` names the decider; without it no one answered.
      if (answer.by === undefined) return { status: 'Accepted' }
      this.metric.authorizations.inc()
      return { status: answer.status, by: answer.by }
    } catch (error) {
      this.components.logger.warn({ station, err: (error as Error).message }, 'token authorisation failed')
      return { status: 'Accepted' }
    }
  }

  private async publish(records: TelemetryRecord[]): Promise<void> {
    if (records.length === 0) return
    await this.components.dataPlane.publishTelemetry(records)
    this.metric.records.inc(records.length)
  }

  /** Merge attributes into a resource, keeping what others set (site, name, other attributes). */
  private async describe(kind: ResourceKind, rid: string, attrs: Record<string, unknown>): Promise<void> {
    const key = `${kind}.${rid}`
    const known = this.described.get(key)
    if (known !== undefined) {
      const previous = JSON.parse(known) as Record<string, unknown>
      if (
        Object.entries(attrs).every(
          ([name, value]) => JSON.stringify(previous[name]) === JSON.stringify(value),
        )
      )
        return
    }
    const { dataPlane } = this.components
    const existing = await dataPlane.getResource(kind, rid)
    const merged = { ...(existing?.attrs ?? {}), ...attrs }
    await dataPlane.upsertResource(
      defined({ kind, rid, site: existing?.site, name: existing?.name, attrs: merged }),
    )
    this.described.set(key, JSON.stringify(merged))
  }

  // ---- control: limit_power → SetChargingProfile -----------------------------------------

  /**
   * Where a command for a station goes: its connection here, another replica that holds its
   * socket (forwarded there; that replica reports the outcome), or nowhere (offline).
   */
  private async route(
    station: string,
    message: ControlMessage,
    hops: number,
  ): Promise<Connection | 'forwarded' | 'absent'> {
    const local = this.stations.get(station)
    if (local && !local.closed) return local
    const holder = await this.router.holder(station)
    if (holder !== undefined && holder !== this.router.replica && hops < MAX_HOPS) {
      await this.router.forward(holder, station, message, hops + 1)
      this.metric.forwarded.inc()
      return 'forwarded'
    }
    return 'absent'
  }

  private async onForwarded(message: ControlMessage): Promise<void> {
    const forwarded = this.router.parse(message)
    if (typeof forwarded === 'string') {
      this.components.logger.debug({ rid: message.rid, reason: forwarded }, 'forwarded command dropped')
      return
    }
    const inner: ControlMessage = defined({
      kind: forwarded.kind,
      rid: forwarded.rid,
      command: forwarded.command,
      payload: forwarded.payload,
      agreement: forwarded.agreement,
      from: forwarded.from,
    })
    if (inner.command === 'limit_power') return this.onLimitPower(inner, forwarded.hops)
    if (isEvseCommand(inner.command)) return this.onEvseCommand(inner, forwarded.hops)
  }

  private async onLimitPower(message: ControlMessage, hops: number): Promise<void> {
    const { kind, rid } = message
    const target = kind === 'station' ? { station: rid, evse: 0 } : parseEvseId(rid)
    const request = typeof message.payload.request === 'string' ? message.payload.request : undefined
    const result = (status: string, extra: Record<string, unknown> = {}) =>
      this.publishLimitResult(kind, rid, defined({ status, request, ...extra }))
    if (!target) return result('Invalid', { reason: `'${rid}' is not <station>-<evse>` })
    const parsed = parseLimit(message.payload)
    if (typeof parsed === 'string') return result('Invalid', { reason: parsed })
    if (parsed.until !== undefined && parsed.until <= Date.now())
      return result('Expired', defined({ v: parsed.watts, until: parsed.until }))
    const limit: LimitState = defined({ ...target, ...parsed })
    // Kept (in the KV, for every replica) and sent whenever the station connects.
    await this.state.setLimit(limit)
    const route = await this.route(target.station, message, hops)
    if (route === 'forwarded') return
    if (route === 'absent')
      return result('Offline', defined({ v: limit.watts, until: limit.until, source: limit.source }))
    // Not awaited: one slow station must not hold up commands for the others. The command is
    // settled once handed to the station's connection; its outcome is the limit_result event.
    void this.applyLimit(route, limit, false, request)
  }

  private async applyLimit(
    connection: Connection,
    limit: LimitState,
    resent: boolean,
    request?: string,
  ): Promise<void> {
    // Checked and marked before any await: a resend after boot and a new command racing each
    // other send the same limit once.
    if (connection.applied.get(limit.evse) === limit) return
    connection.applied.set(limit.evse, limit)
    const { kind, rid } = this.target(limit.station, limit.evse)
    const base = defined({
      v: limit.watts,
      until: limit.until,
      source: limit.source,
      request,
      resent: resent || undefined,
    })
    if (limit.until !== undefined && limit.until <= Date.now()) {
      await this.state.dropLimit(limit.station, limit.evse)
      return
    }
    const now = Date.now()
    const call = connection.codec.setPowerLimit(
      { evse: limit.evse, watts: limit.watts, until: limit.until },
      now,
    )
    try {
      const response = (await connection.client.call(call.method, call.params)) as { status?: string }
      const status = response.status ?? 'Unknown'
      if (status === 'Accepted') {
        await this.publish([{ kind, rid, q: 'power_limit', v: limit.watts, t: now }]).catch(() => {})
      } else {
        // Refused: resending it on reconnect would be refused again.
        await this.state.dropLimit(limit.station, limit.evse)
      }
      await this.publishLimitResult(kind, rid, { status, ...base })
    } catch (error) {
      const rpc = error as RPCError
      const status = rpc.rpcErrorCode ? 'Error' : connection.closed ? 'Offline' : 'Timeout'
      this.components.logger.warn(
        { station: limit.station, evse: limit.evse, err: (error as Error).message },
        'SetChargingProfile failed',
      )
      await this.publishLimitResult(
        kind,
        rid,
        defined({ status, ...base, code: rpc.rpcErrorCode, reason: (error as Error).message.slice(0, 300) }),
      )
    }
  }

  private async resendLimits(connection: Connection): Promise<void> {
    for (const limit of this.state.limitsOf(connection.id)) {
      if (connection.closed) return
      await this.applyLimit(connection, limit, true)
    }
  }

  // ---- control: EVSE commands (commands.ts) → RemoteStart, UnlockConnector, ReserveNow, … ------

  private async onEvseCommand(message: ControlMessage, hops: number): Promise<void> {
    const { kind, rid, payload } = message
    if (!isEvseCommand(message.command)) return
    const command: EvseCommand = message.command
    if (hops === 0) this.metric.commands.inc()
    const target = parseEvseId(rid)
    const result = (status: string, extra: Record<string, unknown> = {}) =>
      this.publishControlResult(kind, rid, command, payload, { status, ...extra })
    if (!target) return result('Invalid', { reason: `'${rid}' is not <station>-<evse>` })
    const route = await this.route(target.station, message, hops)
    if (route === 'forwarded') return
    if (route === 'absent') {
      const { dataPlane } = this.components
      const station = await dataPlane.getResource('station', target.station).catch(() => undefined)
      // A station learnt from a roaming partner (OCPI): its plugin answers, not this one.
      if (station?.attrs?.source === 'ocpi') return
      const known = station !== undefined || this.passwords.has(target.station)
      return result(known ? 'Offline' : 'UnknownStation', {
        reason: known ? `station '${target.station}' is not connected` : `no station '${target.station}'`,
      })
    }
    // Not awaited, as for limits: the outcome is the control_result event.
    void this.runEvseCommand(route, command, message, target.evse)
  }

  private async runEvseCommand(
    connection: Connection,
    command: EvseCommand,
    message: ControlMessage,
    evse: number,
  ): Promise<void> {
    const { kind, rid, payload } = message
    const result = (fields: Record<string, unknown>) =>
      this.publishControlResult(kind, rid, command, payload, fields)
    try {
      const call = commandCall(connection.codec, command, payload, evse, {
        remoteStartId: () => {
          this.remoteStartId = (this.remoteStartId + 1) % 2_147_483_647
          return this.remoteStartId
        },
        openTransaction: (number) => this.state.sessionOn(connection.id, number)?.transactionId,
      })
      if ('status' in call) return await result({ ...call })
      let response: unknown
      try {
        response = await this.call(connection, call)
      } catch (error) {
        if (error instanceof StationCallError) {
          this.components.logger.warn(
            { station: connection.id, command, err: error.message },
            'command not carried out',
          )
          return await result({
            status: failureStatus(error.code),
            code: error.code,
            reason: error.message.slice(0, 300),
          })
        }
        if (error instanceof OcppActionInputError)
          return await result({ status: 'Invalid', reason: error.message.slice(0, 300) })
        throw error
      }
      const { status, ocppStatus } = commandStatus(command, response)
      const transactionId = (response as { transactionId?: unknown }).transactionId
      await result(
        defined({
          status,
          ocppStatus,
          action: call.method,
          transactionId: typeof transactionId === 'string' ? transactionId : undefined,
        }),
      )
    } catch (error) {
      this.components.logger.warn(
        { station: connection.id, command, err: (error as Error).message },
        'command result not published',
      )
    }
  }

  /** `control_result` on the command's own subject, with its `request` and `source` echoed. */
  private async publishControlResult(
    kind: ResourceKind,
    rid: string,
    command: string,
    payload: Record<string, unknown>,
    fields: Record<string, unknown>,
  ): Promise<void> {
    if (!this.started) return
    await this.components.dataPlane.publishEvent(
      kind,
      rid,
      'control_result',
      defined({
        command,
        request: typeof payload.request === 'string' ? payload.request : undefined,
        source: typeof payload.source === 'string' ? payload.source.slice(0, 200) : undefined,
        ...fields,
        t: Date.now(),
      }),
    )
  }

  private async publishLimitResult(
    kind: ResourceKind,
    rid: string,
    result: Record<string, unknown>,
  ): Promise<void> {
    // A call cut short by stop() has no result worth reporting; the limit is sent again later.
    if (!this.started) return
    await this.components.dataPlane.publishEvent(kind, rid, 'limit_result', {
      command: 'limit_power',
      ...result,
      t: Date.now(),
    })
  }

  // ---- operator actions --------------------------------------------------------------------

  private connected(station: unknown): Connection {
    if (typeof station !== 'string' || station === '')
      throw new OcppActionInputError('station (the station id) is required')
    const connection = this.stations.get(station)
    if (!connection) throw new StationNotConnectedError(station)
    return connection
  }

  /** Call a station, after checking the call against the official schema (strict out). */
  async call(connection: Connection, call: OutboundCall): Promise<unknown> {
    const validator = strictValidators.find((candidate) => candidate.subprotocol === connection.version)!
    try {
      validator.validate(`urn:${call.method}.req`, call.params)
    } catch (error) {
      throw new OcppActionInputError(`${call.method}: ${(error as Error).message}`)
    }
    try {
      return await connection.client.call(call.method, call.params)
    } catch (error) {
      const rpc = error as RPCError
      throw new StationCallError(
        connection.id,
        call.method,
        rpc.rpcErrorCode ?? (connection.closed ? 'Disconnected' : 'Timeout'),
        (error as Error).message,
        { cause: error },
      )
    }
  }

  actions(): Record<string, (input: Record<string, unknown>) => Promise<unknown>> {
    const optionalEvse = (value: unknown, name = 'connector'): number | undefined => {
      if (value === undefined || value === null) return undefined
      const number = typeof value === 'string' ? Number(value) : value
      if (typeof number !== 'number' || !Number.isSafeInteger(number) || number < 0)
        throw new OcppActionInputError(`${name} must be a non-negative integer`)
      return number
    }
    const answer = async (connection: Connection, call: OutboundCall) => ({
      station: connection.id,
      version: connection.version,
      action: call.method,
      response: await this.call(connection, call),
    })
    const wrap =
      (action: (input: Record<string, unknown>) => Promise<unknown>) =>
      async (input: Record<string, unknown>): Promise<unknown> => {
        try {
          return await action(input ?? {})
        } catch (error) {
          if (error instanceof OcppError) throw error
          throw new OcppError((error as Error).message, { cause: error })
        }
      }
    return {
      stations: wrap(async () => ({
        stations: this.knownStations().map((id) => {
          const connection = this.stations.get(id)
          return defined({
            id,
            configured: this.passwords.has(id),
            connected: connection !== undefined,
            online: connection?.online,
            version: connection?.version,
            remote: connection?.remote,
            connectedAt: connection?.connectedAt,
            lastSeen: connection?.lastSeen,
          })
        }),
      })),
      remote_start: wrap(async (input) => {
        const connection = this.connected(input.station)
        const idTag = input.id_tag ?? input.idTag ?? 'oe-node'
        if (typeof idTag !== 'string' || idTag.length === 0 || idTag.length > 20)
          throw new OcppActionInputError('id_tag must be text of 1 to 20 characters')
        this.remoteStartId = (this.remoteStartId + 1) % 2_147_483_647
        return answer(
          connection,
          connection.codec.remoteStart({
            evse: optionalEvse(input.connector),
            idTag,
            remoteStartId: this.remoteStartId,
          }),
        )
      }),
      remote_stop: wrap(async (input) => {
        const connection = this.connected(input.station)
        let transaction = input.transaction ?? input.transactionId
        if (transaction === undefined) {
          const evse = optionalEvse(input.connector)
          if (evse === undefined) throw new OcppActionInputError('give transaction or connector')
          transaction = this.state.sessionOn(connection.id, evse)?.transactionId
          if (transaction === undefined)
            throw new OcppActionInputError(`no open session on ${connection.id} connector ${evse}`)
        }
        if (typeof transaction !== 'string' && typeof transaction !== 'number')
          throw new OcppActionInputError('transaction must be a transaction id')
        return answer(connection, connection.codec.remoteStop(String(transaction)))
      }),
      reset: wrap(async (input) => {
        const connection = this.connected(input.station)
        const type = String(input.type ?? 'soft').toLowerCase()
        if (!['soft', 'hard', 'onidle', 'immediate'].includes(type))
          throw new OcppActionInputError('type is soft (OnIdle) or hard (Immediate)')
        const hard = type === 'hard' || type === 'immediate'
        const evse = connection.version === 'ocpp2.0.1' ? optionalEvse(input.connector) : undefined
        return answer(connection, connection.codec.reset({ hard, evse }))
      }),
      trigger_message: wrap(async (input) => {
        const connection = this.connected(input.station)
        const message = input.message ?? input.requestedMessage
        if (typeof message !== 'string' || message === '')
          throw new OcppActionInputError('message (e.g. StatusNotification, MeterValues) is required')
        return answer(
          connection,
          connection.codec.triggerMessage({ message, evse: optionalEvse(input.connector) }),
        )
      }),
      get_configuration: wrap(async (input) => {
        const connection = this.connected(input.station)
        if (connection.version !== 'ocpp1.6')
          throw new OcppActionInputError(`${connection.id} speaks ${connection.version}: use get_variables`)
        const keys = input.keys ?? input.key
        if (keys !== undefined && (!Array.isArray(keys) || !keys.every((key) => typeof key === 'string')))
          throw new OcppActionInputError('keys must be a list of configuration keys')
        return answer(connection, {
          method: 'GetConfiguration',
          params: keys === undefined || keys.length === 0 ? {} : { key: keys },
        })
      }),
      get_variables: wrap(async (input) => {
        const connection = this.connected(input.station)
        if (connection.version !== 'ocpp2.0.1')
          throw new OcppActionInputError(
            `${connection.id} speaks ${connection.version}: use get_configuration`,
          )
        const variables = input.variables
        if (!Array.isArray(variables) || variables.length === 0)
          throw new OcppActionInputError('variables: a list of "Component.Variable" or {component, variable}')
        const getVariableData = variables.map((item) => {
          if (typeof item === 'string') {
            const [component, ...rest] = item.split('.')
            if (!component || rest.length === 0)
              throw new OcppActionInputError(`'${item}' is not Component.Variable`)
            return { component: { name: component }, variable: { name: rest.join('.') } }
          }
          const entry = item as Record<string, unknown>
          if (typeof entry.component !== 'string' || typeof entry.variable !== 'string')
            throw new OcppActionInputError('each variable needs component and variable names')
          return {
            component: defined({
              name: entry.component,
              evse: entry.evse === undefined ? undefined : { id: optionalEvse(entry.evse, 'evse')! },
            }),
            variable: defined({ name: entry.variable, instance: entry.instance as string | undefined }),
          }
        })
        return answer(connection, { method: 'GetVariables', params: { getVariableData } })
      }),
      change_configuration: wrap(async (input) => {
        const connection = this.connected(input.station)
        if (connection.version !== 'ocpp1.6') {
          throw new OcppActionInputError(`${connection.id} speaks ${connection.version}: use set_variables`)
        }
        if (typeof input.key !== 'string' || input.key === '' || typeof input.value !== 'string') {
          throw new OcppActionInputError('key and value (text) are required')
        }
        return answer(connection, {
          method: 'ChangeConfiguration',
          params: { key: input.key, value: input.value },
        })
      }),
      set_variables: wrap(async (input) => {
        const connection = this.connected(input.station)
        if (connection.version !== 'ocpp2.0.1') {
          throw new OcppActionInputError(
            `${connection.id} speaks ${connection.version}: use change_configuration`,
          )
        }
        const { component, variable, value } = input
        if (typeof component !== 'string' || typeof variable !== 'string' || typeof value !== 'string') {
          throw new OcppActionInputError('component, variable and value (text) are required')
        }
        return answer(connection, {
          method: 'SetVariables',
          params: {
            setVariableData: [
              { attributeValue: value, component: { name: component }, variable: { name: variable } },
            ],
          },
        })
      }),
      clear_charging_profile: wrap(async (input) => {
        const connection = this.connected(input.station)
        const evse = optionalEvse(input.connector)
        const id = input.profile === undefined ? undefined : optionalEvse(input.profile, 'profile')
        const params =
          connection.version === 'ocpp1.6'
            ? defined({ id, connectorId: evse })
            : defined({
                chargingProfileId: id,
                chargingProfileCriteria: evse === undefined ? undefined : { evseId: evse },
              })
        return answer(connection, { method: 'ClearChargingProfile', params })
      }),
    }
  }
}

function isLoopback(host: string): boolean {
  return host === '127.0.0.1' || host === '::1' || host === 'localhost'
}

function formatHost(host: string): string {
  return host.includes(':') ? `[${host}]` : host
}
