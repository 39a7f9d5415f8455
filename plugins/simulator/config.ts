/** The simulator's config slice, `[plugins.simulator]` in config.toml. */
import * as z from 'zod'

const DURATION_UNITS: Record<string, number> = { ms: 1, s: 1_000, m: 60_000, h: 3_600_000 }

/** The shortest tick: below it the simulator would mostly measure the data plane. */
export const MIN_INTERVAL_MS = 100
const MAX_INTERVAL_MS = 3_600_000

/** `"500ms"`, `"1s"`, `"5m"`, or a number of milliseconds, as the node's own durations. */
function parseDuration(value: string | number): number | undefined {
  if (typeof value === 'number') return Number.isFinite(value) && value >= 0 ? value : undefined
  const match = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$/.exec(value)
  if (!match) return undefined
  return Math.round(Number(match[1]) * DURATION_UNITS[match[2] ?? 'ms']!)
}

const interval = z.union([z.string(), z.number()]).transform((value, ctx) => {
  const parsed = parseDuration(value)
  if (parsed === undefined) {
    ctx.addIssue({ code: 'custom', message: `'${value}' is not a duration (e.g. "500ms", "1s", "5m")` })
    return z.NEVER
  }
  if (parsed < MIN_INTERVAL_MS || parsed > MAX_INTERVAL_MS) {
    ctx.addIssue({ code: 'custom', message: `must be between ${MIN_INTERVAL_MS}ms and 1h, got '${value}'` })
    return z.NEVER
  }
  return parsed
})

/**
 * `"now"`, or an ISO 8601 time not in the future: the simulated clock starts there and runs at
 * real speed (replaying, say, a sunny noon at night). Readings are stamped with simulated time.
 */
const start = z.string().transform((value, ctx): 'now' | number => {
  if (value === 'now') return 'now'
  const at = /^\d{4}-\d{2}-\d{2}T/.test(value) ? Date.parse(value) : Number.NaN
  if (!Number.isFinite(at)) {
    ctx.addIssue({ code: 'custom', message: `'${value}' is not "now" or an ISO 8601 time` })
    return z.NEVER
  }
  if (at > Date.now()) {
    ctx.addIssue({ code: 'custom', message: `'${value}' is in the future (readings would be refused)` })
    return z.NEVER
  }
  return at
})

export const simulatorConfigSchema = z.strictObject({
  /** Number of sites, `site-1` … `site-<n>`. */
  sites: z.number().int().min(1).max(10_000).default(3),
  /** Time between readings. */
  interval: interval.prefault('5s'),
  /** Makes the fleet and its readings repeatable. */
  seed: z.number().optional(),
  evses_per_site: z.number().int().min(0).max(64).default(2),
  start: start.prefault('now'),
})

export type SimulatorConfig = z.output<typeof simulatorConfigSchema>
