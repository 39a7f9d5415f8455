/**
 * OCPP meter values → canonical telemetry records (ARCHITECTURE §5).
 *
 * Both versions carry the same shape once decoded: a list of meter values, each a timestamp and
 * sampled values with a measurand, phase, location, unit (1.6: `unit`; 2.0.1: `unitOfMeasure`
 * with a power-of-ten multiplier) and context. Choices, for the README:
 *
 * - measurand → quantity: `Energy.Active.Import.Register` → `energy_import` (the default when a
 *   sample names none), `Energy.Active.Export.Register` → `energy_export`, `Power.Active.Import`
 *   → `power` (+), `Power.Active.Export` → `power` (−, §5 sign convention), `Power.Reactive.*` →
 *   `reactive_power` (import +, export −), `Power.Offered` → `power_offered`, `Power.Factor` →
 *   `power_factor`, `Current.Import` → `current` (+), `Current.Export` → `current` (−),
 *   `Voltage` → `voltage`, `Frequency` → `frequency`, `SoC` → `soc`, `Temperature` →
 *   `temperature`. Interval energies, reactive energies, `Current.Offered` and `RPM` have no
 *   canonical quantity and are skipped.
 * - import and export of one quantity in the same meter value are netted (import − export), so
 *   a station that reports both (one of them 0) yields one `power` reading, not two.
 * - units: W/kW, Wh/kWh, var/kvar, VA/kVA, A, V, Hz, Percent, Celsius (also 1.6's "Celcius"),
 *   Fahrenheit and K are converted; a unit that does not fit the measurand skips the sample. A
 *   missing unit means the measurand's natural unit (Wh for energy, W for power, …).
 * - phases: `L1`, `L2`, `L3` and `L1-N`, `L2-N`, `L3-N` → `_l1`, `_l2`, `_l3`; `N` (neutral) and
 *   line-to-line voltages (`L1-L2`, …) have no canonical quantity and are skipped. `soc` and
 *   `temperature` are never phased.
 * - location: `Outlet` (or none) is what the EVSE delivers; `Inlet` counts only for the station
 *   itself (connector 0 / EVSE 0, its grid connection); `EV` counts only for `SoC`; `Body` only
 *   for `Temperature`; `Cable` is skipped. A connector's inlet would double-count its outlet.
 * - context (`Sample.Periodic`, `Transaction.Begin`, …) does not filter: every context is a
 *   reading at its timestamp. Signed values (1.6 `format: SignedData`) are not numbers and are
 *   skipped.
 * - time: the meter value's timestamp in epoch ms; values stamped more than 5 minutes ahead of
 *   the node's clock, or before 2000, are skipped (the record validation would refuse them).
 * - range: a value that is not finite once converted (1e308 kWh), a negative energy register and
 *   a state of charge outside 0–100 % are skipped (the model's plausibility ranges); the other
 *   samples of the same message are kept, and the station gets its normal answer.
 */
import {
  canonicalUnit,
  checkTelemetryRecord,
  implausibleValue,
  MAX_FUTURE_SKEW_MS,
  MIN_TIME_MS,
  type ResourceKind,
  type TelemetryRecord,
} from '../../data-plane/index.ts'

/** One sampled value as either version sends it, decoded to common field names. */
export interface SampledValueInput {
  /** 1.6: a decimal string; 2.0.1: a number. */
  value: unknown
  measurand?: string | undefined
  phase?: string | undefined
  unit?: string | undefined
  /** 2.0.1 `unitOfMeasure.multiplier`: the value is × 10^multiplier. */
  multiplier?: number | undefined
  location?: string | undefined
  context?: string | undefined
  /** 1.6 `Raw` (default) or `SignedData`. */
  format?: string | undefined
}

export interface MeterValueInput {
  timestamp: string
  sampledValue: readonly SampledValueInput[]
}

export interface NormaliseTarget {
  kind: ResourceKind
  rid: string
  /** True for the station itself (connector 0 / EVSE 0): its inlet is its grid connection. */
  stationLevel: boolean
}

export interface SkippedSample {
  measurand: string
  reason: string
}

export interface NormaliseResult {
  records: TelemetryRecord[]
  skipped: SkippedSample[]
}

type Dimension = 'energy' | 'power' | 'reactive' | 'apparent' | 'current' | 'voltage' | 'frequency'
type Special = 'ratio' | 'percent' | 'temperature'

interface MeasurandSpec {
  quantity: string
  dimension: Dimension | Special
  /** +1 import, −1 export; netted with the other direction in the same meter value. */
  sign?: 1 | -1
  phased: boolean
}

const MEASURANDS: ReadonlyMap<string, MeasurandSpec> = new Map([
  ['Energy.Active.Import.Register', { quantity: 'energy_import', dimension: 'energy', phased: true }],
  ['Energy.Active.Export.Register', { quantity: 'energy_export', dimension: 'energy', phased: true }],
  ['Power.Active.Import', { quantity: 'power', dimension: 'power', sign: 1, phased: true }],
  ['Power.Active.Export', { quantity: 'power', dimension: 'power', sign: -1, phased: true }],
  ['Power.Reactive.Import', { quantity: 'reactive_power', dimension: 'reactive', sign: 1, phased: true }],
  ['Power.Reactive.Export', { quantity: 'reactive_power', dimension: 'reactive', sign: -1, phased: true }],
  ['Power.Offered', { quantity: 'power_offered', dimension: 'power', phased: true }],
  ['Power.Factor', { quantity: 'power_factor', dimension: 'ratio', phased: true }],
  ['Current.Import', { quantity: 'current', dimension: 'current', sign: 1, phased: true }],
  ['Current.Export', { quantity: 'current', dimension: 'current', sign: -1, phased: true }],
  ['Voltage', { quantity: 'voltage', dimension: 'voltage', phased: true }],
  ['Frequency', { quantity: 'frequency', dimension: 'frequency', phased: true }],
  ['SoC', { quantity: 'soc', dimension: 'percent', phased: false }],
  ['Temperature', { quantity: 'temperature', dimension: 'temperature', phased: false }],
] satisfies [string, MeasurandSpec][])

export const DEFAULT_MEASURAND = 'Energy.Active.Import.Register'

/** Unit → (dimension, factor to the canonical unit). Temperature is converted separately. */
const UNITS: ReadonlyMap<string, { dimension: Dimension | Special; factor: number }> = new Map([
  ['Wh', { dimension: 'energy', factor: 1 }],
  ['kWh', { dimension: 'energy', factor: 1000 }],
  ['W', { dimension: 'power', factor: 1 }],
  ['kW', { dimension: 'power', factor: 1000 }],
  ['var', { dimension: 'reactive', factor: 1 }],
  ['kvar', { dimension: 'reactive', factor: 1000 }],
  ['VA', { dimension: 'apparent', factor: 1 }],
  ['kVA', { dimension: 'apparent', factor: 1000 }],
  ['A', { dimension: 'current', factor: 1 }],
  ['V', { dimension: 'voltage', factor: 1 }],
  ['Hz', { dimension: 'frequency', factor: 1 }],
  ['Percent', { dimension: 'percent', factor: 1 }],
  ['Celsius', { dimension: 'temperature', factor: 1 }],
  ['Celcius', { dimension: 'temperature', factor: 1 }],
  ['Fahrenheit', { dimension: 'temperature', factor: 1 }],
  ['K', { dimension: 'temperature', factor: 1 }],
] satisfies [string, { dimension: Dimension | Special; factor: number }][])

const NATURAL_UNIT: Record<Dimension | Special, string> = {
  energy: 'Wh',
  power: 'W',
  reactive: 'var',
  apparent: 'VA',
  current: 'A',
  voltage: 'V',
  frequency: 'Hz',
  percent: 'Percent',
  temperature: 'Celsius',
  ratio: '',
}

const PHASES: ReadonlyMap<string, string> = new Map([
  ['L1', '_l1'],
  ['L2', '_l2'],
  ['L3', '_l3'],
  ['L1-N', '_l1'],
  ['L2-N', '_l2'],
  ['L3-N', '_l3'],
])

const DECIMAL = /^\s*[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?\s*$/

/** Parse a sampled value's number: 1.6 sends decimal text, 2.0.1 a JSON number. */
export function sampleNumber(value: unknown): number | undefined {
  if (typeof value === 'number') return Number.isFinite(value) ? value : undefined
  if (typeof value === 'string' && DECIMAL.test(value)) {
    const parsed = Number(value)
    return Number.isFinite(parsed) ? parsed : undefined
  }
  return undefined
}

/** Strip binary floating-point noise from a scaled value (7.4 kW × 1000 = 7400, not 7400.000000000001). */
function tidy(value: number): number {
  const cleaned = Number.parseFloat(value.toPrecision(15))
  return cleaned === 0 ? 0 : cleaned
}

function locationAccepted(location: string | undefined, spec: MeasurandSpec, stationLevel: boolean): boolean {
  if (spec.quantity === 'soc') return true
  switch (location) {
    case undefined:
    case 'Outlet':
      return true
    case 'Inlet':
      return stationLevel
    case 'Body':
      return spec.quantity === 'temperature'
    default:
      return false
  }
}

/**
 * Convert one sampled value to `{ quantity, value, sign }`, or a reason to skip it. `value` is in
 * the canonical unit, before the import/export sign is applied.
 */
export function normaliseSample(
  sample: SampledValueInput,
  stationLevel: boolean,
): { quantity: string; value: number; sign?: 1 | -1 } | { skip: string } {
  const measurand = sample.measurand ?? DEFAULT_MEASURAND
  const spec = MEASURANDS.get(measurand)
  if (!spec) return { skip: 'no canonical quantity' }
  if (sample.format === 'SignedData') return { skip: 'signed value' }
  if (!locationAccepted(sample.location, spec, stationLevel))
    return { skip: `location ${sample.location} not used` }
  let raw = sampleNumber(sample.value)
  if (raw === undefined) return { skip: 'value is not a number' }
  if (sample.multiplier !== undefined && sample.multiplier !== 0) raw *= 10 ** sample.multiplier
  let suffix = ''
  if (sample.phase !== undefined) {
    const mapped = PHASES.get(sample.phase)
    if (mapped === undefined) return { skip: `phase ${sample.phase} has no canonical quantity` }
    if (spec.phased) suffix = mapped
  }
  const unitName = sample.unit ?? NATURAL_UNIT[spec.dimension]
  let value: number
  if (spec.dimension === 'ratio') {
    // Power factor: dimensionless, or a percentage.
    if (unitName === '' || unitName === '1') value = raw
    else if (unitName === 'Percent') value = raw / 100
    else return { skip: `unit ${unitName} does not fit ${measurand}` }
  } else {
    const unit = UNITS.get(unitName)
    if (!unit || unit.dimension !== spec.dimension)
      return { skip: `unit ${unitName} does not fit ${measurand}` }
    if (spec.dimension === 'temperature') {
      value = unitName === 'K' ? raw - 273.15 : unitName === 'Fahrenheit' ? ((raw - 32) * 5) / 9 : raw
    } else {
      value = raw * unit.factor
    }
  }
  const quantity = spec.quantity + suffix
  value = tidy(value)
  if (!Number.isFinite(value))
    return { skip: `value is out of range after conversion to ${canonicalUnit(quantity)}` }
  const implausible = implausibleValue(quantity, value)
  if (implausible !== undefined) return { skip: implausible }
  const result: { quantity: string; value: number; sign?: 1 | -1 } = { quantity, value }
  if (spec.sign !== undefined) result.sign = spec.sign
  return result
}

/** Parse an OCPP timestamp (RFC 3339) to epoch ms. */
export function parseTimestamp(timestamp: unknown): number | undefined {
  if (typeof timestamp !== 'string') return undefined
  const ms = Date.parse(timestamp)
  return Number.isFinite(ms) && ms >= 0 ? ms : undefined
}

/** Normalise meter values for one resource. */
export function normaliseMeterValues(
  target: NormaliseTarget,
  meterValues: readonly MeterValueInput[],
  now = Date.now(),
): NormaliseResult {
  const records: TelemetryRecord[] = []
  const skipped: SkippedSample[] = []
  for (const meterValue of meterValues) {
    const t = parseTimestamp(meterValue.timestamp)
    const badTime =
      t === undefined
        ? 'timestamp is not a date'
        : t > now + MAX_FUTURE_SKEW_MS
          ? 'timestamp is too far in the future'
          : t < MIN_TIME_MS
            ? 'timestamp is before 2000-01-01'
            : undefined
    if (t === undefined || badTime !== undefined) {
      for (const sample of meterValue.sampledValue) {
        skipped.push({ measurand: sample.measurand ?? DEFAULT_MEASURAND, reason: badTime! })
      }
      continue
    }
    // One meter value is one instant: per quantity, the last sample of each direction wins and
    // import and export are netted.
    const plain = new Map<string, { v: number; measurand: string }>()
    const directed = new Map<string, { import?: number; export?: number; measurand: string }>()
    for (const sample of meterValue.sampledValue) {
      const measurand = sample.measurand ?? DEFAULT_MEASURAND
      const result = normaliseSample(sample, target.stationLevel)
      if ('skip' in result) {
        skipped.push({ measurand, reason: result.skip })
        continue
      }
      if (result.sign === undefined) {
        plain.delete(result.quantity)
        plain.set(result.quantity, { v: result.value, measurand })
      } else {
        const entry = directed.get(result.quantity) ?? { measurand }
        if (result.sign === 1) entry.import = result.value
        else entry.export = result.value
        directed.set(result.quantity, entry)
      }
    }
    const candidates: [string, number, string][] = []
    for (const [q, entry] of directed) {
      candidates.push([q, tidy((entry.import ?? 0) - (entry.export ?? 0)), entry.measurand])
    }
    for (const [q, { v, measurand }] of plain) candidates.push([q, v, measurand])
    // The model's own check last (netting can overflow too): what it refuses is skipped here.
    for (const [q, v, measurand] of candidates) {
      const checked = checkTelemetryRecord({ kind: target.kind, rid: target.rid, q, v, t }, now)
      if (checked.ok) records.push(checked.record)
      else skipped.push({ measurand, reason: `${checked.path}: ${checked.reason}` })
    }
  }
  return { records, skipped }
}

/**
 * The energy import register (Wh, whole station/EVSE, not a phase) in these meter values, last
 * one wins: what a session's start or end energy is read from.
 */
export function energyRegisterWh(
  meterValues: readonly MeterValueInput[],
  stationLevel = false,
): number | undefined {
  let found: number | undefined
  for (const meterValue of meterValues) {
    for (const sample of meterValue.sampledValue) {
      if ((sample.measurand ?? DEFAULT_MEASURAND) !== DEFAULT_MEASURAND || sample.phase !== undefined)
        continue
      const result = normaliseSample(sample, stationLevel)
      if (!('skip' in result)) found = result.value
    }
  }
  return found
}
