/**
 * CSIP-AUS ↔ ARCHITECTURE §5. Controls: each DERControlBase mode in force becomes a control
 * command on the site (`oe.ctl.site.<rid>.<command>`, `{v, u, until, source}`, v in W or 1/0).
 * Readings: the node's telemetry (W, var, V, Hz) becomes MirrorMeterReadings.
 */
import type { TelemetryRecord } from '../../data-plane/index.ts'
import type { Mode, ModeValue } from './scheduler.ts'
import type { MirrorReadingType } from './sep.ts'

export const MODE_COMMANDS = {
  opModExpLimW: 'limit_export',
  opModImpLimW: 'limit_import',
  opModGenLimW: 'limit_generation',
  opModLoadLimW: 'limit_load',
} as const satisfies Partial<Record<Mode, string>>

export const SITE_COMMANDS = [
  'limit_export',
  'limit_import',
  'limit_generation',
  'limit_load',
  'connect',
] as const
export type SiteCommand = (typeof SITE_COMMANDS)[number]

export interface SiteControl {
  command: SiteCommand
  payload: { v: number; u: 'W' | '1'; until?: number; source: string }
}

function sourceOf(value: ModeValue): string {
  return value.source.type === 'event'
    ? `csip-aus:event:${value.source.mrid}`
    : `csip-aus:default:${value.source.mrid ?? value.source.program}`
}

/**
 * The commands for the modes in force. `offsetMs` is server time − host time: an event's end
 * (server clock) becomes `until` on the host's clock, as §5 times are.
 */
export function controlsFor(modes: ReadonlyMap<Mode, ModeValue>, offsetMs: number): SiteControl[] {
  const controls: SiteControl[] = []
  const until = (value: ModeValue) =>
    value.until === undefined ? {} : { until: Math.round(value.until * 1000 - offsetMs) }
  for (const [mode, command] of Object.entries(MODE_COMMANDS) as [
    keyof typeof MODE_COMMANDS,
    SiteCommand,
  ][]) {
    const value = modes.get(mode)
    if (value === undefined || typeof value.value !== 'number') continue
    controls.push({
      command,
      payload: { v: Math.max(0, value.value), u: 'W', ...until(value), source: sourceOf(value) },
    })
  }
  // Connected only when neither opModConnect nor opModEnergize says otherwise.
  const connect = modes.get('opModConnect')
  const energize = modes.get('opModEnergize')
  if (connect !== undefined || energize !== undefined) {
    const off = [connect, energize].find((value) => value?.value === false)
    const deciding = off ?? connect ?? energize!
    controls.push({
      command: 'connect',
      payload: { v: off ? 0 : 1, u: '1', ...until(deciding), source: sourceOf(deciding) },
    })
  }
  return controls
}

/** Telemetry quantities posted as readings, with their 2030.5 unit and phase. */
const QUANTITIES: Record<string, { uom: number; phase: number; label: string }> = {
  power: { uom: 38, phase: 0, label: 'active power' },
  power_l1: { uom: 38, phase: 129, label: 'active power phase A' },
  power_l2: { uom: 38, phase: 65, label: 'active power phase B' },
  power_l3: { uom: 38, phase: 33, label: 'active power phase C' },
  reactive_power: { uom: 63, phase: 0, label: 'reactive power' },
  reactive_power_l1: { uom: 63, phase: 129, label: 'reactive power phase A' },
  reactive_power_l2: { uom: 63, phase: 65, label: 'reactive power phase B' },
  reactive_power_l3: { uom: 63, phase: 33, label: 'reactive power phase C' },
  voltage: { uom: 29, phase: 0, label: 'voltage' },
  voltage_l1: { uom: 29, phase: 129, label: 'voltage phase A' },
  voltage_l2: { uom: 29, phase: 65, label: 'voltage phase B' },
  voltage_l3: { uom: 29, phase: 33, label: 'voltage phase C' },
  frequency: { uom: 33, phase: 0, label: 'frequency' },
}

/** The quantities the client posts to MirrorUsagePoints. */
export const POSTED_QUANTITIES: readonly string[] = Object.keys(QUANTITIES)

export function isPostedQuantity(q: string): boolean {
  return q in QUANTITIES
}

/** A stable 32-hex-digit mRID for a reading stream, derived from the LFDI (so restarts reuse it). */
export function readingMrid(lfdi: string, role: 'site' | 'der', q: string): string {
  let hash = 0x811c9dc5
  for (const char of `${role}/${q}`) {
    hash ^= char.charCodeAt(0)
    hash = Math.imul(hash, 0x01000193) >>> 0
  }
  return `${hash.toString(16).toUpperCase().padStart(8, '0')}${lfdi.slice(0, 24)}`
}

export function readingType(lfdi: string, role: 'site' | 'der', q: string): MirrorReadingType {
  const spec = QUANTITIES[q]!
  // Voltage and frequency to a tenth/hundredth; power in W.
  const powerOfTenMultiplier = spec.uom === 29 ? -1 : spec.uom === 33 ? -2 : 0
  return {
    mrid: readingMrid(lfdi, role, q),
    description: `${role === 'site' ? 'Site' : 'DER'} ${spec.label}`,
    uom: spec.uom,
    phase: spec.phase,
    powerOfTenMultiplier,
  }
}

/** Average of the records of one quantity: what a MirrorMeterReading reports over a post interval. */
export function average(records: readonly TelemetryRecord[]): number | undefined {
  if (records.length === 0) return undefined
  return records.reduce((sum, record) => sum + record.v, 0) / records.length
}
