/** Reading a `limit_power` command payload `{ v, u, until?, source? }` (lenient in: `kW` is converted). */
import type { PowerLimit } from './fleet.ts'

export type LimitPowerParse = { ok: true; limit: PowerLimit } | { ok: false; reason: string }

const UNIT_FACTORS: Record<string, number> = { W: 1, kW: 1_000 }

export function parseLimitPower(payload: Record<string, unknown>, now: number): LimitPowerParse {
  const { v, u, until, source } = payload
  if (typeof v !== 'number' || !Number.isFinite(v)) return { ok: false, reason: 'v must be a number of W' }
  if (v < 0) return { ok: false, reason: `v must not be negative, got ${v}` }
  const factor = UNIT_FACTORS[u === undefined ? 'W' : String(u)]
  if (factor === undefined) return { ok: false, reason: `unit '${String(u)}' is not W or kW` }
  if (until !== undefined && until !== null) {
    if (typeof until !== 'number' || !Number.isFinite(until))
      return { ok: false, reason: 'until must be epoch milliseconds' }
    if (until <= now) return { ok: false, reason: `until ${new Date(until).toISOString()} has passed` }
  }
  if (source !== undefined && source !== null && typeof source !== 'string')
    return { ok: false, reason: 'source must be a string' }
  return {
    ok: true,
    limit: {
      w: v * factor,
      ...(typeof until === 'number' ? { until } : {}),
      ...(typeof source === 'string' ? { source: source.slice(0, 256) } : {}),
    },
  }
}
