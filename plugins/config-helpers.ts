/**
 * Config pieces the plugins share: listen addresses (`HOST:PORT`) and durations (`"5m"` →
 * seconds), with the same syntax and the same messages in every `[plugins.<id>]` slice.
 */
import * as z from 'zod'

/** `HOST:PORT` or `[IPv6]:PORT`. */
export function parseListen(listen: string): { host: string; port: number } | undefined {
  const match = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]\s]+)):(\d{1,5})$/.exec(listen)
  if (!match) return undefined
  const port = Number(match[3])
  if (port > 65_535) return undefined
  return { host: match[1] ?? match[2]!, port }
}

/** A `HOST:PORT` config string; `example` shows in the error. */
export const listenAddress = (example: string) =>
  z.string().refine((value) => parseListen(value) !== undefined, `must be "HOST:PORT" (e.g. "${example}")`)

/** `"300"`, `300`, `"300s"`, `"5m"`, `"1h"`, `"1500ms"` → seconds. */
export function parseDurationSeconds(input: string | number): number | undefined {
  if (typeof input === 'number') return Number.isFinite(input) ? input : undefined
  const match = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$/.exec(input)
  if (!match) return undefined
  const value = Number(match[1])
  const unit = match[2] ?? 's'
  return unit === 'ms' ? value / 1000 : unit === 'm' ? value * 60 : unit === 'h' ? value * 3600 : value
}

/** A duration config value (number of seconds or `"5m"`…) between `min` and `max` seconds → seconds. */
export const durationSeconds = (what: string, min: number, max: number, example: string) =>
  z.union([z.number(), z.string()]).transform((input, context) => {
    const seconds = parseDurationSeconds(input)
    if (seconds === undefined || seconds < min || seconds > max) {
      context.addIssue({
        code: 'custom',
        message: `${what} must be a duration between ${min} s and ${max} s (e.g. ${example})`,
      })
      return z.NEVER
    }
    return seconds
  })
