/**
 * OCPP 1.6-J codec. Station → CSMS: BootNotification, Heartbeat, StatusNotification, Authorize,
 * StartTransaction, StopTransaction, MeterValues, DataTransfer (and the status notifications of
 * firmware, diagnostics and the security extension, acknowledged). CSMS → station:
 * SetChargingProfile, RemoteStartTransaction, RemoteStopTransaction, UnlockConnector, ReserveNow,
 * CancelReservation, Reset, TriggerMessage, GetConfiguration. Authorize and StartTransaction
 * answer with what the node's token authorisation says.
 */
import {
  commonHandlers,
  defined,
  type InboundHandler,
  iso,
  PROFILE_ID_BASE,
  PROFILE_STACK_LEVEL,
  roundLimit,
  type StationLink,
  secondsUntil,
  type TokenDecision,
  type VersionCodec,
} from './codec.ts'
import { OcppActionInputError } from './errors.ts'
import { energyRegisterWh, type MeterValueInput, parseTimestamp } from './normalise.ts'

interface SampledValue16 {
  value: string
  context?: string
  format?: string
  measurand?: string
  phase?: string
  location?: string
  unit?: string
}

interface MeterValue16 {
  timestamp: string
  sampledValue: SampledValue16[]
}

/** 1.6 sampled values already use the normaliser's field names. */
const meterValues16 = (values: readonly MeterValue16[] | undefined): MeterValueInput[] =>
  (values ?? []).map((value) => ({ timestamp: value.timestamp, sampledValue: value.sampledValue }))

const accepted = { status: 'Accepted' } as const

/** 1.6 idTagInfo statuses: no `Unknown` (an unknown token is `Invalid`). */
const idTagInfo = ({ status }: TokenDecision) => ({ status: status === 'Unknown' ? 'Invalid' : status })

async function authorize(params: { idTag: string }, link: StationLink): Promise<Record<string, unknown>> {
  return { idTagInfo: idTagInfo(await link.authorize(0, params.idTag)) }
}

async function bootNotification(
  params: {
    chargePointVendor: string
    chargePointModel: string
    chargePointSerialNumber?: string
    chargeBoxSerialNumber?: string
    firmwareVersion?: string
    iccid?: string
    imsi?: string
    meterType?: string
    meterSerialNumber?: string
  },
  link: StationLink,
): Promise<Record<string, unknown>> {
  const now = Date.now()
  await link.describeStation(
    defined({
      vendor: params.chargePointVendor,
      model: params.chargePointModel,
      firmware: params.firmwareVersion,
      serial: params.chargePointSerialNumber ?? params.chargeBoxSerialNumber,
      meterType: params.meterType,
      meterSerial: params.meterSerialNumber,
      iccid: params.iccid,
      imsi: params.imsi,
    }),
  )
  await link.event(0, 'boot', defined({ firmware: params.firmwareVersion, t: now }))
  link.booted()
  return { status: 'Accepted', currentTime: iso(now), interval: link.heartbeatInterval }
}

async function statusNotification(
  params: {
    connectorId: number
    errorCode: string
    status: string
    info?: string
    timestamp?: string
    vendorId?: string
    vendorErrorCode?: string
  },
  link: StationLink,
): Promise<Record<string, unknown>> {
  if (params.connectorId > 0) await link.describeEvse(params.connectorId)
  await link.event(
    params.connectorId,
    'status',
    defined({
      status: params.status,
      errorCode: params.errorCode,
      info: params.info,
      vendorId: params.vendorId,
      vendorErrorCode: params.vendorErrorCode,
      t: parseTimestamp(params.timestamp) ?? Date.now(),
    }),
  )
  return {}
}

async function startTransaction(
  params: {
    connectorId: number
    idTag: string
    meterStart: number
    timestamp: string
    reservationId?: number
  },
  link: StationLink,
): Promise<Record<string, unknown>> {
  const evse = params.connectorId
  // Asked first: a token the node refuses still gets a transaction id (OCPP 1.6 §5.11), and the
  // station ends the transaction itself.
  const decision = await link.authorize(evse, params.idTag)
  const transactionId = await link.state.allocateTransactionId()
  const t = parseTimestamp(params.timestamp) ?? Date.now()
  if (evse > 0) await link.describeEvse(evse)
  await link.reading(evse, 'energy_import', params.meterStart, t)
  await link.event(
    evse,
    'session_started',
    defined({
      transactionId: String(transactionId),
      meterStartWh: params.meterStart,
      idTag: params.idTag,
      authorization: decision.by === undefined ? undefined : decision.status,
      reservationId: params.reservationId,
      t,
    }),
  )
  // Remembered last: if publishing failed, the station retries and nothing is half-open.
  await link.state.startSession({
    station: link.id,
    evse,
    transactionId: String(transactionId),
    startedAt: t,
    meterStartWh: params.meterStart,
    idTag: params.idTag,
  })
  return { transactionId, idTagInfo: idTagInfo(decision) }
}

async function stopTransaction(
  params: {
    transactionId: number
    meterStop: number
    timestamp: string
    idTag?: string
    reason?: string
    transactionData?: MeterValue16[]
  },
  link: StationLink,
): Promise<Record<string, unknown>> {
  const transactionId = String(params.transactionId)
  const t = parseTimestamp(params.timestamp) ?? Date.now()
  const session = link.state.session(link.id, transactionId)
  if (session) {
    const data = meterValues16(params.transactionData)
    if (data.length > 0) await link.meterValues(session.evse, data)
    // meterStop is the register at the stop time: one reading, unless transactionData had it.
    const atStop = data.filter((value) => parseTimestamp(value.timestamp) === t)
    if (energyRegisterWh(atStop) === undefined)
      await link.reading(session.evse, 'energy_import', params.meterStop, t)
  } else {
    link.logger.warn(
      { station: link.id, transactionId },
      'StopTransaction for a transaction the node did not see start',
    )
  }
  await link.event(
    session?.evse ?? 0,
    'session_stopped',
    defined({
      transactionId,
      meterStopWh: params.meterStop,
      energyWh: session?.meterStartWh === undefined ? undefined : params.meterStop - session.meterStartWh,
      durationS: session ? Math.max(0, Math.round((t - session.startedAt) / 1000)) : undefined,
      reason: params.reason ?? 'Local',
      idTag: params.idTag ?? session?.idTag,
      t,
    }),
  )
  await link.state.endSession(link.id, transactionId)
  return params.idTag === undefined ? {} : { idTagInfo: accepted }
}

async function meterValues(
  params: { connectorId: number; transactionId?: number; meterValue: MeterValue16[] },
  link: StationLink,
): Promise<Record<string, unknown>> {
  if (params.connectorId > 0) await link.describeEvse(params.connectorId)
  await link.meterValues(params.connectorId, meterValues16(params.meterValue))
  return {}
}

const handlers: Record<string, InboundHandler> = {
  BootNotification: bootNotification,
  ...commonHandlers,
  StatusNotification: statusNotification,
  Authorize: authorize,
  StartTransaction: startTransaction,
  StopTransaction: stopTransaction,
  MeterValues: meterValues,
}

export const ocpp16: VersionCodec = {
  version: 'ocpp1.6',
  handlers,
  acknowledged: new Set([
    'DiagnosticsStatusNotification',
    'FirmwareStatusNotification',
    'LogStatusNotification',
    'SecurityEventNotification',
    'SignedFirmwareStatusNotification',
  ]),

  setPowerLimit: ({ evse, watts, until }, now) => ({
    method: 'SetChargingProfile',
    params: {
      connectorId: evse,
      csChargingProfiles: defined({
        chargingProfileId: PROFILE_ID_BASE + evse,
        stackLevel: PROFILE_STACK_LEVEL,
        chargingProfilePurpose: evse === 0 ? 'ChargePointMaxProfile' : 'TxDefaultProfile',
        chargingProfileKind: 'Absolute',
        validTo: until === undefined ? undefined : iso(until),
        chargingSchedule: defined({
          duration: until === undefined ? undefined : secondsUntil(until, now),
          startSchedule: iso(now),
          chargingRateUnit: 'W',
          chargingSchedulePeriod: [{ startPeriod: 0, limit: roundLimit(watts) }],
        }),
      }),
    },
  }),

  remoteStart: ({ evse, idTag }) => ({
    method: 'RemoteStartTransaction',
    params: defined({ connectorId: evse, idTag }),
  }),

  remoteStop: (transactionId) => {
    const id = Number(transactionId)
    if (!Number.isSafeInteger(id))
      throw new OcppActionInputError(`an OCPP 1.6 transaction id is an integer, got '${transactionId}'`)
    return { method: 'RemoteStopTransaction', params: { transactionId: id } }
  },

  reset: ({ hard }) => ({ method: 'Reset', params: { type: hard ? 'Hard' : 'Soft' } }),

  triggerMessage: ({ message, evse }) => ({
    method: 'TriggerMessage',
    params: defined({ requestedMessage: message, connectorId: evse }),
  }),

  // 1.6 has one connector per connector id: the EVSE number is the connector id.
  unlockConnector: ({ evse }) => ({ method: 'UnlockConnector', params: { connectorId: evse } }),

  reserveNow: ({ id, evse, expires, idTag }) => ({
    method: 'ReserveNow',
    params: { connectorId: evse, expiryDate: iso(expires), idTag, reservationId: id },
  }),

  cancelReservation: (id) => ({ method: 'CancelReservation', params: { reservationId: id } }),
}
