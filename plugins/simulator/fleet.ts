/**
 * The simulated fleet: sites with a meter, PV, a battery and EVSEs, and the physics of one step.
 * Pure state and arithmetic (no timers, no I/O): `step(t, now)` advances every site to simulated
 * time `t` and returns the readings and events, so it is cheap to run and easy to test.
 *
 * Shapes: PV follows a sun curve by local time of day (06:00–18:00, shifted a little per site)
 * under drifting clouds; the house load has morning and evening peaks plus appliances; EVs plug in
 * mornings and evenings and charge until full or until they leave; the battery charges from PV
 * surplus and covers the house load when PV falls short (evenings), within 5–95 % soc. Power is
 * positive when drawing from the grid and negative when exporting (ARCHITECTURE §5).
 */
import type { ResourceKind, TelemetryRecord } from '../../data-plane/index.ts'
import {
  BATTERY_MODELS,
  type BatteryModel,
  EVSE_MODELS,
  type EvseModel,
  METER_MODELS,
  type MeterModel,
  PV_MODELS,
  type PvModel,
  VEHICLE_MAX_POWER_W,
} from './catalogue.ts'
import type { Random } from './random.ts'

export const SOC_MIN = 5
export const SOC_MAX = 95
const BATTERY_EFFICIENCY = 0.95
const HOUR_MS = 3_600_000
/** 6 A at 230 V: the least an EV charges at (IEC 61851). */
const MIN_CHARGE_W = 1_380

export interface StandingData {
  kind: ResourceKind
  rid: string
  site?: string
  name: string
  attrs: Record<string, unknown>
}

export interface FleetEvent {
  kind: ResourceKind
  rid: string
  type: string
  event: Record<string, unknown>
}

export interface FleetOutput {
  records: TelemetryRecord[]
  events: FleetEvent[]
}

/** A `limit_power` in force: |power| at most `w` until `until` (epoch ms, node clock). */
export interface PowerLimit {
  w: number
  until?: number
  source?: string
}

interface Session {
  id: string
  plugOutAt: number
  remainingWh: number
  deliveredWh: number
  vehicleMaxW: number
}

export interface Evse {
  kind: 'evse'
  rid: string
  model: EvseModel
  ratedW: number
  power: number
  importWh: number
  limit?: PowerLimit
  session?: Session
}

export interface Battery {
  kind: 'battery'
  rid: string
  model: BatteryModel
  ratedW: number
  power: number
  soc: number
  importWh: number
  exportWh: number
  limit?: PowerLimit
}

interface Pv {
  rid: string
  model: PvModel
  power: number
  exportWh: number
  /** Hours the site's solar noon is off 12:00 (longitude within the time zone). */
  noonShiftHours: number
  localCloud: number
}

interface Meter {
  rid: string
  model: MeterModel
  phases: 1 | 3
  power: number
  importWh: number
  exportWh: number
  voltageNoise: number
}

/** Site-level commands (ARCHITECTURE §5) the simulator obeys at the connection point. */
export const SITE_COMMANDS = [
  'limit_export',
  'limit_import',
  'limit_generation',
  'limit_load',
  'connect',
] as const
export type SiteCommand = (typeof SITE_COMMANDS)[number]

interface Site {
  rid: string
  name: string
  /** Limits in force at the connection point; `connect` holds `w` 1 (connected) or 0. */
  limits: Partial<Record<SiteCommand, PowerLimit>>
  connectionLimitW: number
  loadScale: number
  loadNoise: number
  appliance?: { w: number; until: number }
  meter: Meter
  pv: Pv
  battery: Battery
  evses: Evse[]
}

/** A resource that obeys `limit_power`. */
export type Controllable = Evse | Battery

export interface FleetInit {
  sites: number
  evsesPerSite: number
  /** Simulated time of the first step: the initial state (soc, plugged-in cars) fits it. */
  start: number
}

export interface FleetComponents {
  random: Random
}

/** Local time of day in hours, [0, 24). */
export function localHour(t: number): number {
  const date = new Date(t)
  return (
    date.getHours() + date.getMinutes() / 60 + date.getSeconds() / 3_600 + date.getMilliseconds() / HOUR_MS
  )
}

/** Clear-sky PV output as a fraction of rating: 0 at night, 1 at solar noon. */
export function sunFactor(hour: number, noonShiftHours = 0): number {
  const solar = hour - noonShiftHours
  if (solar <= 6 || solar >= 18) return 0
  return Math.sin((Math.PI * (solar - 6)) / 12) ** 1.5
}

const bump = (hour: number, centre: number, width: number): number =>
  Math.exp(-0.5 * ((hour - centre) / width) ** 2)

/** A household's typical draw by hour (W): a base, a morning and a larger evening peak. */
function houseLoadProfile(hour: number): number {
  return 250 + 600 * bump(hour, 7.5, 1) + 300 * bump(hour, 13, 2.5) + 1_500 * bump(hour, 19, 1.8)
}

/** EV arrivals per hour per charging point: some in the morning, more in the evening. */
function arrivalRate(hour: number): number {
  return 0.02 + 0.12 * bump(hour, 8.5, 1) + 0.25 * bump(hour, 18, 1.5)
}

const round = (value: number, digits = 0): number => {
  const factor = 10 ** digits
  // `+ 0` turns -0 into 0: a dark PV panel reads 0, not -0.
  return Math.round(value * factor) / factor + 0
}

/** Ornstein–Uhlenbeck step: mean 0, standard deviation `sigma`, correlation time `tauMs`. */
function drift(random: Random, value: number, dtMs: number, sigma: number, tauMs: number): number {
  if (dtMs <= 0) return value
  const a = Math.exp(-dtMs / tauMs)
  return a * value + Math.sqrt(1 - a * a) * random.gaussian(sigma)
}

export class Fleet {
  readonly sites: Site[] = []
  private readonly byKey = new Map<string, Controllable>()
  private lastT: number | undefined
  private regionalCloud: number
  private gridFrequency = 0
  private sessions = 0

  constructor(
    init: FleetInit,
    private readonly components: FleetComponents,
  ) {
    const { random } = components
    for (let n = 1; n <= init.sites; n++) {
      const rid = `site-${n}`
      const phases = random.chance(0.4) ? 3 : 1
      const battery = random.pick(BATTERY_MODELS)
      const site: Site = {
        rid,
        name: `Site ${n}`,
        limits: {},
        connectionLimitW: phases === 3 ? 43_470 : 14_490,
        loadScale: random.between(0.6, 1.6),
        loadNoise: 0,
        meter: {
          rid: `${rid}-meter`,
          model: random.pick(METER_MODELS),
          phases,
          power: 0,
          importWh: round(random.between(2e6, 3e7), 3),
          exportWh: round(random.between(5e5, 1e7), 3),
          voltageNoise: 0,
        },
        pv: {
          rid: `${rid}-pv`,
          model: random.pick(PV_MODELS),
          power: 0,
          exportWh: round(random.between(1e6, 2e7), 3),
          noonShiftHours: random.between(-0.25, 0.25),
          localCloud: 0,
        },
        battery: {
          kind: 'battery',
          rid: `${rid}-bat`,
          model: battery,
          ratedW: battery.ratedPowerW,
          power: 0,
          soc: 50,
          importWh: round(random.between(5e5, 5e6), 3),
          exportWh: 0,
        },
        evses: [],
      }
      site.battery.exportWh = round(site.battery.importWh * random.between(0.85, 0.92), 3)
      // A single-phase connection takes single-phase chargers only.
      const evseModels = phases === 3 ? EVSE_MODELS : EVSE_MODELS.filter((model) => model.phases === 1)
      for (let k = 1; k <= init.evsesPerSite; k++) {
        const model = random.pick(evseModels)
        site.evses.push({
          kind: 'evse',
          rid: `${rid}-evse-${k}`,
          model,
          ratedW: model.maxPowerW,
          power: 0,
          importWh: round(random.between(1e5, 1e7), 3),
        })
      }
      this.sites.push(site)
      this.byKey.set(`battery.${site.battery.rid}`, site.battery)
      for (const evse of site.evses) this.byKey.set(`evse.${evse.rid}`, evse)
    }
    this.regionalCloud = random.gaussian(0.25)
    this.initialState(init.start)
  }

  /** Standing data of every resource, as upserted at start. */
  standingData(): StandingData[] {
    const timezone = Intl.DateTimeFormat().resolvedOptions().timeZone
    const resources: StandingData[] = []
    for (const site of this.sites) {
      const common = { simulated: true }
      resources.push({
        kind: 'site',
        rid: site.rid,
        name: site.name,
        attrs: { ...common, timezone, connectionLimitW: site.connectionLimitW, phases: site.meter.phases },
      })
      const { meter, pv, battery } = site
      resources.push({
        kind: 'meter',
        rid: meter.rid,
        site: site.rid,
        name: `${site.name} grid meter`,
        attrs: { ...common, vendor: meter.model.vendor, model: meter.model.model, phases: meter.phases },
      })
      resources.push({
        kind: 'pv',
        rid: pv.rid,
        site: site.rid,
        name: `${site.name} PV`,
        attrs: {
          ...common,
          vendor: pv.model.vendor,
          model: pv.model.model,
          ratedPowerW: pv.model.ratedPowerW,
        },
      })
      resources.push({
        kind: 'battery',
        rid: battery.rid,
        site: site.rid,
        name: `${site.name} battery`,
        attrs: {
          ...common,
          vendor: battery.model.vendor,
          model: battery.model.model,
          capacityWh: battery.model.capacityWh,
          ratedPowerW: battery.model.ratedPowerW,
          socMin: SOC_MIN,
          socMax: SOC_MAX,
        },
      })
      for (const [index, evse] of site.evses.entries()) {
        resources.push({
          kind: 'evse',
          rid: evse.rid,
          site: site.rid,
          name: `${site.name} charger ${index + 1}`,
          attrs: {
            ...common,
            vendor: evse.model.vendor,
            model: evse.model.model,
            maxPowerW: evse.model.maxPowerW,
            phases: evse.model.phases,
            connector: 'Type2',
          },
        })
      }
    }
    return resources
  }

  /** The EVSE or battery `kind`/`rid` names, if this fleet has it. */
  controllable(kind: string, rid: string): Controllable | undefined {
    return this.byKey.get(`${kind}.${rid}`)
  }

  /** Put a limit in force at once: the resource's power is clamped and both are reported. */
  applyLimit(target: Controllable, limit: PowerLimit, t: number): FleetOutput {
    target.limit = limit
    target.power = clampToLimit(target.power, limit)
    return {
      records: [
        { kind: target.kind, rid: target.rid, q: 'power_limit', v: limit.w, t, u: 'W' },
        { kind: target.kind, rid: target.rid, q: 'power', v: target.power, t, u: 'W' },
      ],
      events: [],
    }
  }

  /** Whether this fleet has site `rid`. */
  hasSite(rid: string): boolean {
    return this.sites.some((site) => site.rid === rid)
  }

  /**
   * Put a site command in force from the next step: the site's DER are curtailed (PV, battery
   * discharge), its flexible loads reduced (EV charging, battery charging) or, with `connect` 0,
   * its DER stop, so the connection point keeps within the limit.
   */
  applySiteLimit(rid: string, command: SiteCommand, limit: PowerLimit): FleetOutput {
    const site = this.sites.find((candidate) => candidate.rid === rid)
    if (!site) return { records: [], events: [] }
    site.limits[command] = limit
    return { records: [], events: [] }
  }

  private expireSiteLimits(site: Site, t: number, now: number, events: FleetEvent[]): void {
    for (const command of SITE_COMMANDS) {
      const limit = site.limits[command]
      if (limit?.until === undefined || limit.until > now) continue
      delete site.limits[command]
      events.push({
        kind: 'site',
        rid: site.rid,
        type: 'limit_expired',
        event: { command, v: limit.w, u: command === 'connect' ? '1' : 'W', until: limit.until, t },
      })
    }
  }

  /** Plug a car into an EVSE now (an operator's demo action); it charges from the next step. */
  plugIn(evse: Evse, t: number, energyWh: number, hours: number): FleetOutput {
    if (evse.session) return { records: [], events: [] }
    return { records: [], events: [this.startSession(evse, t, energyWh, t + hours * HOUR_MS)] }
  }

  /** Advance every site to simulated time `t`; `now` (node clock) decides which limits expired. */
  step(t: number, now: number): FleetOutput {
    const { random } = this.components
    const dtMs = this.lastT === undefined ? 0 : Math.max(0, t - this.lastT)
    const dtHours = dtMs / HOUR_MS
    this.lastT = t
    const hour = localHour(t)
    const records: TelemetryRecord[] = []
    const events: FleetEvent[] = []
    this.regionalCloud = drift(random, this.regionalCloud, dtMs, 0.25, 30 * 60_000)
    this.gridFrequency = drift(random, this.gridFrequency, dtMs, 0.025, 60_000)
    for (const site of this.sites) {
      // PV under clouds: never positive, exactly 0 in the dark.
      const { pv } = site
      pv.localCloud = drift(random, pv.localCloud, dtMs, 0.12, 5 * 60_000)
      const cloud = Math.min(0.85, Math.max(0, 0.25 + this.regionalCloud + pv.localCloud))
      const sun = sunFactor(hour, pv.noonShiftHours)
      const pvOutput =
        sun === 0 ? 0 : pv.model.ratedPowerW * 0.92 * sun * (1 - cloud) * (1 + random.gaussian(0.01))
      pv.power = round(-Math.min(pv.model.ratedPowerW, Math.max(0, pvOutput)))
      pv.exportWh += -pv.power * dtHours

      // The house: profile × scale, slow noise, and the odd appliance.
      site.loadNoise = drift(random, site.loadNoise, dtMs, 0.08, 10 * 60_000)
      if (site.appliance && site.appliance.until <= t) site.appliance = undefined
      const awake = hour >= 6 && hour < 23
      if (!site.appliance && dtMs > 0 && random.chance(1 - Math.exp(-(awake ? 1.5 : 0.2) * dtHours))) {
        site.appliance = {
          w: random.pick([1_800, 2_000, 2_400, 3_000]),
          until: t + random.between(3, 45) * 60_000,
        }
      }
      const houseLoad = Math.max(
        80,
        houseLoadProfile(hour) * site.loadScale * (1 + site.loadNoise) + (site.appliance?.w ?? 0),
      )

      // Chargers share what the connection has left (load balancing), keeping a 10 % margin.
      let evsePower = 0
      for (const evse of site.evses) {
        this.expireLimit(evse, t, now, records, events)
        this.stepEvse(evse, t, dtMs, hour, site.connectionLimitW * 0.9 - houseLoad - evsePower, events)
        evsePower += evse.power
      }

      const { battery } = site
      this.expireLimit(battery, t, now, records, events)
      this.stepBattery(battery, houseLoad + pv.power, houseLoad + pv.power + evsePower, dtHours)

      this.expireSiteLimits(site, t, now, events)
      evsePower = constrainSite(site, round(houseLoad), dtHours)
      for (const evse of site.evses) {
        records.push(
          { kind: 'evse', rid: evse.rid, q: 'power', v: evse.power, t, u: 'W' },
          { kind: 'evse', rid: evse.rid, q: 'energy_import', v: round(evse.importWh, 3), t, u: 'Wh' },
        )
      }

      const { meter } = site
      meter.power = round(houseLoad) + pv.power + evsePower + battery.power
      if (meter.power > 0) meter.importWh += meter.power * dtHours
      else meter.exportWh += -meter.power * dtHours
      meter.voltageNoise = drift(random, meter.voltageNoise, dtMs, 1.8, 2 * 60_000)
      // Exporting PV lifts the local voltage a little; heavy import sags it.
      const voltage =
        230 +
        meter.voltageNoise +
        (3 * -pv.power) / pv.model.ratedPowerW -
        (2 * Math.max(0, meter.power)) / site.connectionLimitW
      const frequency = 50 + this.gridFrequency + random.gaussian(0.002)
      records.push(
        { kind: 'meter', rid: meter.rid, q: 'power', v: meter.power, t, u: 'W' },
        { kind: 'meter', rid: meter.rid, q: 'energy_import', v: round(meter.importWh, 3), t, u: 'Wh' },
        { kind: 'meter', rid: meter.rid, q: 'energy_export', v: round(meter.exportWh, 3), t, u: 'Wh' },
        { kind: 'meter', rid: meter.rid, q: 'voltage', v: round(voltage, 1), t, u: 'V' },
        { kind: 'meter', rid: meter.rid, q: 'frequency', v: round(frequency, 3), t, u: 'Hz' },
        { kind: 'pv', rid: pv.rid, q: 'power', v: pv.power, t, u: 'W' },
        { kind: 'pv', rid: pv.rid, q: 'energy_export', v: round(pv.exportWh, 3), t, u: 'Wh' },
        { kind: 'battery', rid: battery.rid, q: 'power', v: battery.power, t, u: 'W' },
        { kind: 'battery', rid: battery.rid, q: 'soc', v: round(battery.soc, 2), t, u: '%' },
        { kind: 'battery', rid: battery.rid, q: 'energy_import', v: round(battery.importWh, 3), t, u: 'Wh' },
        { kind: 'battery', rid: battery.rid, q: 'energy_export', v: round(battery.exportWh, 3), t, u: 'Wh' },
      )
    }
    return { records, events }
  }

  /**
   * The battery over the last `dtHours`: charge from PV surplus (including what EVs take), cover
   * the house's shortfall from PV (not the EVs'), within its rating, any limit and 5–95 % soc.
   */
  private stepBattery(battery: Battery, houseNet: number, siteNet: number, dtHours: number): void {
    const { random } = this.components
    const { capacityWh } = battery.model
    let power = 0
    if (siteNet < -100 && battery.soc < SOC_MAX) power = Math.min(-siteNet, battery.ratedW)
    else if (houseNet > 50 && battery.soc > SOC_MIN) power = -Math.min(houseNet, battery.ratedW)
    power *= 1 + random.gaussian(0.005)
    power = Math.max(-battery.ratedW, Math.min(battery.ratedW, power))
    if (battery.limit) power = clampToLimit(power, battery.limit)
    if (dtHours > 0) {
      const maxCharge = ((SOC_MAX - battery.soc) / 100) * (capacityWh / (BATTERY_EFFICIENCY * dtHours))
      const maxDischarge = ((battery.soc - SOC_MIN) / 100) * ((capacityWh * BATTERY_EFFICIENCY) / dtHours)
      power = Math.max(-maxDischarge, Math.min(maxCharge, power))
    }
    // Toward zero, so rounding never pushes past the soc bounds or a limit.
    power = Math.trunc(power) + 0
    if (Math.abs(power) < 20) power = 0
    const cellWh = power > 0 ? power * dtHours * BATTERY_EFFICIENCY : (power * dtHours) / BATTERY_EFFICIENCY
    battery.soc = Math.min(SOC_MAX, Math.max(SOC_MIN, battery.soc + (cellWh / capacityWh) * 100))
    battery.power = power
    if (power > 0) battery.importWh += power * dtHours
    else battery.exportWh += -power * dtHours
  }

  /** An EVSE over the last `dtMs`: a car arrives, charges until full or until it leaves. */
  private stepEvse(
    evse: Evse,
    t: number,
    dtMs: number,
    hour: number,
    headroomW: number,
    events: FleetEvent[],
  ): void {
    const { random } = this.components
    const dtHours = dtMs / HOUR_MS
    const session = evse.session
    if (session && session.plugOutAt <= t) {
      events.push({
        kind: 'evse',
        rid: evse.rid,
        type: 'session_stopped',
        event: { session: session.id, energyWh: round(session.deliveredWh, 1), t },
      })
      evse.session = undefined
    } else if (!session && dtMs > 0 && random.chance(1 - Math.exp(-arrivalRate(hour) * dtHours))) {
      // Evening arrivals stay the night; daytime ones a few hours.
      const overnight = hour >= 16 || hour < 5
      const plugOutAt = overnight
        ? t + (((random.between(6.5, 8.5) - hour + 24) % 24) + 0.5) * HOUR_MS
        : t + random.between(1.5, 8) * HOUR_MS
      events.push(this.startSession(evse, t, random.between(4_000, 40_000), plugOutAt))
    }
    const current = evse.session
    if (!current || current.remainingWh <= 0) {
      evse.power = 0
      return
    }
    let power = Math.min(evse.model.maxPowerW, current.vehicleMaxW)
    // The last kilowatt-hours go in slower (constant voltage phase).
    if (current.remainingWh < 1_500) power *= Math.max(0.15, current.remainingWh / 1_500)
    power *= 1 - Math.abs(random.gaussian(0.01))
    if (evse.limit) power = clampToLimit(power, evse.limit)
    // Below 6 A a car cannot charge: it pauses until there is room.
    power = Math.min(power, headroomW)
    if (power < MIN_CHARGE_W) power = 0
    if (dtHours > 0) power = Math.min(power, current.remainingWh / dtHours)
    power = Math.floor(power) + 0
    evse.power = power
    const energy = power * dtHours
    current.remainingWh -= energy
    current.deliveredWh += energy
    evse.importWh += energy
  }

  private startSession(evse: Evse, t: number, energyWh: number, plugOutAt: number): FleetEvent {
    const { random } = this.components
    this.sessions += 1
    evse.session = {
      id: `${evse.rid}-s${this.sessions}`,
      plugOutAt,
      remainingWh: energyWh,
      deliveredWh: 0,
      vehicleMaxW: random.pick(VEHICLE_MAX_POWER_W),
    }
    return {
      kind: 'evse',
      rid: evse.rid,
      type: 'session_started',
      event: { session: evse.session.id, t },
    }
  }

  private expireLimit(
    target: Controllable,
    t: number,
    now: number,
    records: TelemetryRecord[],
    events: FleetEvent[],
  ): void {
    const limit = target.limit
    if (limit?.until === undefined || limit.until > now) return
    target.limit = undefined
    records.push({ kind: target.kind, rid: target.rid, q: 'power_limit', v: target.ratedW, t, u: 'W' })
    events.push({
      kind: target.kind,
      rid: target.rid,
      type: 'limit_expired',
      event: { command: 'limit_power', v: limit.w, u: 'W', until: limit.until, t },
    })
  }

  /** Start in a state that fits the time of day: soc, cars already plugged in. */
  private initialState(start: number): void {
    const { random } = this.components
    const hour = localHour(start)
    const night = hour >= 18 || hour < 7
    for (const site of this.sites) {
      const [low, high] =
        hour < 7 ? [8, 35] : hour < 11 ? [5, 25] : hour < 16 ? [30, 85] : hour < 20 ? [60, 95] : [25, 70]
      site.battery.soc = random.between(low, high)
      for (const evse of site.evses) {
        if (!random.chance(night ? 0.55 : 0.25)) continue
        const plugOutAt = night
          ? start + (((random.between(6.5, 8.5) - hour + 24) % 24) + 0.5) * HOUR_MS
          : start + random.between(0.5, 5) * HOUR_MS
        this.startSession(evse, start, random.between(0, 20_000), plugOutAt)
      }
    }
  }
}

/**
 * Keep a site within its connection-point limits after the free-running step: returns the EVSEs'
 * new total. Generation is curtailed PV first, then battery discharge; load is reduced battery
 * charging first, then EV charging. Energy registers are corrected for what changed.
 */
function constrainSite(site: Site, houseLoad: number, dtHours: number): number {
  const { limits, pv, battery, evses } = site
  const before = { pv: pv.power, battery: battery.power, evses: evses.map((evse) => evse.power) }
  const evseTotal = () => evses.reduce((sum, evse) => sum + evse.power, 0)
  const net = () => houseLoad + pv.power + battery.power + evseTotal()
  /** Lower the EVSEs' draw by up to `watts`; returns what it took. */
  const shedEvses = (watts: number): number => {
    let left = watts
    for (const evse of evses) {
      const cut = Math.min(left, evse.power)
      evse.power -= cut
      left -= cut
    }
    return watts - left
  }
  if (limits.connect && limits.connect.w < 0.5) {
    pv.power = 0
    battery.power = 0
    for (const evse of evses) evse.power = 0
  } else {
    const generation = limits.limit_generation
    if (generation) {
      let over = -pv.power - Math.min(0, battery.power) - generation.w
      if (over > 0) {
        const cut = Math.min(over, -pv.power)
        pv.power += cut
        over -= cut
        if (over > 0 && battery.power < 0) battery.power += Math.min(over, -battery.power)
      }
    }
    const load = limits.limit_load
    if (load) {
      let over = evseTotal() + Math.max(0, battery.power) - load.w
      if (over > 0 && battery.power > 0) {
        const cut = Math.min(over, battery.power)
        battery.power -= cut
        over -= cut
      }
      if (over > 0) shedEvses(over)
    }
    const exportLimit = limits.limit_export
    if (exportLimit) {
      let over = -exportLimit.w - net()
      if (over > 0) {
        const cut = Math.min(over, -pv.power)
        pv.power += cut
        over -= cut
        if (over > 0 && battery.power < 0) battery.power += Math.min(over, -battery.power)
      }
    }
    const importLimit = limits.limit_import
    if (importLimit) {
      let over = net() - importLimit.w
      if (over > 0) over -= shedEvses(over)
      if (over > 0 && battery.power > 0) {
        const cut = Math.min(over, battery.power)
        battery.power -= cut
      }
    }
  }
  pv.power = Math.round(pv.power) + 0
  battery.power = Math.trunc(battery.power) + 0
  pv.exportWh += -(pv.power - before.pv) * dtHours
  const batteryDelta = battery.power - before.battery
  if (batteryDelta !== 0) {
    // Undo the step's register change and book the constrained power instead.
    if (before.battery > 0) battery.importWh -= before.battery * dtHours
    else battery.exportWh -= -before.battery * dtHours
    if (battery.power > 0) battery.importWh += battery.power * dtHours
    else battery.exportWh += -battery.power * dtHours
  }
  for (const [index, evse] of evses.entries()) {
    evse.power = Math.floor(evse.power) + 0
    const delta = (evse.power - before.evses[index]!) * dtHours
    evse.importWh += delta
    if (evse.session) {
      evse.session.remainingWh -= delta
      evse.session.deliveredWh += delta
    }
  }
  return evseTotal()
}

function clampToLimit(power: number, limit: PowerLimit): number {
  return Math.max(-limit.w, Math.min(limit.w, power))
}
