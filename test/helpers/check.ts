/** Small helpers unit tests share. */

/** The error `fn` throws (the test fails when it throws nothing). */
export function thrown(fn: () => unknown): Error & { path?: string } {
  try {
    fn()
  } catch (error) {
    return error as Error & { path?: string }
  }
  throw new Error('expected a throw, got a value')
}

/** A tiny seeded PRNG (mulberry32): the same seed gives the same values on every run. */
export function prng(seed: number): () => number {
  let state = seed >>> 0
  return () => {
    state = (state + 0x6d2b79f5) >>> 0
    let t = state
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

/**
 * The quantities and canonical units of ARCHITECTURE §5, written out here so that tests check the
 * model against the document rather than against itself.
 */
export const SPEC_UNITS: Readonly<Record<string, string>> = {
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
}

/** The quantities of §5 that take no phase suffix (`_l1` `_l2` `_l3`). */
export const SPEC_NOT_ELECTRICAL: ReadonlySet<string> = new Set(['soc', 'temperature'])
