/**
 * OpenADR 3 ↔ the canonical model (ARCHITECTURE §5).
 *
 * Resource ids. A VEN's resource becomes a resource `<kind>.<rid>` with
 * `rid = <slug(venName)>_<slug(resourceName)>-<hash>`: each slug is the name with every run of
 * characters outside `[A-Za-z0-9-]` turned into one `-`, trimmed to 40 characters; `hash` is
 * the first 12 hex digits of SHA-256 over the JSON array `[venName, resourceName]`. The slugs
 * keep it readable, the hash (48 bits over the exact names) keeps names that slug alike apart:
 * `ven 1`/`pv` and `ven-1`/`pv` get different ids. An id never holds a dot (§5), is at most
 * 94 characters, and starts with a letter or digit (`x` is put in front otherwise).
 *
 * Reports → telemetry (payload type and units → quantity, canonical unit), stamped at the start
 * of each interval (sub-intervals for several values):
 * - DEMAND (kW default, or W) → `power`; READING in KW/W → `power`, KWH/WH → `energy_import`
 *   (a meter register), VOLTS → `voltage`, AMPS → `current`, KVAR → `reactive_power`, KVA →
 *   `apparent_power`; USAGE (kWh over the interval) → `power`, the interval's mean
 *   (kWh × 3.6e6 / interval ms); STORAGE_CHARGE_LEVEL → `soc` (units PERCENT are fractions,
 *   −1…1, per the Definition's unit table, so × 100; no unit: already 0–100);
 *   SETPOINT in KW/W → `power_limit`. Other payload types have no canonical quantity.
 * - Consumption is positive, as in §5.
 *
 * Control. `limit_power {v (W), until}` for a VEN's resource becomes an event of the node's
 * control program targeted at that resource, with one interval whose IMPORT_CAPACITY_LIMIT is
 * v/1000 kW, starting now, lasting until `until` (or P9999Y), asking for a SETPOINT report.
 * On the VEN side, IMPORT_CAPACITY_LIMIT and EXPORT_CAPACITY_LIMIT become `limit_power` in W.
 */
import { createHash } from 'node:crypto'
import type { ResourceKind, TelemetryRecord } from '../../data-plane/index.ts'
import type { Body } from './model.ts'
import { formatDuration, resolveEvent } from './timing.ts'

const slug = (name: string): string =>
  name
    .replace(/[^A-Za-z0-9-]+/g, '-')
    .replace(/^-+|-+$/g, '')
    .slice(0, 40)
    .replace(/-+$/, '')

/** The §5 resource id of a VEN's resource (see the module comment). */
export function resourceIdFor(venName: string, resourceName: string): string {
  const hash = createHash('sha256')
    .update(JSON.stringify([venName, resourceName]))
    .digest('hex')
    .slice(0, 12)
  const readable = `${slug(venName)}_${slug(resourceName)}`
  const rid = `${readable}-${hash}`
  return /^[A-Za-z0-9]/.test(rid) ? rid : `x${rid}`
}

/** Units → factor to the canonical unit, per quantity family. Keys are upper case. */
const POWER: Record<string, number> = { KW: 1000, W: 1, MW: 1_000_000 }
const ENERGY: Record<string, number> = { KWH: 1000, WH: 1, MWH: 1_000_000 }

const tidy = (value: number) => {
  const cleaned = Number.parseFloat(value.toPrecision(12))
  return cleaned === 0 ? 0 : cleaned
}

/**
 * One report payload value → a canonical reading, or undefined when it has none.
 * `intervalMs` is the length of the (sub-)interval the value covers.
 */
export function reportValueToReading(
  payloadType: string,
  units: string | undefined,
  value: unknown,
  intervalMs: number | undefined,
): { q: string; v: number } | undefined {
  if (typeof value !== 'number' || !Number.isFinite(value)) return undefined
  const unit = units?.toUpperCase()
  switch (payloadType) {
    case 'DEMAND': {
      const factor = POWER[unit ?? 'KW']
      return factor === undefined ? undefined : { q: 'power', v: tidy(value * factor) }
    }
    case 'USAGE': {
      const factor = ENERGY[unit ?? 'KWH']
      if (factor === undefined || !intervalMs || !Number.isFinite(intervalMs) || intervalMs <= 0)
        return undefined
      return { q: 'power', v: tidy((value * factor * 3_600_000) / intervalMs) }
    }
    case 'READING': {
      if (unit === undefined) return undefined
      if (POWER[unit] !== undefined) return { q: 'power', v: tidy(value * POWER[unit]) }
      if (ENERGY[unit] !== undefined) return { q: 'energy_import', v: tidy(value * ENERGY[unit]) }
      if (unit === 'VOLTS' || unit === 'V') return { q: 'voltage', v: value }
      if (unit === 'AMPS' || unit === 'A') return { q: 'current', v: value }
      if (unit === 'KVAR') return { q: 'reactive_power', v: tidy(value * 1000) }
      if (unit === 'KVA') return { q: 'apparent_power', v: tidy(value * 1000) }
      return undefined
    }
    case 'STORAGE_CHARGE_LEVEL':
      if (unit === 'PERCENT') return { q: 'soc', v: tidy(value * 100) }
      return unit === undefined ? { q: 'soc', v: value } : undefined
    case 'SETPOINT': {
      const factor = POWER[unit ?? 'KW']
      return factor === undefined ? undefined : { q: 'power_limit', v: tidy(value * factor) }
    }
    default:
      return undefined
  }
}

export interface ReportTarget {
  kind: ResourceKind
  rid: string
}

/**
 * A report's readings as canonical records. `resolveTarget` maps a report resource name to the
 * node's resource (undefined: not one of this VEN's resources, skipped). Units come from the
 * report's payloadDescriptors, else the event's reportDescriptors.
 */
export function reportToTelemetry(
  report: Body,
  resolveTarget: (resourceName: string) => ReportTarget | undefined,
  eventReportDescriptors: readonly Body[] = [],
  now = Date.now(),
): { records: TelemetryRecord[]; skipped: number } {
  const units = new Map<string, string | undefined>()
  for (const descriptor of eventReportDescriptors)
    units.set(descriptor.payloadType as string, descriptor.units as string | undefined)
  for (const descriptor of (report.payloadDescriptors as Body[] | undefined) ?? [])
    units.set(descriptor.payloadType as string, descriptor.units as string | undefined)
  const records: TelemetryRecord[] = []
  let skipped = 0
  const created = now
  for (const resource of (report.resources as Body[] | undefined) ?? []) {
    const target = resolveTarget(resource.resourceName as string)
    const resolved = resolveEvent(
      { intervalPeriod: resource.intervalPeriod as never, intervals: resource.intervals as never },
      created,
      () => 0,
    )
    for (const interval of resolved.intervals) {
      const length = interval.end - interval.start
      for (const payload of interval.payloads) {
        const values = payload.values ?? []
        const step = values.length > 1 && Number.isFinite(length) ? length / values.length : length
        values.forEach((value, index) => {
          const reading = reportValueToReading(
            payload.type,
            units.get(payload.type),
            value,
            Number.isFinite(step) ? step : undefined,
          )
          if (!target || !reading) {
            skipped += 1
            return
          }
          const t = Math.round(
            interval.start + (values.length > 1 && Number.isFinite(step) ? index * step : 0),
          )
          if (t < 0 || t > now + 5 * 60_000) {
            skipped += 1
            return
          }
          records.push({ kind: target.kind, rid: target.rid, q: reading.q, v: reading.v, t })
        })
      }
    }
  }
  return { records, skipped }
}

export const CONTROL_LIMIT_TYPE = 'IMPORT_CAPACITY_LIMIT'

/** The event body a `limit_power` command becomes (see the module comment). */
export function limitToEventBody(input: {
  programID: string
  rid: string
  target: string
  watts: number
  until?: number | undefined
  now: number
  source?: string | undefined
}): Body {
  const lengthMs =
    input.until === undefined ? Number.POSITIVE_INFINITY : Math.max(1000, input.until - input.now)
  return {
    programID: input.programID,
    eventName: `limit_power ${input.rid}${input.source ? ` (${input.source.slice(0, 60)})` : ''}`.slice(
      0,
      128,
    ),
    priority: 0,
    targets: [input.target],
    payloadDescriptors: [
      { objectType: 'EVENT_PAYLOAD_DESCRIPTOR', payloadType: CONTROL_LIMIT_TYPE, units: 'KW' },
    ],
    reportDescriptors: [
      { payloadType: 'SETPOINT', readingType: 'DIRECT_READ', units: 'KW', frequency: 0, repeat: 1 },
    ],
    intervalPeriod: { start: new Date(input.now).toISOString(), duration: formatDuration(lengthMs) },
    intervals: [{ id: 0, payloads: [{ type: CONTROL_LIMIT_TYPE, values: [tidy(input.watts / 1000)] }] }],
  }
}

/** Event payload value + descriptor units → watts (capacity limits), or undefined. */
export function limitWatts(value: unknown, units: string | undefined): number | undefined {
  if (typeof value !== 'number' || !Number.isFinite(value) || value < 0) return undefined
  const factor = POWER[(units ?? 'KW').toUpperCase()]
  return factor === undefined ? undefined : tidy(value * factor)
}
