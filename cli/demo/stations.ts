/**
 * Charging stations for the demo, run by the demo process itself as real OCPP peers (ocpp-rpc's
 * RPCClient, strict mode) over WebSocket to ChargeCo's node: they boot, start a transaction,
 * send meter values every second, and obey SetChargingProfile by lowering the power they draw
 * to the limit (until the profile's validTo).
 */
import { createRPCError, RPCClient } from 'ocpp-rpc'

export type OcppVersion = 'ocpp1.6' | 'ocpp2.0.1'

export interface StationSpec {
  id: string
  version: OcppVersion
  /** What the car would draw without a limit, in W. */
  nominalW: number
}

/** What the demo reports about a station (its one EVSE, `<id>-1`). */
export interface StationView {
  id: string
  rid: string
  version: OcppVersion
  charging: boolean
  powerW: number
  limitW: number | null
  energyWh: number
}

const METER_INTERVAL_MS = 1_000
const ID_TAG = 'DEMO-DRIVER'
/** A three-phase 230 V connection, to read a limit given in amps. */
const WATTS_PER_AMP = 3 * 230

interface Limit {
  watts: number
  until?: number
}

interface ScheduleLike {
  chargingRateUnit?: string
  chargingSchedulePeriod?: { limit?: number }[]
}

/** The limit in a SetChargingProfile request of either version, or undefined when unreadable. */
export function limitFromProfile(version: OcppVersion, params: Record<string, unknown>): Limit | undefined {
  const profile = (version === 'ocpp1.6' ? params.csChargingProfiles : params.chargingProfile) as
    | { validTo?: string; chargingSchedule?: ScheduleLike | ScheduleLike[] }
    | undefined
  if (!profile) return undefined
  const schedule = Array.isArray(profile.chargingSchedule)
    ? profile.chargingSchedule[0]
    : profile.chargingSchedule
  const limit = schedule?.chargingSchedulePeriod?.[0]?.limit
  if (typeof limit !== 'number' || !Number.isFinite(limit) || limit < 0) return undefined
  const watts = schedule?.chargingRateUnit === 'A' ? limit * WATTS_PER_AMP : limit
  const until = profile.validTo === undefined ? undefined : Date.parse(profile.validTo)
  return { watts, ...(until !== undefined && Number.isFinite(until) ? { until } : {}) }
}

export class DemoStation {
  private readonly client: RPCClient
  private timer: ReturnType<typeof setInterval> | undefined
  private transactionId: string | number | undefined
  private seqNo = 0
  private energyWh = 0
  private powerW = 0
  private limit: Limit | undefined
  private lastTick = 0
  private stopped = false
  private sending = false
  private tick = 0

  constructor(
    readonly spec: StationSpec,
    endpoint: string,
    private readonly onError: (message: string) => void,
  ) {
    this.client = new RPCClient({
      endpoint,
      identity: spec.id,
      protocols: [spec.version],
      strictMode: true,
      // The demo ends when a node goes away; a station has nothing to reconnect to.
      reconnect: false,
      // auto_accept on the demo's CSMS: no credentials.
      password: null,
    } as never)
    this.client.handle(async ({ method, params }) => this.answer(method ?? '', params ?? {}))
  }

  get rid(): string {
    return `${this.spec.id}-1`
  }

  view(): StationView {
    return {
      id: this.spec.id,
      rid: this.rid,
      version: this.spec.version,
      charging: this.transactionId !== undefined,
      powerW: this.powerW,
      limitW: this.activeLimit()?.watts ?? null,
      energyWh: Math.round(this.energyWh),
    }
  }

  /** Connect, boot, plug a car in and start the meter values. */
  async start(): Promise<void> {
    await this.client.connect()
    const now = new Date().toISOString()
    if (this.spec.version === 'ocpp1.6') {
      await this.client.call('BootNotification', {
        chargePointVendor: 'DemoWorks',
        chargePointModel: 'Wallbox-16',
        chargePointSerialNumber: `SN-${this.spec.id}`,
        firmwareVersion: '1.6.9',
      })
      await this.client.call('StatusNotification', {
        connectorId: 1,
        errorCode: 'NoError',
        status: 'Available',
      })
      await this.client.call('Authorize', { idTag: ID_TAG })
      const started = (await this.client.call('StartTransaction', {
        connectorId: 1,
        idTag: ID_TAG,
        meterStart: 0,
        timestamp: now,
      })) as { transactionId: number }
      this.transactionId = started.transactionId
      await this.client.call('StatusNotification', {
        connectorId: 1,
        errorCode: 'NoError',
        status: 'Charging',
      })
    } else {
      await this.client.call('BootNotification', {
        reason: 'PowerUp',
        chargingStation: {
          vendorName: 'DemoWorks',
          model: 'DC-201',
          serialNumber: `SN-${this.spec.id}`,
          firmwareVersion: '2.0.1-demo',
        },
      })
      await this.client.call('StatusNotification', {
        timestamp: now,
        connectorStatus: 'Occupied',
        evseId: 1,
        connectorId: 1,
      })
      const transactionId = `${this.spec.id}-tx-${Date.now().toString(36)}`
      await this.client.call('TransactionEvent', {
        eventType: 'Started',
        timestamp: now,
        triggerReason: 'Authorized',
        seqNo: this.seqNo++,
        transactionInfo: { transactionId, chargingState: 'Charging' },
        evse: { id: 1, connectorId: 1 },
        idToken: { idToken: ID_TAG, type: 'Central' },
        meterValue: [
          {
            timestamp: now,
            sampledValue: [
              {
                value: 0,
                measurand: 'Energy.Active.Import.Register',
                context: 'Transaction.Begin',
                unitOfMeasure: { unit: 'Wh' },
              },
            ],
          },
        ],
      })
      this.transactionId = transactionId
    }
    this.lastTick = Date.now()
    this.timer = setInterval(() => void this.sendMeterValues(), METER_INTERVAL_MS)
  }

  /** End the transaction (briefly: the demo is stopping) and close the connection. */
  async stop(): Promise<void> {
    if (this.stopped) return
    this.stopped = true
    clearInterval(this.timer)
    const options = { callTimeoutMs: 1_500 }
    try {
      if (this.transactionId !== undefined) {
        const now = new Date().toISOString()
        if (this.spec.version === 'ocpp1.6') {
          await this.client.call(
            'StopTransaction',
            {
              transactionId: Number(this.transactionId),
              meterStop: Math.round(this.energyWh),
              timestamp: now,
              reason: 'Local',
            },
            options,
          )
        } else {
          await this.client.call(
            'TransactionEvent',
            {
              eventType: 'Ended',
              timestamp: now,
              triggerReason: 'StopAuthorized',
              seqNo: this.seqNo++,
              transactionInfo: { transactionId: String(this.transactionId), stoppedReason: 'Local' },
            },
            options,
          )
        }
      }
    } catch {
      // The node may already be going; the session ends with the connection either way.
    }
    this.transactionId = undefined
    this.powerW = 0
    await this.client.close({ force: true }).catch(() => {})
  }

  private activeLimit(): Limit | undefined {
    if (this.limit?.until !== undefined && this.limit.until <= Date.now()) this.limit = undefined
    return this.limit
  }

  /** The power the car draws now: its nominal rate with a little noise, capped by the limit. */
  private currentPower(): number {
    this.tick += 1
    // A little below the nominal rate, never above it (the car's own taper and noise).
    const wobble = 0.98 + 0.02 * Math.sin(this.tick / 3 + this.spec.nominalW)
    const wanted = Math.round(this.spec.nominalW * wobble)
    const limit = this.activeLimit()
    return limit === undefined ? wanted : Math.min(wanted, Math.round(limit.watts))
  }

  private async sendMeterValues(): Promise<void> {
    if (this.stopped || this.sending || this.transactionId === undefined) return
    this.sending = true
    try {
      const now = Date.now()
      this.energyWh += (this.powerW * (now - this.lastTick)) / 3_600_000
      this.lastTick = now
      this.powerW = this.currentPower()
      const timestamp = new Date(now).toISOString()
      if (this.spec.version === 'ocpp1.6') {
        await this.client.call('MeterValues', {
          connectorId: 1,
          transactionId: Number(this.transactionId),
          meterValue: [
            {
              timestamp,
              sampledValue: [
                { measurand: 'Power.Active.Import', unit: 'W', value: String(this.powerW) },
                {
                  measurand: 'Energy.Active.Import.Register',
                  unit: 'Wh',
                  value: String(Math.round(this.energyWh)),
                },
              ],
            },
          ],
        })
      } else {
        await this.client.call('TransactionEvent', {
          eventType: 'Updated',
          timestamp,
          triggerReason: 'MeterValuePeriodic',
          seqNo: this.seqNo++,
          transactionInfo: { transactionId: String(this.transactionId), chargingState: 'Charging' },
          meterValue: [
            {
              timestamp,
              sampledValue: [
                { value: this.powerW, measurand: 'Power.Active.Import', unitOfMeasure: { unit: 'W' } },
                {
                  value: Math.round(this.energyWh),
                  measurand: 'Energy.Active.Import.Register',
                  unitOfMeasure: { unit: 'Wh' },
                },
              ],
            },
          ],
        })
      }
    } catch (error) {
      if (!this.stopped) this.onError(`${this.spec.id}: meter values not sent: ${(error as Error).message}`)
    } finally {
      this.sending = false
    }
  }

  /** Calls from the CSMS: obey charging profiles; anything else is not implemented here. */
  private async answer(method: string, params: Record<string, unknown>): Promise<Record<string, unknown>> {
    switch (method) {
      case 'SetChargingProfile': {
        const limit = limitFromProfile(this.spec.version, params)
        if (!limit) return { status: 'Rejected' }
        this.limit = limit
        // Obey at once, not at the next meter value.
        this.powerW = Math.min(this.powerW, Math.round(limit.watts))
        return { status: 'Accepted' }
      }
      case 'ClearChargingProfile':
        this.limit = undefined
        return { status: 'Accepted' }
      default:
        throw createRPCError('NotImplemented', `the demo station does not implement ${method}`)
    }
  }
}

/** The demo's stations: two OCPP 1.6-J and two OCPP 2.0.1, with different car charging rates. */
export const DEMO_STATIONS: readonly StationSpec[] = [
  { id: 'CS16-A', version: 'ocpp1.6', nominalW: 11_000 },
  { id: 'CS16-B', version: 'ocpp1.6', nominalW: 7_200 },
  { id: 'CS201-A', version: 'ocpp2.0.1', nominalW: 22_000 },
  { id: 'CS201-B', version: 'ocpp2.0.1', nominalW: 11_000 },
]

/** Start every station; one that fails to start is reported and left out. */
export async function startStations(
  endpoint: string,
  specs: readonly StationSpec[],
  onError: (message: string) => void,
): Promise<DemoStation[]> {
  const stations = specs.map((spec) => new DemoStation(spec, endpoint, onError))
  const results = await Promise.allSettled(stations.map((station) => station.start()))
  const started: DemoStation[] = []
  for (const [index, result] of results.entries()) {
    if (result.status === 'fulfilled') started.push(stations[index]!)
    else {
      onError(`station ${stations[index]!.spec.id} did not start: ${(result.reason as Error).message}`)
      await stations[index]!.stop()
    }
  }
  return started
}
