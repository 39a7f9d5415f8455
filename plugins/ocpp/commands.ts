/**
 * Driver-facing control commands on an EVSE (`oe.ctl.evse.<station>-<n>.<command>`, e.g. from
 * the OCPI plugin for an eMSP): which OCPP call each becomes, and how the station's answer reads
 * as a `control_result` status. Statuses are the words the data plane's consumers read:
 * `Accepted`, `Rejected`, `Occupied`, `Faulted`, `Unavailable`, `NotSupported`,
 * `UnknownReservation`, `Failed`, `Timeout`, `Offline`, `UnknownStation`, `Invalid`.
 *
 * | command | payload | OCPP 1.6 | OCPP 2.0.1 |
 * |---|---|---|---|
 * | `start_session` | `idTag` | RemoteStartTransaction | RequestStartTransaction |
 * | `stop_session` | `transactionId`? (else the EVSE's open session) | RemoteStopTransaction | RequestStopTransaction |
 * | `unlock_connector` | `connector`? | UnlockConnector | UnlockConnector |
 * | `reserve_now` | `reservation`, `idTag`, `expires` (epoch ms) | ReserveNow | ReserveNow |
 * | `cancel_reservation` | `reservation` | CancelReservation | CancelReservation |
 */
import { createHash } from 'node:crypto'
import type { OutboundCall, VersionCodec } from './codec.ts'
import { OcppActionInputError } from './errors.ts'

export const EVSE_COMMANDS = [
  'start_session',
  'stop_session',
  'unlock_connector',
  'reserve_now',
  'cancel_reservation',
] as const
export type EvseCommand = (typeof EVSE_COMMANDS)[number]

export const isEvseCommand = (command: string): command is EvseCommand =>
  (EVSE_COMMANDS as readonly string[]).includes(command)

/** A command that cannot become a call: the result to publish instead. */
export interface CommandRefusal {
  status: 'Invalid' | 'Rejected'
  reason: string
}

export interface CommandContext {
  /** A fresh 2.0.1 remoteStartId. */
  remoteStartId(): number
  /** The transaction open on this EVSE, if any. */
  openTransaction(evse: number): string | undefined
}

const MAX_RESERVATION_ID = 2_147_483_647

/**
 * OCPP reservation ids are integers; OCPI's are text. A decimal id in range is kept as is, any
 * other text is hashed into the range, so a cancel names the same number as its reservation.
 */
export function reservationNumber(reservation: unknown): number | undefined {
  if (typeof reservation === 'number')
    return Number.isSafeInteger(reservation) && reservation >= 0 && reservation <= MAX_RESERVATION_ID
      ? reservation
      : undefined
  if (typeof reservation !== 'string' || reservation === '' || reservation.length > 64) return undefined
  if (/^\d{1,10}$/.test(reservation) && Number(reservation) <= MAX_RESERVATION_ID) return Number(reservation)
  return createHash('sha256').update(reservation).digest().readUInt32BE(0) & MAX_RESERVATION_ID
}

function idTagOf(payload: Record<string, unknown>, codec: VersionCodec): string | CommandRefusal {
  const idTag = payload.idTag ?? payload.token
  // 1.6 idTags are at most 20 characters, 2.0.1 idTokens 36.
  const max = codec.version === 'ocpp1.6' ? 20 : 36
  if (typeof idTag !== 'string' || idTag === '') return { status: 'Invalid', reason: 'idTag is required' }
  if (idTag.length > max)
    return { status: 'Rejected', reason: `idTag longer than ${max} characters (${codec.version})` }
  return idTag
}

/** The OCPP call for a command on EVSE `evse` of a station speaking `codec`, or a refusal. */
export function commandCall(
  codec: VersionCodec,
  command: EvseCommand,
  payload: Record<string, unknown>,
  evse: number,
  context: CommandContext,
): OutboundCall | CommandRefusal {
  try {
    switch (command) {
      case 'start_session': {
        const idTag = idTagOf(payload, codec)
        if (typeof idTag !== 'string') return idTag
        return codec.remoteStart({ evse, idTag, remoteStartId: context.remoteStartId() })
      }
      case 'stop_session': {
        const given = payload.transactionId
        const transactionId =
          typeof given === 'string' || typeof given === 'number'
            ? String(given)
            : context.openTransaction(evse)
        if (transactionId === undefined) return { status: 'Rejected', reason: 'no open session on this EVSE' }
        return codec.remoteStop(transactionId)
      }
      case 'unlock_connector': {
        const connector = payload.connector ?? 1
        if (typeof connector !== 'number' || !Number.isSafeInteger(connector) || connector < 1)
          return { status: 'Invalid', reason: 'connector must be a positive integer' }
        return codec.unlockConnector({ evse, connector })
      }
      case 'reserve_now': {
        const id = reservationNumber(payload.reservation)
        if (id === undefined) return { status: 'Invalid', reason: 'reservation is required' }
        const idTag = idTagOf(payload, codec)
        if (typeof idTag !== 'string') return idTag
        const expires = payload.expires
        if (typeof expires !== 'number' || !Number.isFinite(expires))
          return { status: 'Invalid', reason: 'expires must be epoch milliseconds' }
        if (expires <= Date.now()) return { status: 'Rejected', reason: 'the reservation has expired' }
        return codec.reserveNow({ id, evse, expires, idTag })
      }
      case 'cancel_reservation': {
        const id = reservationNumber(payload.reservation)
        if (id === undefined) return { status: 'Invalid', reason: 'reservation is required' }
        return codec.cancelReservation(id)
      }
    }
  } catch (error) {
    if (error instanceof OcppActionInputError) return { status: 'Invalid', reason: error.message }
    throw error
  }
}

/** The station's answer as a control_result status (and the OCPP status it came from). */
export function commandStatus(
  command: EvseCommand,
  response: unknown,
): { status: string; ocppStatus?: string } {
  const ocppStatus = (response as { status?: unknown } | undefined)?.status
  if (typeof ocppStatus !== 'string') return { status: 'Failed' }
  switch (ocppStatus) {
    case 'Unlocked':
      return { status: 'Accepted', ocppStatus }
    case 'UnlockFailed':
      return { status: 'Failed', ocppStatus }
    case 'OngoingAuthorizedTransaction':
    case 'UnknownConnector':
      return { status: 'Rejected', ocppStatus }
    case 'Rejected':
      // CancelReservation answers Rejected when it has no such reservation.
      return { status: command === 'cancel_reservation' ? 'UnknownReservation' : 'Rejected', ocppStatus }
    default:
      return { status: ocppStatus, ocppStatus }
  }
}

/** A failed call (CALLERROR code, or the transport's word) as a control_result status. */
export function failureStatus(code: string): string {
  switch (code) {
    case 'NotImplemented':
    case 'NotSupported':
      return 'NotSupported'
    case 'Timeout':
      return 'Timeout'
    case 'Disconnected':
      return 'Offline'
    default:
      return 'Failed'
  }
}
