/**
 * OCPI 2.2.1 ↔ the canonical model (ARCHITECTURE §5). Choices, for the README:
 *
 * - eMSP side, a partner's Location becomes a `station` resource with rid
 *   `<country_code>_<party_id>_<location id>` (a digest `h…` stands in for an id that is not
 *   letters, digits, `_` and `-`: KV keys of `oe-resources` refuse `:` although §5 rids
 *   allow it), and each of its EVSEs an `evse` resource `<station rid>-<n>`, `n` numbering the location's EVSE uids in the order they were first seen (kept with the
 *   location, so a uid keeps its number). EVSE status, connectors and the OCPI ids are
 *   attributes; a status change is also an event `status`.
 * - Session `kwh` becomes `energy_import` in Wh on the EVSE at `last_updated` (the session's
 *   energy, not the meter register: OCPI carries no register), and a charging period's `POWER`
 *   dimension (kW) becomes `power` in W at the period's start.
 * - CPO side, a `station` resource is served as a Location whose id is the station rid
 *   (a digest when longer than 36 characters), each `evse` resource `<station>-<n>` as an EVSE
 *   with uid = its rid and one connector `1`; address, coordinates and time zone come from the
 *   station's attributes (`address`, `city`, `postal_code`, `country`, `latitude`,
 *   `longitude`, `time_zone`) or the `location` defaults of the config; connector data from the
 *   EVSE's attributes (`connector_standard`, `connector_format`, `power_type`, `max_voltage`,
 *   `max_amperage`, `maxPowerW`) or the `connector` defaults.
 * - OCPP statuses → OCPI: Available → AVAILABLE; Preparing, Charging, SuspendedEV(SE),
 *   Finishing, Occupied → CHARGING; Reserved → RESERVED; Unavailable → INOPERATIVE;
 *   Faulted → OUTOFORDER; a station that went offline → UNKNOWN.
 * - Charging profiles ↔ `limit_power`: the period in force now is the limit (W; A × V × phases
 *   for amperes), `until` is the profile's start + duration; `limit_power` becomes a profile
 *   with one period from now on.
 */
import { createHash } from 'node:crypto'
import { isResourceId, type Resource, type TelemetryRecord } from '../../data-plane/index.ts'
import type { ConnectorDefaults, LocationDefaults } from './config.ts'
import {
  type ChargingProfile,
  type Connector,
  type Evse,
  type EvseStatus,
  formatDateTime,
  type Location,
  type PowerType,
  parseDateTime,
  type ReceivedConnector,
  type ReceivedEvse,
  type ReceivedLocation,
  type ReceivedSession,
  type Tariff,
} from './v221.ts'

const digest = (text: string, length: number) =>
  createHash('sha256').update(text, 'utf8').digest('hex').slice(0, length)

const SAFE_TOKEN = /^[A-Za-z0-9][A-Za-z0-9_-]{0,15}$/
const SAFE_ID = /^[A-Za-z0-9_-]{1,100}$/

/** The `station` rid of a partner's location. */
export function stationRidFor(countryCode: string, partyId: string, locationId: string): string {
  const cc = countryCode.toUpperCase()
  const pid = partyId.toUpperCase()
  const owner = SAFE_TOKEN.test(cc) && SAFE_TOKEN.test(pid) ? `${cc}_${pid}` : `o${digest(`${cc}/${pid}`, 8)}`
  const id = SAFE_ID.test(locationId) ? locationId : `h${digest(locationId, 24)}`
  const rid = `${owner}_${id}`
  // Room for `-<n>` of its EVSEs (§5: at most 128).
  return isResourceId(rid) && rid.length <= 120 ? rid : `${owner}_h${digest(locationId, 24)}`
}

export const evseRidFor = (stationRid: string, number: number): string => `${stationRid}-${number}`

/** `CS1-2` → station CS1, EVSE 2. */
export function parseEvseRid(rid: string): { station: string; evse: number } | undefined {
  const match = /^(.+)-(\d{1,6})$/.exec(rid)
  if (!match) return undefined
  const evse = Number(match[2])
  return evse > 0 ? { station: match[1]!, evse } : undefined
}

/** An OCPI id (CiString(36)) for a resource id: itself when it fits, else a digest. */
export const ocpiIdFor = (rid: string): string => (rid.length <= 36 ? rid : `h${digest(rid, 35)}`)

/** eMI3 EVSE id `<CC>*<PID>*E<station><n>` (letters and digits only in the station part). */
export function evseIdFor(countryCode: string, partyId: string, stationRid: string, number: number): string {
  const head = `${countryCode}*${partyId}*E`
  const tail = `*${number}`
  const station = stationRid.replace(/[^A-Za-z0-9]/g, '').slice(0, 48 - head.length - tail.length) || 'X'
  return `${head}${station}${tail}`
}

// ---- eMSP: received objects → standing data, telemetry, events ---------------------------

/** Give every EVSE uid of a location a stable number (new uids after the known ones). */
export function numberEvses(
  evses: readonly { uid: string }[] | undefined,
  known: Record<string, number>,
): Record<string, number> {
  const numbers = { ...known }
  let next = Math.max(0, ...Object.values(numbers)) + 1
  for (const evse of evses ?? []) {
    if (numbers[evse.uid] === undefined) numbers[evse.uid] = next++
  }
  return numbers
}

const PHASES: Record<string, number> = {
  AC_1_PHASE: 1,
  AC_2_PHASE: 2,
  AC_2_PHASE_SPLIT: 2,
  AC_3_PHASE: 3,
  DC: 1,
}

/** A connector's power in W: max_electric_power, else voltage × amperage × phases. */
export function connectorPowerW(connector: Partial<ReceivedConnector>): number | undefined {
  if (typeof connector.max_electric_power === 'number') return connector.max_electric_power
  if (typeof connector.max_voltage !== 'number' || typeof connector.max_amperage !== 'number')
    return undefined
  const phases = PHASES[connector.power_type ?? 'AC_1_PHASE'] ?? 1
  // Three-phase max_voltage is the line-to-neutral voltage (230 V), as OCPI specifies.
  return connector.max_voltage * connector.max_amperage * phases
}

type ResourceInput = Omit<Resource, 'updated'>

/** A received location as a `station` resource and its EVSEs as `evse` resources. */
export function locationResources(
  location: ReceivedLocation,
  numbers: Record<string, number>,
  partner: string,
): { station: ResourceInput; evses: { uid: string; resource: ResourceInput; status: string }[] } {
  const rid = stationRidFor(location.country_code, location.party_id, location.id)
  const station: ResourceInput = {
    kind: 'station',
    rid,
    ...(location.name ? { name: location.name.slice(0, 256) } : {}),
    attrs: withoutUndefined({
      source: 'ocpi',
      partner,
      ocpi: { country_code: location.country_code, party_id: location.party_id, location_id: location.id },
      address: location.address,
      city: location.city,
      postal_code: location.postal_code,
      country: location.country,
      latitude: location.coordinates.latitude,
      longitude: location.coordinates.longitude,
      time_zone: location.time_zone,
      operator: location.operator?.name,
      publish: location.publish,
      evses: location.evses?.length ?? 0,
    }),
  }
  const evses = (location.evses ?? []).map((evse) => ({
    uid: evse.uid,
    status: evse.status,
    resource: evseResource(rid, numbers[evse.uid]!, evse, partner),
  }))
  return { station, evses }
}

export function evseResource(
  stationRid: string,
  number: number,
  evse: ReceivedEvse,
  partner: string,
): ResourceInput {
  const powers = evse.connectors.map(connectorPowerW).filter((value): value is number => value !== undefined)
  return {
    kind: 'evse',
    rid: evseRidFor(stationRid, number),
    attrs: withoutUndefined({
      source: 'ocpi',
      partner,
      station: stationRid,
      evse: number,
      ocpi: withoutUndefined({ evse_uid: evse.uid, evse_id: evse.evse_id }),
      status: evse.status,
      capabilities: evse.capabilities,
      connectors: evse.connectors.map((connector) =>
        withoutUndefined({
          id: connector.id,
          standard: connector.standard,
          format: connector.format,
          power_type: connector.power_type,
          max_voltage: connector.max_voltage,
          max_amperage: connector.max_amperage,
          max_electric_power: connector.max_electric_power,
        }),
      ),
      maxPowerW: powers.length > 0 ? Math.max(...powers) : undefined,
    }),
  }
}

/** Telemetry from a session (see the choices above). */
export function sessionTelemetry(
  session: Pick<ReceivedSession, 'kwh' | 'last_updated' | 'charging_periods'>,
  target: { rid: string },
  now = Date.now(),
): TelemetryRecord[] {
  const records: TelemetryRecord[] = []
  const t = Math.min(parseDateTime(session.last_updated ?? '') ?? now, now)
  if (typeof session.kwh === 'number' && Number.isFinite(session.kwh) && session.kwh >= 0)
    records.push({ kind: 'evse', rid: target.rid, q: 'energy_import', v: round(session.kwh * 1000), t })
  for (const period of session.charging_periods ?? []) {
    const start = parseDateTime(period.start_date_time)
    if (start === undefined || start > now) continue
    for (const dimension of period.dimensions) {
      if (dimension.type === 'POWER' && Number.isFinite(dimension.volume))
        records.push({
          kind: 'evse',
          rid: target.rid,
          q: 'power',
          v: round(dimension.volume * 1000),
          t: start,
        })
    }
  }
  return records
}

// ---- CPO: standing data → OCPI objects ------------------------------------------------------

/** OCPP 1.6 and 2.0.1 connector statuses → OCPI EVSE status. */
export function ocppStatusToOcpi(status: unknown): EvseStatus {
  switch (status) {
    case 'Available':
      return 'AVAILABLE'
    case 'Preparing':
    case 'Charging':
    case 'SuspendedEV':
    case 'SuspendedEVSE':
    case 'Finishing':
    case 'Occupied':
      return 'CHARGING'
    case 'Reserved':
      return 'RESERVED'
    case 'Unavailable':
      return 'INOPERATIVE'
    case 'Faulted':
      return 'OUTOFORDER'
    default:
      return 'UNKNOWN'
  }
}

export interface EvseState {
  status: EvseStatus
  /** When the status was last set, epoch ms. */
  t: number
}

export interface LocationContext {
  countryCode: string
  partyId: string
  defaults: LocationDefaults | undefined
  connector: ConnectorDefaults
  tariffIds: string[]
  /** The operator shown on locations. */
  operator: string
}

const text = (value: unknown, max: number): string | undefined =>
  typeof value === 'string' && value.trim() !== '' ? value.trim().slice(0, max) : undefined

/** An EVSE resource as an OCPI EVSE. */
export function evseFromResource(
  resource: Resource,
  station: string,
  number: number,
  state: EvseState | undefined,
  context: LocationContext,
): Evse {
  const attrs = resource.attrs
  const defaults = context.connector
  const powerType = (text(attrs.power_type, 20) as PowerType | undefined) ?? defaults.power_type
  const updated = Math.max(resource.updated, state?.t ?? 0)
  const maxPower =
    typeof attrs.maxPowerW === 'number' && attrs.maxPowerW > 0 ? Math.round(attrs.maxPowerW) : undefined
  const connector: Connector = withoutUndefined({
    id: '1',
    standard: (text(attrs.connector_standard, 32) ?? defaults.standard) as Connector['standard'],
    format: (text(attrs.connector_format, 16) ?? defaults.format) as Connector['format'],
    power_type: powerType,
    max_voltage: typeof attrs.max_voltage === 'number' ? Math.round(attrs.max_voltage) : defaults.max_voltage,
    max_amperage:
      typeof attrs.max_amperage === 'number' ? Math.round(attrs.max_amperage) : defaults.max_amperage,
    max_electric_power: maxPower,
    tariff_ids: context.tariffIds.length > 0 ? context.tariffIds : undefined,
    last_updated: formatDateTime(resource.updated),
  })
  return withoutUndefined({
    uid: ocpiIdFor(resource.rid),
    evse_id: evseIdFor(context.countryCode, context.partyId, station, number),
    status: state?.status ?? 'UNKNOWN',
    capabilities: [
      'REMOTE_START_STOP_CAPABLE',
      'UNLOCK_CAPABLE',
      'RESERVABLE',
      'CHARGING_PROFILE_CAPABLE',
    ] as Evse['capabilities'],
    connectors: [connector],
    physical_reference: String(number),
    last_updated: formatDateTime(updated),
  })
}

/**
 * A station and its EVSEs as an OCPI Location, or the reason it cannot be one (no address:
 * neither the station's attributes nor the config's `location` defaults give one).
 */
export function locationFromResources(
  station: Resource,
  evses: readonly { resource: Resource; number: number; state: EvseState | undefined }[],
  context: LocationContext,
): Location | { missing: string } {
  const attrs = station.attrs
  const fallback = context.defaults
  const pick = (name: keyof LocationDefaults, max: number) =>
    text(attrs[name], max) ?? text(fallback?.[name], max)
  const address = pick('address', 45)
  const city = pick('city', 45)
  const country = pick('country', 3)
  const latitude = pick('latitude', 12)
  const longitude = pick('longitude', 12)
  const timeZone = pick('time_zone', 255)
  const missing = Object.entries({ address, city, country, latitude, longitude, time_zone: timeZone })
    .filter(([, value]) => value === undefined)
    .map(([name]) => name)
  if (missing.length > 0) return { missing: missing.join(', ') }
  const sorted = [...evses].sort((a, b) => a.number - b.number)
  const evseObjects = sorted.map(({ resource, number, state }) =>
    evseFromResource(resource, station.rid, number, state, context),
  )
  const updated = Math.max(
    station.updated,
    ...sorted.map(({ resource, state }) => Math.max(resource.updated, state?.t ?? 0)),
  )
  return withoutUndefined({
    country_code: context.countryCode,
    party_id: context.partyId,
    id: ocpiIdFor(station.rid),
    publish: true,
    name: text(station.name, 255) ?? pick('name', 255),
    address: address!,
    city: city!,
    postal_code: pick('postal_code', 10),
    state: pick('state', 20),
    country: country!,
    coordinates: { latitude: latitude!, longitude: longitude! },
    parking_type: (text(attrs.parking_type, 32) ?? fallback?.parking_type) as Location['parking_type'],
    evses: evseObjects,
    operator: { name: context.operator.slice(0, 100) },
    time_zone: timeZone!,
    last_updated: formatDateTime(updated),
  })
}

// ---- charging profiles ↔ limit_power --------------------------------------------------------

/** The limit in force now of a charging profile, in W, and until when it holds. */
export function limitFromProfile(
  profile: ChargingProfile,
  now: number,
  connector: { power_type: string; max_voltage: number },
): { watts: number; until?: number } | { reason: string } {
  const start = profile.start_date_time ? (parseDateTime(profile.start_date_time) ?? now) : now
  const periods = [...(profile.charging_profile_period ?? [])].sort((a, b) => a.start_period - b.start_period)
  const elapsed = Math.max(0, (now - start) / 1000)
  let current = periods[0]
  for (const period of periods) if (period.start_period <= elapsed) current = period
  if (!current) return { reason: 'the profile has no period' }
  const phases = PHASES[connector.power_type] ?? 1
  const watts =
    profile.charging_rate_unit === 'A' ? current.limit * connector.max_voltage * phases : current.limit
  if (!Number.isFinite(watts) || watts < 0) return { reason: 'the limit is not a non-negative number' }
  const until = profile.duration !== undefined ? start + profile.duration * 1000 : undefined
  return until === undefined ? { watts: round(watts) } : { watts: round(watts), until }
}

/** `limit_power` as a charging profile: one period from now, in W. */
export function profileFromLimit(watts: number, until: number | undefined, now: number): ChargingProfile {
  return withoutUndefined({
    start_date_time: formatDateTime(now - (now % 1000)),
    duration: until === undefined ? undefined : Math.max(1, Math.ceil((until - now) / 1000)),
    charging_rate_unit: 'W' as const,
    charging_profile_period: [{ start_period: 0, limit: round(watts) }],
  })
}

// ---- cost -------------------------------------------------------------------------------

/**
 * What a session cost under a tariff: FLAT once, ENERGY per kWh (rounded up to `step_size` Wh),
 * TIME per hour charging (rounded up to `step_size` s). Of several elements, the first that
 * prices a dimension applies (restrictions are not evaluated); PARKING_TIME is not charged.
 */
export function costOf(
  tariff: Pick<Tariff, 'elements'> | undefined,
  kwh: number,
  hours: number,
): { excl_vat: number; incl_vat: number; energy: number; time: number; fixed: number } {
  const out = { excl_vat: 0, incl_vat: 0, energy: 0, time: 0, fixed: 0 }
  if (!tariff) return out
  const seen = new Set<string>()
  for (const element of tariff.elements) {
    for (const component of element.price_components) {
      if (seen.has(component.type)) continue
      seen.add(component.type)
      const step = Math.max(1, component.step_size)
      let amount = 0
      if (component.type === 'FLAT') amount = component.price
      else if (component.type === 'ENERGY')
        amount = (Math.ceil((kwh * 1000) / step) * step * component.price) / 1000
      else if (component.type === 'TIME')
        amount = (Math.ceil((hours * 3600) / step) * step * component.price) / 3600
      else continue
      const vat = component.vat ?? 0
      out.excl_vat += amount
      out.incl_vat += amount * (1 + vat / 100)
      if (component.type === 'FLAT') out.fixed += amount
      if (component.type === 'ENERGY') out.energy += amount
      if (component.type === 'TIME') out.time += amount
    }
  }
  return {
    excl_vat: money(out.excl_vat),
    incl_vat: money(out.incl_vat),
    energy: money(out.energy),
    time: money(out.time),
    fixed: money(out.fixed),
  }
}

const money = (value: number) => Math.round(value * 10_000) / 10_000
const round = (value: number) => Math.round(value * 1000) / 1000

/** A copy without `undefined` values (strict schemas and CBOR want none). */
export function withoutUndefined<T extends Record<string, unknown>>(value: T): T {
  const out: Record<string, unknown> = {}
  for (const [key, inner] of Object.entries(value)) if (inner !== undefined) out[key] = inner
  return out as T
}

export type { ReceivedLocation }
