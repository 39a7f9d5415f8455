/**
 * What a version codec (OCPP 1.6, OCPP 2.0.1) is: handlers for the actions a station sends, and
 * builders for the calls the CSMS sends. Codecs are lenient in (anything the official schema
 * accepts; ocpp-rpc has validated it before a handler runs) and strict out (every call built here
 * is validated against the schema before it leaves). They see a station only through a
 * StationLink: publish to the data plane, describe resources, remember sessions.
 */
import type { Logger } from '../../data-plane/index.ts'
import type { MeterValueInput } from './normalise.ts'
import type { OcppState } from './state.ts'
import type { OcppVersion } from './validators.ts'

/** One connected station, as a codec's handlers see it. `evse` 0 is the station itself. */
export interface StationLink {
  readonly id: string
  readonly version: OcppVersion
  readonly logger: Logger
  /** Seconds, as answered in BootNotification. */
  readonly heartbeatInterval: number
  readonly state: OcppState
  /** Normalise and publish meter values of an EVSE (0: the station). */
  meterValues(evse: number, meterValues: readonly MeterValueInput[]): Promise<void>
  /** Publish one canonical reading of an EVSE (0: the station). */
  reading(evse: number, quantity: string, value: number, t: number): Promise<void>
  /** Publish an event on `oe.evt.<evse|station>.<rid>.<type>`. */
  event(evse: number, type: string, event: Record<string, unknown>): Promise<void>
  /** Merge attributes into the `station` resource. */
  describeStation(attrs: Record<string, unknown>): Promise<void>
  /** Merge attributes into an `evse` resource (creating it on first sight). */
  describeEvse(evse: number, attrs?: Record<string, unknown>): Promise<void>
  /** The station booted: resend what it must know (power limits) once the answer is out. */
  booted(): void
  /**
   * May this driver's token charge here (`evse` 0: the station)? Asks the node's token
   * authorisation (e.g. the OCPI plugin's eMSP tokens) and, when no one there decides, accepts
   * as the plugin always did.
   */
  authorize(evse: number, token: string, type?: string): Promise<TokenDecision>
  /**
   * The station asks for a certificate (2.0.1 SignCertificate): `Accepted` when the node's CA
   * signs it (the certificate follows as CertificateSigned), else `Rejected`.
   */
  signCertificate(csr: string, certificateType?: string): Promise<'Accepted' | 'Rejected'>
}

/** What the node answers about a token (OCPP 1.6 has no `Unknown`: the codec says `Invalid`). */
export type TokenStatus = 'Accepted' | 'Blocked' | 'Expired' | 'Invalid' | 'Unknown'

export interface TokenDecision {
  status: TokenStatus
  /** Who decided (e.g. `ocpi`); absent when no one did and the plugin's own rule applied. */
  by?: string
}

// biome-ignore lint/suspicious/noExplicitAny: params were validated against the official schema.
export type InboundHandler = (params: any, link: StationLink) => Promise<Record<string, unknown>>

export interface OutboundCall {
  method: string
  params: Record<string, unknown>
}

export interface PowerLimitCall {
  /** 0: the whole station (ChargePointMaxProfile / ChargingStationMaxProfile). */
  evse: number
  watts: number
  /** Epoch ms; none: until replaced. */
  until?: number | undefined
}

export interface VersionCodec {
  version: OcppVersion
  /** Actions a station sends that this codec handles. */
  handlers: Readonly<Record<string, InboundHandler>>
  /** Notifications answered with an empty confirmation (logged, not normalised). */
  acknowledged: ReadonlySet<string>
  setPowerLimit(limit: PowerLimitCall, now: number): OutboundCall
  remoteStart(input: { evse?: number | undefined; idTag: string; remoteStartId: number }): OutboundCall
  remoteStop(transactionId: string): OutboundCall
  reset(input: { hard: boolean; evse?: number | undefined }): OutboundCall
  triggerMessage(input: { message: string; evse?: number | undefined }): OutboundCall
  unlockConnector(input: { evse: number; connector: number }): OutboundCall
  reserveNow(input: { id: number; evse: number; expires: number; idTag: string }): OutboundCall
  cancelReservation(id: number): OutboundCall
}

/** The charging profile the node owns on each EVSE: one fixed id per EVSE, so a new limit replaces the last. */
export const PROFILE_ID_BASE = 7_410_000
/** Stack level of the node's profiles. */
export const PROFILE_STACK_LEVEL = 0

/** A copy without `undefined` values (CBOR and resource attributes carry JSON values only). */
export function defined<T extends Record<string, unknown>>(
  value: T,
): { [K in keyof T]: Exclude<T[K], undefined> } {
  const out: Record<string, unknown> = {}
  for (const [key, inner] of Object.entries(value)) if (inner !== undefined) out[key] = inner
  return out as { [K in keyof T]: Exclude<T[K], undefined> }
}

export const iso = (ms: number): string => new Date(ms).toISOString()

/** Handlers both versions answer alike. */
export const commonHandlers = {
  Heartbeat: async () => ({ currentTime: iso(Date.now()) }),
  // No vendor extensions are implemented.
  DataTransfer: async (params: { vendorId: string; messageId?: string }, link: StationLink) => {
    link.logger.debug(
      { station: link.id, vendorId: params.vendorId, messageId: params.messageId },
      'DataTransfer',
    )
    return { status: 'UnknownVendorId' }
  },
} satisfies Record<string, InboundHandler>

/** Seconds from now until `until`, at least 1 (a schedule duration). */
export const secondsUntil = (until: number, now: number): number =>
  Math.max(1, Math.ceil((until - now) / 1000))

/** Limits in OCPP schedules are multiples of 0.1. */
export const roundLimit = (watts: number): number => Math.round(watts * 10) / 10
