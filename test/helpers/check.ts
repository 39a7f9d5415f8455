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
