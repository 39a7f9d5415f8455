/** A small seeded random source: the same seed gives the same fleet and the same readings. */
import { randomInt } from 'node:crypto'

export interface Random {
  /** Uniform in [0, 1). */
  next(): number
  /** Uniform in [min, max). */
  between(min: number, max: number): number
  /** Normally distributed, mean 0. */
  gaussian(standardDeviation?: number): number
  /** True with probability `p`. */
  chance(p: number): boolean
  pick<T>(items: readonly T[]): T
}

/** Any finite number (or none: a random one) to a 32-bit seed. */
function toSeed(seed: number | undefined): number {
  if (seed === undefined) return randomInt(0, 2 ** 32 - 1)
  if (Number.isInteger(seed) && Math.abs(seed) < 2 ** 32) return seed >>> 0
  const words = new Uint32Array(new Float64Array([seed]).buffer)
  return (words[0]! ^ Math.imul(words[1]!, 0x9e3779b1)) >>> 0
}

/** mulberry32: tiny, fast and good enough for synthetic data (not for anything secret). */
export function seededRandom(seed?: number): Random {
  let state = toSeed(seed)
  const next = (): number => {
    state = (state + 0x6d2b79f5) >>> 0
    let z = state
    z = Math.imul(z ^ (z >>> 15), z | 1)
    z ^= z + Math.imul(z ^ (z >>> 7), z | 61)
    return ((z ^ (z >>> 14)) >>> 0) / 4_294_967_296
  }
  return {
    next,
    between: (min, max) => min + (max - min) * next(),
    gaussian: (standardDeviation = 1) => {
      // Box–Muller; 1 - next() keeps the logarithm finite.
      const radius = Math.sqrt(-2 * Math.log(1 - next()))
      return radius * Math.cos(2 * Math.PI * next()) * standardDeviation
    },
    chance: (p) => next() < p,
    pick: (items) => items[Math.floor(next() * items.length)]!,
  }
}
