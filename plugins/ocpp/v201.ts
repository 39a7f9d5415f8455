/**
 * OCPP 2.0.1 codec. Station → CSMS: BootNotification, Heartbeat, StatusNotification, Authorize,
 * TransactionEvent (Started / Updated / Ended), MeterValues, NotifyReport, SignCertificate,
 * DataTransfer (and
 * notifications acknowledged without normalising). CSMS → station: SetChargingProfile,
 * RequestStartTransaction, RequestStopTransaction, UnlockConnector, ReserveNow,
 * CancelReservation, Reset, TriggerMessage, GetVariables. Authorize and the idToken of a
 * TransactionEvent answer with what the node's token authorisation says.
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
import { energyRegisterWh, type MeterValueInput, parseTimestamp } from './normalise.ts'

interface SampledValue201 {
  value: number
  context?: string
  measurand?: string
  phase?: string
  location?: string
  unitOfMeasure?: { unit?: string; multiplier?: number }
}

interface MeterValue201 {
  timestamp: string
  sampledValue: SampledValue201[]
}

/** 2.0.1 sampled values → the normaliser's common shape (unitOfMeasure → unit + multiplier). */
export const meterValues201 = (values: readonly MeterValue201[] | undefined): MeterValueInput[] =>
  (values ?? []).map((value) => ({
    timestamp: value.timestamp,
    sampledValue: value.sampledValue.map((sample) => ({
      value: sample.value,
      measurand: sample.measurand,
      phase: sample.phase,
      location: sample.location,
      context: sample.context,
      unit: sample.unitOfMeasure?.unit,
      multiplier: sample.unitOfMeasure?.multiplier,
    })),
  }))

interface IdToken201 {
  idToken: string
  type: string
}

/** `NoAuthorization` carries no token to ask about (free charging). */
async function tokenStatus(link: StationLink, evse: number, idToken: IdToken201): Promise<TokenDecision> {
  if (idToken.type === 'NoAuthorization') return { status: 'Accepted' }
  return link.authorize(evse, idToken.idToken, idToken.type)
}

async function authorize(
  params: { idToken: IdToken201 },
  link: StationLink,
): Promise<Record<string, unknown>> {
  return { idTokenInfo: { status: (await tokenStatus(link, 0, params.idToken)).status } }
}

async function bootNotification(
  params: {
    reason: string
    chargingStation: {
      model: string
      vendorName: string
      serialNumber?: string
      firmwareVersion?: string
      modem?: { iccid?: string; imsi?: string }
    }
  },
  link: StationLink,
): Promise<Record<string, unknown>> {
  const now = Date.now()
  const station = params.chargingStation
  await link.describeStation(
    defined({
      vendor: station.vendorName,
      model: station.model,
      firmware: station.firmwareVersion,
      serial: station.serialNumber,
      iccid: station.modem?.iccid,
      imsi: station.modem?.imsi,
    }),
  )
  await link.event(0, 'boot', defined({ reason: params.reason, firmware: station.firmwareVersion, t: now }))
  link.booted()
  return { status: 'Accepted', currentTime: iso(now), interval: link.heartbeatInterval }
}

async function statusNotification(
  params: { timestamp: string; connectorStatus: string; evseId: number; connectorId: number },
  link: StationLink,
): Promise<Record<string, unknown>> {
  if (params.evseId > 0) await link.describeEvse(params.evseId)
  await link.event(params.evseId, 'status', {
    status: params.connectorStatus,
    connector: params.connectorId,
    t: parseTimestamp(params.timestamp) ?? Date.now(),
  })
  return {}
}

async function transactionEvent(
  params: {
    eventType: 'Started' | 'Updated' | 'Ended'
    timestamp: string
    triggerReason: string
    seqNo: number
    transactionInfo: { transactionId: string; chargingState?: string; stoppedReason?: string }
    evse?: { id: number; connectorId?: number }
    idToken?: IdToken201
    meterValue?: MeterValue201[]
    offline?: boolean
  },
  link: StationLink,
): Promise<Record<string, unknown>> {
  const { transactionId } = params.transactionInfo
  const t = parseTimestamp(params.timestamp) ?? Date.now()
  let session = link.state.session(link.id, transactionId)
  // The EVSE is only required in the first message of a transaction.
  const evse = params.evse?.id ?? session?.evse
  const values = meterValues201(params.meterValue)
  if (evse !== undefined && evse > 0) await link.describeEvse(evse)
  if (evse !== undefined && values.length > 0) await link.meterValues(evse, values)
  const register = energyRegisterWh(values, evse === 0)
  const token = params.idToken?.type === 'NoAuthorization' ? undefined : params.idToken
  const decision = params.idToken ? await tokenStatus(link, evse ?? 0, params.idToken) : undefined

  if (!session && params.eventType !== 'Ended') {
    // Started, or an Updated whose Started the node never saw: the session begins here.
    session = defined({
      station: link.id,
      evse: evse ?? 0,
      transactionId,
      startedAt: t,
      meterStartWh: register,
      idTag: token?.idToken,
      tokenType: token?.type,
    })
    await link.event(
      evse ?? 0,
      'session_started',
      defined({
        transactionId,
        connector: params.evse?.connectorId,
        meterStartWh: register,
        idToken: token?.idToken,
        tokenType: token?.type,
        authorization: decision?.by === undefined ? undefined : decision.status,
        triggerReason: params.triggerReason,
        t,
      }),
    )
    await link.state.startSession(session)
  } else if (session && (register !== undefined || (token && session.idTag === undefined))) {
    // A station that sends no register at Started: the first one seen stands for the start.
    // The latest register is stored too, so an Ended without one (on another replica, or
    // after a restart) still knows the energy.
    if (session.meterStartWh === undefined) session.meterStartWh = register
    if (register !== undefined) session.lastEnergyWh = register
    if (token && session.idTag === undefined) {
      session.idTag = token.idToken
      session.tokenType = token.type
    }
    if (params.eventType !== 'Ended') await link.state.updateSession(session)
  }

  if (params.eventType === 'Ended') {
    const stopWh = register ?? session?.lastEnergyWh
    const startWh = session?.meterStartWh
    await link.event(
      evse ?? 0,
      'session_stopped',
      defined({
        transactionId,
        meterStopWh: stopWh,
        energyWh: stopWh !== undefined && startWh !== undefined ? stopWh - startWh : undefined,
        durationS: session ? Math.max(0, Math.round((t - session.startedAt) / 1000)) : undefined,
        reason: params.transactionInfo.stoppedReason ?? 'Local',
        triggerReason: params.triggerReason,
        idToken: session?.idTag ?? token?.idToken,
        t,
      }),
    )
    await link.state.endSession(link.id, transactionId)
  }
  return decision === undefined ? {} : { idTokenInfo: { status: decision.status } }
}

async function meterValues(
  params: { evseId: number; meterValue: MeterValue201[] },
  link: StationLink,
): Promise<Record<string, unknown>> {
  if (params.evseId > 0) await link.describeEvse(params.evseId)
  await link.meterValues(params.evseId, meterValues201(params.meterValue))
  return {}
}

interface ReportData {
  component: { name: string; evse?: { id: number } }
  variable: { name: string }
  variableAttribute: { type?: string; value?: string }[]
  variableCharacteristics?: { unit?: string; maxLimit?: number }
}

/**
 * NotifyReport: the device model is not mirrored; what the canonical resources can use is taken
 * from it: the rated power of the station and of each EVSE (`Power` maxLimit, W).
 */
async function notifyReport(
  params: { requestId: number; seqNo: number; tbc?: boolean; reportData?: ReportData[] },
  link: StationLink,
): Promise<Record<string, unknown>> {
  for (const data of params.reportData ?? []) {
    if (data.variable.name !== 'Power') continue
    const maxLimit = data.variableCharacteristics?.maxLimit
    if (maxLimit === undefined || !Number.isFinite(maxLimit)) continue
    if (data.component.name === 'EVSE' && data.component.evse !== undefined && data.component.evse.id > 0) {
      await link.describeEvse(data.component.evse.id, { maxPowerW: maxLimit })
    } else if (data.component.name === 'ChargingStation') {
      await link.describeStation({ maxPowerW: maxLimit })
    }
  }
  link.logger.debug(
    {
      station: link.id,
      requestId: params.requestId,
      seqNo: params.seqNo,
      items: params.reportData?.length ?? 0,
    },
    'NotifyReport',
  )
  return {}
}

const handlers: Record<string, InboundHandler> = {
  BootNotification: bootNotification,
  ...commonHandlers,
  StatusNotification: statusNotification,
  Authorize: authorize,
  TransactionEvent: transactionEvent,
  MeterValues: meterValues,
  NotifyReport: notifyReport,
  SignCertificate: async (params: { csr: string; certificateType?: string }, link: StationLink) => ({
    status: await link.signCertificate(params.csr, params.certificateType),
  }),
}

export const ocpp201: VersionCodec = {
  version: 'ocpp2.0.1',
  handlers,
  acknowledged: new Set([
    'ClearedChargingLimit',
    'FirmwareStatusNotification',
    'LogStatusNotification',
    'NotifyChargingLimit',
    'NotifyCustomerInformation',
    'NotifyDisplayMessages',
    'NotifyEvent',
    'NotifyMonitoringReport',
    'PublishFirmwareStatusNotification',
    'ReportChargingProfiles',
    'ReservationStatusUpdate',
    'SecurityEventNotification',
  ]),

  setPowerLimit: ({ evse, watts, until }, now) => ({
    method: 'SetChargingProfile',
    params: {
      evseId: evse,
      chargingProfile: defined({
        id: PROFILE_ID_BASE + evse,
        stackLevel: PROFILE_STACK_LEVEL,
        chargingProfilePurpose: evse === 0 ? 'ChargingStationMaxProfile' : 'TxDefaultProfile',
        chargingProfileKind: 'Absolute',
        validTo: until === undefined ? undefined : iso(until),
        chargingSchedule: [
          defined({
            id: PROFILE_ID_BASE + evse,
            startSchedule: iso(now),
            duration: until === undefined ? undefined : secondsUntil(until, now),
            chargingRateUnit: 'W',
            chargingSchedulePeriod: [{ startPeriod: 0, limit: roundLimit(watts) }],
          }),
        ],
      }),
    },
  }),

  remoteStart: ({ evse, idTag, remoteStartId }) => ({
    method: 'RequestStartTransaction',
    params: defined({ evseId: evse, remoteStartId, idToken: { idToken: idTag, type: 'Central' } }),
  }),

  remoteStop: (transactionId) => ({ method: 'RequestStopTransaction', params: { transactionId } }),

  reset: ({ hard, evse }) => ({
    method: 'Reset',
    params: defined({ type: hard ? 'Immediate' : 'OnIdle', evseId: evse }),
  }),

  triggerMessage: ({ message, evse }) => ({
    method: 'TriggerMessage',
    params: defined({ requestedMessage: message, evse: evse === undefined ? undefined : { id: evse } }),
  }),

  unlockConnector: ({ evse, connector }) => ({
    method: 'UnlockConnector',
    params: { evseId: evse, connectorId: connector },
  }),

  reserveNow: ({ id, evse, expires, idTag }) => ({
    method: 'ReserveNow',
    params: { id, expiryDateTime: iso(expires), idToken: { idToken: idTag, type: 'Central' }, evseId: evse },
  }),

  cancelReservation: (id) => ({ method: 'CancelReservation', params: { reservationId: id } }),
}
