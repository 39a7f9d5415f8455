/**
 * Seeded, deterministic fuzzing of the two edges that take untrusted bytes and values: the CBOR
 * decoder and the telemetry record validator. A failure prints the seed-determined input, so it
 * reproduces exactly.
 */
import { describe, expect, test } from 'vitest'
import { prng, SPEC_NOT_ELECTRICAL, SPEC_UNITS } from '../test/helpers/check.ts'
import { decodeCbor, decodeForDisplay, encodeCbor } from './codec.ts'
import { parseTelemetryRecord, RESOURCE_ID_PATTERN, RESOURCE_KINDS } from './model.ts'

const ITERATIONS = 20_000
const NOW = 1_700_000_000_000
/** Hang guard only: each test runs in well under a second. */
const HANG_GUARD_MS = 20_000

type Random = () => number

const int = (random: Random, max: number): number => Math.floor(random() * max)
const pick = <T>(random: Random, items: readonly T[]): T => items[int(random, items.length)]!
const chance = (random: Random, probability: number): boolean => random() < probability

function randomBytes(random: Random, length: number): Uint8Array {
  const bytes = new Uint8Array(length)
  for (let i = 0; i < length; i++) bytes[i] = int(random, 256)
  return bytes
}

const ALPHABET = 'abcdefghijklmnopqrstuvwxyzAZ0123456789_-:. *>/\n°é'

function randomString(random: Random, maxLength = 12): string {
  let text = ''
  const length = int(random, maxLength + 1)
  for (let i = 0; i < length; i++) text += ALPHABET[int(random, ALPHABET.length)]
  return text
}

const EDGE_NUMBERS = [
  0,
  -0,
  1,
  -1,
  0.5,
  1e308,
  -1e308,
  Number.MAX_SAFE_INTEGER,
  2 ** 53,
  Number.NaN,
  Number.POSITIVE_INFINITY,
  Number.NEGATIVE_INFINITY,
  NOW,
  NOW + 5 * 60 * 1000,
  NOW + 5 * 60 * 1000 + 1,
]

/** A random JSON-ish value (plus the odd bigint and undefined a CBOR decoder can produce). */
function randomValue(random: Random, depth = 0): unknown {
  switch (int(random, depth > 2 ? 7 : 9)) {
    case 0:
      return null
    case 1:
      return chance(random, 0.5)
    case 2:
      return pick(random, EDGE_NUMBERS)
    case 3:
      return (random() - 0.5) * 10 ** int(random, 15)
    case 4:
      return randomString(random)
    case 5:
      return chance(random, 0.5) ? undefined : BigInt(int(random, 1000))
    case 6:
      return int(random, 1_000_000)
    case 7: {
      const list: unknown[] = []
      for (let i = int(random, 4); i > 0; i--) list.push(randomValue(random, depth + 1))
      return list
    }
    default: {
      const object: Record<string, unknown> = {}
      for (let i = int(random, 4); i > 0; i--)
        object[randomString(random, 6)] = randomValue(random, depth + 1)
      return object
    }
  }
}

/** Corrupt an encoding the way a bad link or a bad client would. */
function mutate(random: Random, source: Uint8Array): Uint8Array {
  const bytes = [...source]
  for (let edits = 1 + int(random, 4); edits > 0; edits--) {
    const at = int(random, bytes.length + 1)
    switch (int(random, 6)) {
      case 0:
        if (at < bytes.length) bytes[at]! ^= 1 << int(random, 8)
        break
      case 1:
        if (at < bytes.length) bytes[at] = int(random, 256)
        break
      case 2:
        bytes.splice(at, 0, int(random, 256))
        break
      case 3:
        bytes.splice(at, 1)
        break
      case 4:
        bytes.length = Math.min(bytes.length, at)
        break
      default:
        // A CBOR header byte that announces a large or indefinite item.
        bytes.splice(at, 0, pick(random, [0x9f, 0xbf, 0x5f, 0x7f, 0x9b, 0xbb, 0x5b, 0x1b, 0xd8, 0xff, 0xf9]))
    }
  }
  return new Uint8Array(bytes)
}

function describeInput(value: unknown): string {
  if (value instanceof Uint8Array) return Buffer.from(value).toString('hex')
  try {
    return (
      JSON.stringify(value, (_key, inner) => (typeof inner === 'bigint' ? `${inner}n` : inner)) ?? 'undefined'
    )
  } catch {
    return String(value)
  }
}

/** Decode `bytes`; returns a description of what went wrong, or undefined when all is well. */
function checkDecode(bytes: Uint8Array): string | undefined {
  try {
    decodeCbor(bytes)
  } catch (error) {
    if ((error as Error | undefined)?.name !== 'DecodeError') {
      return `decodeCbor(${describeInput(bytes)}) threw ${(error as Error | undefined)?.name}: ${String(error)}`
    }
  }
  try {
    JSON.stringify(decodeForDisplay(bytes))
  } catch (error) {
    return `decodeForDisplay(${describeInput(bytes)}) gave nothing JSON can show: ${String(error)}`
  }
  return undefined
}

describe('fuzz: decodeCbor', () => {
  test(
    'random bytes either decode or throw DecodeError',
    () => {
      const random = prng(0x0e0e0001)
      const problems: string[] = []
      for (let i = 0; i < ITERATIONS; i++) {
        const problem = checkDecode(randomBytes(random, int(random, 48)))
        if (problem) problems.push(problem)
      }
      expect(problems.slice(0, 5)).toEqual([])
    },
    HANG_GUARD_MS,
  )

  test(
    'mutated valid encodings either decode or throw DecodeError',
    () => {
      const random = prng(0x0e0e0002)
      const problems: string[] = []
      let decodedIntact = 0
      for (let i = 0; i < ITERATIONS; i++) {
        const value = randomValue(random)
        const encoded = encodeCbor(value)
        // The intact encoding decodes to what was encoded (bigints and -0 compared loosely).
        if (describeInput(decodeCbor(encoded)) === describeInput(value)) decodedIntact++
        const problem = checkDecode(mutate(random, encoded))
        if (problem) problems.push(problem)
      }
      expect(problems.slice(0, 5)).toEqual([])
      expect(decodedIntact).toBe(ITERATIONS)
    },
    HANG_GUARD_MS,
  )
})

/** Every quantity of ARCHITECTURE §5 and its unit, phase-suffixed electrical ones included. */
const QUANTITY_UNIT = new Map<string, string>(Object.entries(SPEC_UNITS))
for (const [quantity, unit] of Object.entries(SPEC_UNITS)) {
  if (SPEC_NOT_ELECTRICAL.has(quantity)) continue
  for (const phase of ['_l1', '_l2', '_l3']) QUANTITY_UNIT.set(quantity + phase, unit)
}
const QUANTITIES = [...QUANTITY_UNIT.keys()]
const QUALITIES = ['good', 'estimated', 'suspect', 'missing']
const RECORD_FIELDS = ['kind', 'rid', 'q', 'v', 't', 'u', 'ql']

const FIELD_POOLS: Record<string, (random: Random) => unknown> = {
  kind: (random) => pick(random, [...RESOURCE_KINDS, 'meters', 'Meter', '', 'charger']),
  rid: (random) =>
    pick(random, [
      'm1',
      'st1-2',
      'Site_7:a',
      'x'.repeat(128),
      'x'.repeat(129),
      '-m1',
      'a.b',
      'a b',
      '',
      randomString(random, 20),
    ]),
  q: (random) =>
    chance(random, 0.8)
      ? pick(random, QUANTITIES)
      : pick(random, [
          'soc_l1',
          'temperature_l2',
          'power_l4',
          'watts',
          'POWER',
          'constructor',
          '__proto__',
          randomString(random),
        ]),
  v: (random) => (chance(random, 0.5) ? (random() - 0.5) * 1e6 : pick(random, [...EDGE_NUMBERS, '1', null])),
  t: (random) =>
    chance(random, 0.5)
      ? NOW - int(random, 1e9)
      : pick(random, [...EDGE_NUMBERS, NOW + 0.5, -NOW, '2024-01-01', BigInt(NOW)]),
  u: (random) => pick(random, [...Object.values(SPEC_UNITS), 'kW', 'kWh', '', 1]),
  ql: (random) => pick(random, [...QUALITIES, 'bad', 'GOOD', 0]),
}

/** A record that is mostly right, with some fields wrong, missing or extra. */
function randomRecordCandidate(random: Random): unknown {
  if (chance(random, 0.05)) return randomValue(random)
  const candidate: Record<string, unknown> = {}
  for (const field of RECORD_FIELDS) {
    const optional = field === 'u' || field === 'ql'
    const roll = random()
    if (roll < (optional ? 0.4 : 0.02)) continue
    if (roll < 0.96) candidate[field] = FIELD_POOLS[field]!(random)
    else candidate[field] = randomValue(random)
  }
  // Keep the unit echo right most of the time so that records carrying one get accepted too.
  if (
    typeof candidate.q === 'string' &&
    QUANTITY_UNIT.has(candidate.q) &&
    'u' in candidate &&
    chance(random, 0.6)
  ) {
    candidate.u = QUANTITY_UNIT.get(candidate.q)
  }
  if (chance(random, 0.03)) candidate[randomString(random, 6) || 'extra'] = randomValue(random)
  return candidate
}

/** Check what parseTelemetryRecord did with `input`; a description of what is wrong, or undefined. */
function checkRecord(input: unknown): { accepted: boolean; problem?: string } {
  let record: ReturnType<typeof parseTelemetryRecord>
  try {
    record = parseTelemetryRecord(input, NOW)
  } catch (error) {
    const e = error as { name?: string; path?: unknown }
    if (e?.name !== 'ValidationError') {
      return { accepted: false, problem: `${describeInput(input)} threw ${e?.name}: ${String(error)}` }
    }
    const known = typeof input === 'object' && input !== null ? Object.keys(input) : []
    if (typeof e.path !== 'string' || !['', ...RECORD_FIELDS, ...known].includes(e.path)) {
      return {
        accepted: false,
        problem: `${describeInput(input)} rejected on unknown path ${String(e.path)}`,
      }
    }
    return { accepted: false }
  }
  const wrong: string[] = []
  if (!(RESOURCE_KINDS as readonly string[]).includes(record.kind)) wrong.push('kind')
  if (!RESOURCE_ID_PATTERN.test(record.rid) || record.rid.includes('.')) wrong.push('rid')
  if (!QUANTITY_UNIT.has(record.q)) wrong.push('q')
  if (typeof record.v !== 'number' || !Number.isFinite(record.v)) wrong.push('v')
  if (!Number.isSafeInteger(record.t) || record.t < 0 || record.t > NOW + 5 * 60 * 1000) wrong.push('t')
  if (record.u !== undefined && record.u !== QUANTITY_UNIT.get(record.q)) wrong.push('u')
  if (record.ql !== undefined && !QUALITIES.includes(record.ql)) wrong.push('ql')
  if (Object.keys(record).some((key) => !RECORD_FIELDS.includes(key))) wrong.push('extra field')
  // The record is the input as sent: no unknown field let through, nothing dropped or altered.
  const sent = input as Record<string, unknown>
  if (Object.keys(sent).some((key) => !RECORD_FIELDS.includes(key))) wrong.push('unknown input field')
  for (const field of RECORD_FIELDS) {
    if (!Object.is((record as unknown as Record<string, unknown>)[field], sent[field]))
      wrong.push(`changed ${field}`)
  }
  try {
    expect(parseTelemetryRecord(record, NOW)).toStrictEqual(record)
  } catch {
    wrong.push('does not re-validate to itself')
  }
  if (wrong.length > 0) {
    return { accepted: true, problem: `${describeInput(input)} accepted with bad ${wrong.join(', ')}` }
  }
  return { accepted: true }
}

describe('fuzz: parseTelemetryRecord', () => {
  test(
    'random values either give a sound record or throw ValidationError',
    () => {
      const random = prng(0x0e0e0003)
      const problems: string[] = []
      let accepted = 0
      for (let i = 0; i < ITERATIONS; i++) {
        const result = checkRecord(randomRecordCandidate(random))
        if (result.accepted) accepted++
        if (result.problem) problems.push(result.problem)
      }
      expect(problems.slice(0, 5)).toEqual([])
      // Both outcomes are exercised, so neither half of the check is vacuous.
      // (About 4 % of candidates pass since values and times must also be plausible.)
      expect(accepted).toBeGreaterThan(ITERATIONS * 0.02)
      expect(accepted).toBeLessThan(ITERATIONS * 0.95)
    },
    HANG_GUARD_MS,
  )

  test(
    'records that went through CBOR either give a sound record or throw ValidationError',
    () => {
      const random = prng(0x0e0e0004)
      const problems: string[] = []
      let accepted = 0
      for (let i = 0; i < ITERATIONS / 4; i++) {
        const result = checkRecord(decodeCbor(encodeCbor(randomRecordCandidate(random))))
        if (result.accepted) accepted++
        if (result.problem) problems.push(result.problem)
      }
      expect(problems.slice(0, 5)).toEqual([])
      expect(accepted).toBeGreaterThan(ITERATIONS * 0.01)
    },
    HANG_GUARD_MS,
  )
})
