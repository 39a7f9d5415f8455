/**
 * The canonical model (ARCHITECTURE §5): resource kinds and ids, quantities with their canonical
 * units, telemetry records and standing-data resources, and their validation. Validation names
 * the field at fault so an edge can tell the sender exactly what is wrong.
 */
import { ValidationError } from './errors.ts'

export const RESOURCE_KINDS = [
  'site',
  'meter',
  'der',
  'inverter',
  'battery',
  'pv',
  'station',
  'evse',
  'load',
] as const
export type ResourceKind = (typeof RESOURCE_KINDS)[number]

export const RESOURCE_ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_:-]{0,127}$/

/** Base quantities and their canonical units. */
export const QUANTITY_UNITS = {
  power: 'W',
  reactive_power: 'var',
  apparent_power: 'VA',
  power_factor: '1',
  energy_import: 'Wh',
  energy_export: 'Wh',
  voltage: 'V',
  current: 'A',
  frequency: 'Hz',
  soc: '%',
  temperature: '°C',
  power_limit: 'W',
  power_offered: 'W',
} as const
export type BaseQuantity = keyof typeof QUANTITY_UNITS

/** Quantities that may carry a phase suffix (`_l1`, `_l2`, `_l3`): the electrical ones. */
const PHASED_QUANTITIES: ReadonlySet<string> = new Set<BaseQuantity>([
  'power',
  'reactive_power',
  'apparent_power',
  'power_factor',
  'energy_import',
  'energy_export',
  'voltage',
  'current',
  'frequency',
  'power_limit',
  'power_offered',
])

export const QUALITIES = ['good', 'estimated', 'suspect', 'missing'] as const
export type Quality = (typeof QUALITIES)[number]

/** One reading, as it crosses the HTTP API and the federation. */
export interface TelemetryRecord {
  kind: ResourceKind
  rid: string
  q: string
  v: number
  t: number
  u?: string
  ql?: Quality
}

/** The payload on `oe.tel.<kind>.<rid>.<q>`: the record without what the subject already says. */
export interface TelemetryPayload {
  v: number
  t: number
  u?: string
  ql?: Quality
}

/** Standing data, as kept in KV `oe-resources` and published on `oe.std.<kind>.<rid>`. */
export interface Resource {
  kind: ResourceKind
  rid: string
  site?: string
  name?: string
  attrs: Record<string, unknown>
  updated: number
}

/** How far ahead of the node's clock a reading may be stamped. */
export const MAX_FUTURE_SKEW_MS = 5 * 60 * 1000

const kindSet: ReadonlySet<string> = new Set(RESOURCE_KINDS)
const qualitySet: ReadonlySet<string> = new Set(QUALITIES)

export function isResourceKind(value: unknown): value is ResourceKind {
  return typeof value === 'string' && kindSet.has(value)
}

export function isResourceId(value: unknown): value is string {
  return typeof value === 'string' && RESOURCE_ID_PATTERN.test(value)
}

/** The canonical unit of a quantity (with or without phase suffix), or undefined if unknown. */
export function canonicalUnit(quantity: string): string | undefined {
  // A Map, not the object literal: 'constructor' or '__proto__' must not look like quantities.
  const direct = UNITS.get(quantity)
  if (direct !== undefined) return direct
  const match = /^(.+)_l[123]$/.exec(quantity)
  if (match?.[1] !== undefined && PHASED_QUANTITIES.has(match[1])) return UNITS.get(match[1])
  return undefined
}

const UNITS: ReadonlyMap<string, string> = new Map(Object.entries(QUANTITY_UNITS))

export function isQuantity(value: unknown): value is string {
  return typeof value === 'string' && canonicalUnit(value) !== undefined
}

const describe = (value: unknown): string =>
  value === null ? 'null' : Array.isArray(value) ? 'array' : typeof value

/**
 * Earliest time a reading may carry: 2000-01-01T00:00:00Z. A zero, or seconds sent where
 * milliseconds belong (1.7e9 is January 1970), is a sender's mistake, not an old reading.
 */
export const MIN_TIME_MS = Date.UTC(2000, 0, 1)

/**
 * Plausible values per base quantity (also for its phases), inclusive: outside them a reading is
 * a sign or unit mistake. Energy registers are cumulative (§5) and never negative; a state of
 * charge is a percentage.
 */
export const QUANTITY_RANGES: Readonly<Partial<Record<BaseQuantity, { min?: number; max?: number }>>> = {
  energy_import: { min: 0 },
  energy_export: { min: 0 },
  soc: { min: 0, max: 100 },
}

/** The base quantity of a known quantity: `energy_import_l1` → `energy_import`. */
function baseQuantity(quantity: string): BaseQuantity {
  return (UNITS.has(quantity) ? quantity : quantity.slice(0, -3)) as BaseQuantity
}

/** Why a value is implausible for a (known) quantity, or undefined when it is plausible. */
export function implausibleValue(quantity: string, value: number): string | undefined {
  const base = baseQuantity(quantity)
  const range = QUANTITY_RANGES[base]
  if (range === undefined) return undefined
  if (range.max !== undefined && range.min !== undefined && (value < range.min || value > range.max)) {
    return `${quantity} must be between ${range.min} and ${range.max} ${QUANTITY_UNITS[base]}, got ${value}`
  }
  if (range.min !== undefined && value < range.min) {
    return `${quantity} is a cumulative register and cannot be negative, got ${value}`
  }
  return undefined
}

/** A record checked: the typed record, or the field at fault and why. */
export type TelemetryRecordCheck =
  | { ok: true; record: TelemetryRecord }
  | { ok: false; path: string; reason: string }

const problem = (path: string, reason: string): TelemetryRecordCheck => ({ ok: false, path, reason })

/**
 * Check one telemetry record without throwing: what an edge that reads many records uses, so a
 * body of bad records costs a few strings, not an Error (and its stack) each. `now` is the node's
 * clock, used to refuse readings stamped too far in the future.
 */
export function checkTelemetryRecord(input: unknown, now = Date.now()): TelemetryRecordCheck {
  if (typeof input !== 'object' || input === null || Array.isArray(input)) {
    return problem('', `a record must be an object, got ${describe(input)}`)
  }
  const r = input as Record<string, unknown>
  if (typeof r.kind !== 'string') return problem('kind', `must be a string, got ${describe(r.kind)}`)
  if (!kindSet.has(r.kind)) {
    return problem(
      'kind',
      `unknown resource kind '${truncate(r.kind)}' (one of ${RESOURCE_KINDS.join(', ')})`,
    )
  }
  if (typeof r.rid !== 'string') return problem('rid', `must be a string, got ${describe(r.rid)}`)
  if (!RESOURCE_ID_PATTERN.test(r.rid)) {
    return problem('rid', `'${truncate(r.rid)}' is not a resource id (${RESOURCE_ID_PATTERN.source})`)
  }
  if (typeof r.q !== 'string') return problem('q', `must be a string, got ${describe(r.q)}`)
  const unit = canonicalUnit(r.q)
  if (unit === undefined) return problem('q', `unknown quantity '${truncate(r.q)}'`)
  if (typeof r.v !== 'number') return problem('v', `must be a number, got ${describe(r.v)}`)
  if (!Number.isFinite(r.v)) return problem('v', `must be finite, got ${r.v}`)
  const implausible = implausibleValue(r.q, r.v)
  if (implausible !== undefined) return problem('v', implausible)
  if (typeof r.t !== 'number') return problem('t', `must be epoch milliseconds, got ${describe(r.t)}`)
  if (!Number.isSafeInteger(r.t) || r.t < 0) {
    return problem('t', `must be a non-negative integer of epoch milliseconds, got ${r.t}`)
  }
  if (r.t < MIN_TIME_MS) {
    return problem('t', `${r.t} is before 2000-01-01T00:00:00Z: epoch milliseconds expected (not seconds)`)
  }
  if (r.t > now + MAX_FUTURE_SKEW_MS) {
    return problem('t', `is ${Math.round((r.t - now) / 1000)} s in the future (at most 300 s allowed)`)
  }
  const record: TelemetryRecord = { kind: r.kind as ResourceKind, rid: r.rid, q: r.q, v: r.v, t: r.t }
  if (r.u !== undefined) {
    if (r.u !== unit) {
      return problem('u', `'${truncate(String(r.u))}' is not the canonical unit '${unit}' of ${r.q}`)
    }
    record.u = unit
  }
  if (r.ql !== undefined) {
    if (typeof r.ql !== 'string' || !qualitySet.has(r.ql)) {
      return problem('ql', `unknown quality '${truncate(String(r.ql))}' (one of ${QUALITIES.join(', ')})`)
    }
    record.ql = r.ql as Quality
  }
  for (const key in r) {
    if (Object.hasOwn(r, key) && !RECORD_KEYS.has(key)) {
      return problem(truncate(key), 'is not a field of a telemetry record')
    }
  }
  return { ok: true, record }
}

/**
 * Check one telemetry record. Returns the typed record or throws a ValidationError naming the
 * field. `now` is the node's clock, used to refuse readings stamped too far in the future.
 */
export function parseTelemetryRecord(input: unknown, now = Date.now()): TelemetryRecord {
  const checked = checkTelemetryRecord(input, now)
  if (!checked.ok) throw new ValidationError(checked.path, checked.reason)
  return checked.record
}

const RECORD_KEYS: ReadonlySet<string> = new Set(['kind', 'rid', 'q', 'v', 't', 'u', 'ql'])

/** What a client may send for standing data; kind and rid come from the path. */
export interface ResourceInput {
  site?: string
  name?: string
  attrs?: Record<string, unknown>
}

const MAX_ATTRS_BYTES = 64 * 1024

/** Check standing data for one resource and stamp it. */
export function parseResource(kind: unknown, rid: unknown, input: unknown, now = Date.now()): Resource {
  if (!isResourceKind(kind)) {
    throw new ValidationError(
      'kind',
      `unknown resource kind '${truncate(String(kind))}' (one of ${RESOURCE_KINDS.join(', ')})`,
    )
  }
  if (!isResourceId(rid)) {
    throw new ValidationError(
      'rid',
      `'${truncate(String(rid))}' is not a resource id (${RESOURCE_ID_PATTERN.source})`,
    )
  }
  if (typeof input !== 'object' || input === null || Array.isArray(input)) {
    throw new ValidationError('', `standing data must be an object, got ${describe(input)}`)
  }
  const body = input as Record<string, unknown>
  for (const key of Object.keys(body)) {
    if (key !== 'site' && key !== 'name' && key !== 'attrs' && key !== 'kind' && key !== 'rid') {
      throw new ValidationError(key, 'is not a field of a resource (site, name, attrs)')
    }
  }
  if (body.kind !== undefined && body.kind !== kind)
    throw new ValidationError('kind', 'does not match the path')
  if (body.rid !== undefined && body.rid !== rid) throw new ValidationError('rid', 'does not match the path')
  const resource: Resource = { kind, rid, attrs: {}, updated: now }
  if (body.site !== undefined) {
    if (!isResourceId(body.site))
      throw new ValidationError('site', `'${truncate(String(body.site))}' is not a resource id`)
    resource.site = body.site
  }
  if (body.name !== undefined) {
    if (typeof body.name !== 'string' || body.name.length > 256) {
      throw new ValidationError('name', 'must be a string of at most 256 characters')
    }
    resource.name = body.name
  }
  if (body.attrs !== undefined) {
    if (typeof body.attrs !== 'object' || body.attrs === null || Array.isArray(body.attrs)) {
      throw new ValidationError('attrs', `must be an object, got ${describe(body.attrs)}`)
    }
    checkAttrValues(body.attrs as Record<string, unknown>, 'attrs')
    if (JSON.stringify(body.attrs).length > MAX_ATTRS_BYTES) {
      throw new ValidationError('attrs', `is larger than ${MAX_ATTRS_BYTES} bytes`)
    }
    resource.attrs = body.attrs as Record<string, unknown>
  }
  return resource
}

const MAX_ATTRS_DEPTH = 16

/** Attributes are JSON values: finite numbers, strings, booleans, null, arrays and plain objects. */
function checkAttrValues(value: unknown, path: string, depth = 0): void {
  if (depth > MAX_ATTRS_DEPTH) throw new ValidationError(path, `nests deeper than ${MAX_ATTRS_DEPTH} levels`)
  switch (typeof value) {
    case 'string':
    case 'boolean':
      return
    case 'number':
      if (!Number.isFinite(value)) throw new ValidationError(path, 'must be finite')
      return
    case 'object': {
      if (value === null) return
      const prototype = Object.getPrototypeOf(value)
      if (!Array.isArray(value) && prototype !== Object.prototype && prototype !== null) {
        throw new ValidationError(
          path,
          'must be a JSON value (string, number, boolean, null, array or object)',
        )
      }
      for (const [key, inner] of Object.entries(value)) checkAttrValues(inner, `${path}.${key}`, depth + 1)
      return
    }
    default:
      throw new ValidationError(path, `must be a JSON value, got ${typeof value}`)
  }
}

function truncate(text: string, max = 64): string {
  return text.length > max ? `${text.slice(0, max)}…` : text
}
