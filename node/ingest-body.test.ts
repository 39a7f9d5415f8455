import { fileURLToPath } from 'node:url'
import { encode } from 'cbor-x'
import { describe, expect, test } from 'vitest'
import { type ChildOutcome, inChildBun as runInChildBun } from '../test/helpers/child-bun.ts'
import {
  checkBodySize,
  countCborBody,
  countJsonBody,
  type HttpError,
  ITEMS_PER_RECORD,
  parseIngestBody,
  validateRecords,
} from './http-api.ts'

const NOW = Date.UTC(2025, 5, 1, 12, 0, 0)
const text = (value: string): Uint8Array => new TextEncoder().encode(value)

const RECORDS = [
  { kind: 'meter', rid: 'site1-meter', q: 'power', v: 1520.5, t: NOW - 1000 },
  { kind: 'evse', rid: 'CP001-1', q: 'energy_import', v: 123456, t: NOW - 500, u: 'Wh', ql: 'estimated' },
  { kind: 'inverter', rid: 'inv:7', q: 'voltage_l2', v: 231.2, t: NOW },
]

/** What `fn` throws (fails the test when it returns). */
function thrown(fn: () => unknown): Error {
  let caught: unknown
  try {
    fn()
  } catch (error) {
    caught = error
  }
  expect(caught, 'should have thrown').toBeInstanceOf(Error)
  return caught as Error
}

describe('parseIngestBody', () => {
  test('a JSON array', () => {
    expect(parseIngestBody(text(JSON.stringify(RECORDS)), 'application/json')).toEqual(RECORDS)
    expect(parseIngestBody(text(' [ ] \n'), 'application/json')).toEqual([])
  })

  test('no content-type is read as JSON', () => {
    expect(parseIngestBody(text(JSON.stringify(RECORDS)), '')).toEqual(RECORDS)
  })

  test('NDJSON, skipping blank lines and tolerating CRLF', () => {
    const body = `\n${JSON.stringify(RECORDS[0])}\r\n\n   \n${JSON.stringify(RECORDS[1])}\n${JSON.stringify(RECORDS[2])}`
    expect(parseIngestBody(text(body), 'application/x-ndjson')).toEqual(RECORDS)
    expect(parseIngestBody(text(`${body}\n`), 'application/ndjson')).toEqual(RECORDS)
    expect(parseIngestBody(text(body), 'application/jsonl')).toEqual(RECORDS)
    expect(parseIngestBody(text('\n\n'), 'application/x-ndjson')).toEqual([])
  })

  test('a CBOR array encoded by cbor-x', () => {
    expect(parseIngestBody(encode(RECORDS), 'application/cbor')).toEqual(RECORDS)
    // Kept small: larger CBOR batches crash Bun in-process (see the child-process tests below).
    const batch = Array.from({ length: 20 }, (_, i) => ({ ...RECORDS[0], rid: `meter-${i}`, t: NOW - i }))
    expect(parseIngestBody(encode(batch), 'application/cbor')).toEqual(batch)
  })

  test('malformed JSON is a DecodeError saying so', () => {
    for (const body of ['[{"kind": "meter",', '[1,]', '', '\u00ff']) {
      const error = thrown(() => parseIngestBody(text(body), 'application/json'))
      expect(error.name, body).toBe('DecodeError')
      expect(error.message, body).toMatch(/malformed JSON/)
    }
  })

  test('a body that is not UTF-8 is a DecodeError saying so', () => {
    for (const type of ['application/json', 'application/x-ndjson']) {
      const error = thrown(() => parseIngestBody(new Uint8Array([0x5b, 0xff, 0xfe, 0x5d]), type))
      expect(error.name).toBe('DecodeError')
      expect(error.message).toMatch(/UTF-8/)
    }
  })

  test('malformed NDJSON is a DecodeError naming the line', () => {
    const body = `${JSON.stringify(RECORDS[0])}\n\n{"kind": "meter", "rid": \n${JSON.stringify(RECORDS[1])}\n`
    const error = thrown(() => parseIngestBody(text(body), 'application/x-ndjson'))
    expect(error.name).toBe('DecodeError')
    expect(error.message).toMatch(/NDJSON/)
    expect(error.message).toMatch(/line 3\b/)
  })

  test('malformed CBOR is a DecodeError saying so', () => {
    const whole = encode(RECORDS)
    for (const body of [
      whole.subarray(0, whole.length - 5),
      new Uint8Array([0x83, 0x01]),
      new Uint8Array([0xff]),
    ]) {
      const error = thrown(() => parseIngestBody(body, 'application/cbor'))
      expect(error.name).toBe('DecodeError')
      expect(error.message).toMatch(/CBOR/)
    }
  })

  test('a JSON or CBOR body that is not an array is refused', () => {
    for (const body of [JSON.stringify(RECORDS[0]), 'null', '42', '"records"']) {
      const error = thrown(() => parseIngestBody(text(body), 'application/json'))
      expect(error.name, body).toBe('DecodeError')
      expect(error.message, body).toMatch(/must be an array/)
    }
    const error = thrown(() => parseIngestBody(encode(RECORDS[0]), 'application/cbor'))
    expect(error.name).toBe('DecodeError')
    expect(error.message).toMatch(/must be an array/)
  })

  test('an unsupported content-type is an HttpError with status 415', () => {
    for (const type of ['text/plain', 'application/xml', 'multipart/form-data', 'application/msgpack']) {
      const error = thrown(() => parseIngestBody(text('[]'), type))
      expect(error.name, type).toBe('HttpError')
      expect((error as HttpError).status, type).toBe(415)
      expect((error as HttpError).errorName, type).toBe('UnsupportedMediaType')
      expect(error.message, type).toContain(type)
    }
  })
})

describe('validateRecords', () => {
  test('keeps good records and names each bad one by index and reason', () => {
    const candidates = [
      RECORDS[0],
      { ...RECORDS[0], q: 'wattage' },
      RECORDS[1],
      { ...RECORDS[0], rid: 'site1.meter' },
      { ...RECORDS[0], v: Number.NaN },
      { ...RECORDS[0], t: NOW + 10 * 60_000 },
      { ...RECORDS[0], v: '1520.5' },
      RECORDS[2],
      42,
      { ...RECORDS[0], kind: 'toaster' },
      { ...RECORDS[0], extra: true },
      { ...RECORDS[0], q: 'temperature', u: 'F' },
    ]
    const { records, indices, result } = validateRecords(candidates, NOW)
    expect(records).toEqual(RECORDS)
    expect(indices).toEqual([0, 2, 7])
    expect(result.accepted).toBe(3)
    expect(result.rejected).toBe(9)
    expect(result.errors.map((error) => error.index)).toEqual([1, 3, 4, 5, 6, 8, 9, 10, 11])
    const reasons = Object.fromEntries(result.errors.map((error) => [error.index, error.reason]))
    expect(reasons[1]).toMatch(/^q: unknown quantity 'wattage'/)
    expect(reasons[3]).toMatch(/^rid: 'site1\.meter' is not a resource id/)
    expect(reasons[4]).toMatch(/^v: must be finite/)
    expect(reasons[5]).toMatch(/^t: is 600 s in the future/)
    expect(reasons[6]).toMatch(/^v: must be a number, got string/)
    expect(reasons[8]).toMatch(/must be an object, got number/)
    expect(reasons[9]).toMatch(/^kind: unknown resource kind 'toaster'/)
    expect(reasons[10]).toMatch(/^extra: is not a field/)
    expect(reasons[11]).toMatch(/^u: 'F' is not the canonical unit '°C'/)
  })

  test('five minutes of clock skew are allowed, a second more is not', () => {
    const { result } = validateRecords(
      [
        { ...RECORDS[0], t: NOW + 300_000 },
        { ...RECORDS[0], t: NOW + 301_000 },
      ],
      NOW,
    )
    expect(result).toEqual({
      accepted: 1,
      rejected: 1,
      errors: [{ index: 1, reason: expect.stringMatching(/^t:/) }],
    })
  })

  test('phase suffixes only on electrical quantities', () => {
    const { result } = validateRecords(
      [
        { ...RECORDS[0], q: 'power_l3' },
        { ...RECORDS[0], q: 'soc_l1' },
        { ...RECORDS[0], q: 'power_l4' },
      ],
      NOW,
    )
    expect(result.accepted).toBe(1)
    expect(result.errors.map((error) => error.index)).toEqual([1, 2])
  })

  test('every bad record is counted, but at most 1000 reasons are reported', () => {
    const candidates = [RECORDS[0], ...Array.from({ length: 1500 }, () => ({ ...RECORDS[0], q: 'nope' }))]
    const { records, result } = validateRecords(candidates, NOW)
    expect(records).toHaveLength(1)
    expect(result.accepted).toBe(1)
    expect(result.rejected).toBe(1500)
    expect(result.errors).toHaveLength(1000)
    expect(result.errors[0]!.index).toBe(1)
    expect(result.errorsTruncated).toBe(true)
    // Exactly 1000 rejections are all listed: nothing is truncated, and the flag is absent.
    const full = validateRecords(
      Array.from({ length: 1000 }, () => ({})),
      NOW,
    ).result
    expect(full.errors).toHaveLength(1000)
    expect(full).not.toHaveProperty('errorsTruncated')
  })

  test('implausible readings are rejected per record with the range: negative registers, soc outside 0–100, t before 2000', () => {
    const { records, result } = validateRecords(
      [
        { ...RECORDS[1], v: -1 },
        { ...RECORDS[0], q: 'energy_export_l1', v: -0.5 },
        { ...RECORDS[0], q: 'soc', v: 101 },
        { ...RECORDS[0], q: 'soc', v: -3 },
        { ...RECORDS[0], t: 0 },
        { ...RECORDS[0], t: Math.floor(NOW / 1000) },
        { ...RECORDS[0], q: 'soc', v: 100 },
        { ...RECORDS[1], v: 0 },
      ],
      NOW,
    )
    expect(records.map((record) => [record.q, record.v])).toEqual([
      ['soc', 100],
      ['energy_import', 0],
    ])
    expect(result.errors).toEqual([
      { index: 0, reason: 'v: energy_import is a cumulative register and cannot be negative, got -1' },
      { index: 1, reason: 'v: energy_export_l1 is a cumulative register and cannot be negative, got -0.5' },
      { index: 2, reason: 'v: soc must be between 0 and 100 %, got 101' },
      { index: 3, reason: 'v: soc must be between 0 and 100 %, got -3' },
      { index: 4, reason: expect.stringMatching(/^t: 0 is before 2000-01-01T00:00:00Z/) },
      {
        index: 5,
        reason: expect.stringMatching(/^t: \d+ is before 2000-01-01T00:00:00Z: epoch milliseconds expected/),
      },
    ])
  })

  test('an empty batch is fine', () => {
    expect(validateRecords([], NOW)).toEqual({
      records: [],
      indices: [],
      result: { accepted: 0, rejected: 0, errors: [] },
    })
  })
})

describe('counting a body before it is parsed', () => {
  const limits = { records: 1_000_000, items: 100_000_000 }

  test('JSON arrays and NDJSON: records and parts, strings and escapes skipped', () => {
    const body = JSON.stringify([
      ...RECORDS,
      { ...RECORDS[0], rid: 'a,b:c[{' },
      { ...RECORDS[0], rid: 'q\\"],' },
    ])
    expect(countJsonBody(text(body), false, limits).records).toBe(5)
    expect(countJsonBody(text('[]'), false, limits)).toEqual({ records: 0, items: 1 })
    expect(countJsonBody(text(' [ {} , [1,2] , "x" , 3 ] '), false, limits).records).toBe(4)
    const ndjson = `\n${RECORDS.map((record) => JSON.stringify(record)).join('\r\n\n  \n')}\n`
    expect(countJsonBody(text(ndjson), true, limits).records).toBe(3)
    // A full record (every field) is fewer parts than ITEMS_PER_RECORD.
    const full = { kind: 'evse', rid: 'a', q: 'soc', v: 1, t: NOW, u: '%', ql: 'good' }
    expect(countJsonBody(text(JSON.stringify([full, full])), false, limits).items).toBeLessThan(
      2 * ITEMS_PER_RECORD,
    )
  })

  test('counting stops once a limit is passed', () => {
    const many = text(`[${Array(1000).fill('{}').join(',')}]`)
    expect(countJsonBody(many, false, { records: 10, items: 1e9 }).records).toBe(11)
    const nested = text(`[{"x":[${Array(1000).fill('{}').join(',')}]}]`)
    expect(countJsonBody(nested, false, { records: 10, items: 50 })).toEqual({ records: 1, items: 51 })
  })

  test('CBOR: definite and indefinite arrays, maps, strings, tags and floats, as cbor-x writes them', () => {
    const records = Array.from({ length: 300 }, (_, i) => ({
      ...RECORDS[1],
      rid: `evse-${i}`,
      v: i + 0.5,
      u: 'Wh',
      ql: 'good',
      t: NOW - i,
    }))
    // cbor-x's default encoder shares record structures through tags: still plain CBOR items.
    expect(countCborBody(encode(records), limits)?.records).toBe(300)
    const definite = new Uint8Array([0x83, 0xa0, 0x80, 0xf9, 0x3c, 0x00])
    expect(countCborBody(definite, limits)).toEqual({ records: 3, items: 3 })
    const indefinite = new Uint8Array([
      0x9f, 0xa1, 0x61, 0x76, 0x01, 0x7f, 0x61, 0x61, 0x61, 0x62, 0xff, 0xff,
    ])
    expect(countCborBody(indefinite, limits)).toEqual({ records: 2, items: 4 })
    const tagged = new Uint8Array([0xd9, 0xd9, 0xf7, 0x81, 0xc1, 0x1a, 0x5f, 0x00, 0x00, 0x00])
    expect(countCborBody(tagged, limits)).toEqual({ records: 1, items: 2 })
  })

  test('CBOR that is not a well-formed array is undefined (decoding then says why)', () => {
    for (const bytes of [
      [0xa0],
      [0x83, 0xa0],
      [0x9f, 0xa0],
      [0x81, 0x5a, 0xff, 0xff, 0xff, 0xff],
      [0x81, 0xfc],
      [0x81, 0xff],
      [],
    ]) {
      expect(countCborBody(new Uint8Array(bytes), limits), JSON.stringify(bytes)).toBeUndefined()
    }
  })

  test('checkBodySize refuses too many records or parts with 413 naming api.max_records, and lets the rest through', () => {
    const status = (body: Uint8Array, type: string, max: number) => {
      try {
        checkBodySize(body, type, max)
        return 200
      } catch (error) {
        return (error as HttpError).status
      }
    }
    const json = text(JSON.stringify(Array(200).fill(RECORDS[0])))
    expect(status(json, 'application/json', 200)).toBe(200)
    expect(status(json, 'application/json', 199)).toBe(413)
    expect(status(encode(Array(200).fill(RECORDS[0])), 'application/cbor', 199)).toBe(413)
    expect(status(encode(Array(200).fill(RECORDS[0])), 'application/cbor', 200)).toBe(200)
    // Few records, but a value nested in one of them larger than the whole allowance.
    const nested = text(`[{"kind":[${Array(20_000).fill('1').join(',')}]}]`)
    expect(status(nested, 'application/json', 1000)).toBe(413)
    const error = thrown(() => checkBodySize(json, 'application/x-ndjson', 10))
    expect((error as HttpError).errorName).toBe('TooManyRecords')
    expect(error.message).toContain('api.max_records')
    expect((error as HttpError).extra).toEqual({ maxRecords: 10 })
    // parseIngestBody applies the same limit.
    expect((thrown(() => parseIngestBody(json, 'application/json', 199)) as HttpError).status).toBe(413)
    expect(parseIngestBody(json, 'application/json', 200)).toHaveLength(200)
  })
})

interface FuzzReport {
  runs: number
  arrays: number
  decodeErrors: number
  unsupported: number
  violations: string[]
}

/**
 * Feed random and mutated bodies to `parse`; every outcome must be an array, a DecodeError, or
 * (for a type the API does not take) an HttpError 415. Self-contained so that it can also be
 * sent to a child process as source text.
 */
function fuzzIngestBodies(
  parse: (body: Uint8Array, type: string) => unknown,
  types: readonly string[],
  supported: readonly string[],
  seedBodies: readonly (readonly number[])[],
  iterations: number,
  seed: number,
): FuzzReport {
  let state = seed >>> 0
  // mulberry32
  const random = (): number => {
    state = (state + 0x6d2b79f5) >>> 0
    let t = state
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
  const below = (n: number): number => Math.floor(random() * n)
  // JSON punctuation, whitespace, UTF-8 lead/continuation bytes, CBOR headers and breaks.
  const interesting = [
    0x00, 0x0a, 0x0d, 0x20, 0x22, 0x2c, 0x3a, 0x5b, 0x5c, 0x5d, 0x7b, 0x7d, 0x7f, 0x80, 0x9f, 0xbf, 0xc3,
    0xa9, 0xe2, 0xf0, 0xff, 0x1b, 0x5b, 0x7a, 0x9b, 0xd8, 0xf9, 0xfb,
  ]
  const report: FuzzReport = { runs: 0, arrays: 0, decodeErrors: 0, unsupported: 0, violations: [] }
  for (let run = 0; run < iterations; run++) {
    const type = types[below(types.length)]!
    let bytes: number[]
    const strategy = below(4)
    if (strategy === 0 || seedBodies.length === 0) {
      bytes = Array.from({ length: below(96) }, () => below(256))
    } else {
      bytes = [...seedBodies[below(seedBodies.length)]!]
      const edits = 1 + below(strategy === 3 ? 8 : 2)
      for (let edit = 0; edit < edits; edit++) {
        const at = below(bytes.length + 1)
        const operation = below(6)
        if (operation === 0 && at < bytes.length) bytes[at] = below(256)
        else if (operation === 1 && at < bytes.length) bytes[at] = bytes[at]! ^ (1 << below(8))
        else if (operation === 2) bytes.splice(at, 0, interesting[below(interesting.length)]!)
        else if (operation === 3) bytes.splice(at, 1 + below(4))
        else if (operation === 4) bytes.length = at
        else bytes.splice(at, 0, ...bytes.slice(below(bytes.length + 1), below(bytes.length + 1)))
      }
    }
    const body = new Uint8Array(bytes)
    report.runs++
    const label = (): string =>
      `run ${run} (${type || "''"}, ${bytes
        .slice(0, 48)
        .map((byte) => byte.toString(16).padStart(2, '0'))
        .join('')})`
    try {
      const result = parse(body, type)
      if (Array.isArray(result)) report.arrays++
      else report.violations.push(`${label()}: returned ${typeof result}`)
    } catch (error) {
      const name = (error as { name?: unknown } | null)?.name
      const message = String((error as { message?: unknown } | null)?.message ?? '')
      const status = (error as { status?: unknown } | null)?.status
      if (name === 'DecodeError' && message !== '' && supported.includes(type)) report.decodeErrors++
      else if (name === 'HttpError' && status === 415 && !supported.includes(type)) report.unsupported++
      else report.violations.push(`${label()}: threw ${String(name)} ${message}`)
    }
    if (report.violations.length >= 10) break
  }
  return report
}

const SUPPORTED_TYPES = [
  'application/json',
  'application/x-ndjson',
  'application/ndjson',
  'application/jsonl',
  '',
]
const ndjson = (records: readonly unknown[]): string =>
  records.map((record) => JSON.stringify(record)).join('\n')

describe('parseIngestBody fuzz', () => {
  test('random and mutated JSON/NDJSON bodies give an array or a DecodeError, nothing else', () => {
    const seeds = [
      JSON.stringify(RECORDS),
      ndjson(RECORDS),
      `${ndjson(RECORDS)}\n\n`,
      '[]',
      '[{"kind":"meter","rid":"m\\u00e9","q":"temperature","v":-1.5e3,"t":0,"u":"°C"},null,[1,{"a":[]}]]',
      '{"kind":"meter"}',
    ].map((seed) => [...text(seed)])
    const report = fuzzIngestBodies(
      parseIngestBody,
      [...SUPPORTED_TYPES, 'text/plain', 'application/cbor+json'],
      SUPPORTED_TYPES,
      seeds,
      10_000,
      0x0e1dbeef,
    )
    expect(report.violations).toEqual([])
    expect(report.runs).toBe(10_000)
    // The fuzz reaches every outcome, so a change that broke one would show.
    expect(report.arrays).toBeGreaterThan(100)
    expect(report.decodeErrors).toBeGreaterThan(1000)
    expect(report.unsupported).toBeGreaterThan(100)
  })

  test('the fuzz harness reports a parser that throws something else', () => {
    const report = fuzzIngestBodies(
      () => {
        throw new TypeError('boom')
      },
      ['application/json'],
      ['application/json'],
      [],
      5,
      1,
    )
    expect(report.violations).toHaveLength(5)
    expect(report.violations[0]).toMatch(/TypeError boom/)
  })
})

/*
 * CBOR bodies decoded in a separate Bun process. Under Bun, cbor-x loads the native
 * `cbor-extract` addon, which mis-decodes CBOR holding a non-ASCII string followed by more
 * strings (DecodeError "string.slice is not a function"), and aborts or segfaults the process
 * on such bodies and on any body past about 8 KB (a batch of ~120 plain ASCII records). A
 * crash inside the test worker would take every other test with it, so these cases run in a
 * child, twice: with the decoder as shipped (the data plane must keep cbor-x off the
 * addon by itself) and with cbor-x's JavaScript decoder (CBOR_NATIVE_ACCELERATION_DISABLED=true),
 * which shows that parseIngestBody itself keeps its contract.
 */
const HTTP_API_MODULE = fileURLToPath(new URL('./http-api.ts', import.meta.url))

/** Run `body` (module code that assigns `result`) in a child Bun; `result` comes back as JSON. */
function inChildBun(body: string, nativeCbor: boolean): Promise<ChildOutcome> {
  return runInChildBun({
    imports: [`import { parseIngestBody, validateRecords } from ${JSON.stringify(HTTP_API_MODULE)}`],
    body,
    nativeCbor,
  })
}

const TEMPERATURES = [
  { kind: 'battery', rid: 'bess-1', q: 'temperature', v: 31.5, t: NOW, u: '°C' },
  { kind: 'battery', rid: 'bess-2', q: 'temperature', v: 29, t: NOW, u: '°C', ql: 'good' },
]

const DEGREES_BODY = `
const body = new Uint8Array(${JSON.stringify([...encode(TEMPERATURES)])})
try {
  result = validateRecords(parseIngestBody(body, 'application/cbor'), ${NOW}).result
} catch (error) {
  result = String(error)
}
`

const CBOR_SEEDS = [
  encode(RECORDS),
  encode(TEMPERATURES),
  encode([]),
  encode([
    { kind: 'meter', rid: 'm1', q: 'power', v: -1.5, t: 0, nested: [1, { a: new Uint8Array([1, 2]) }] },
  ]),
  encode({ kind: 'meter' }),
].map((body) => [...body])

const CBOR_FUZZ = `
${fuzzIngestBodies.toString()}
result = fuzzIngestBodies(
  parseIngestBody,
  ['application/cbor'],
  ['application/cbor'],
  ${JSON.stringify(CBOR_SEEDS)},
  10000,
  0xc0ffee,
)
`

const expectedDegrees = { accepted: 2, rejected: 0, errors: [] }

const BATCH_SIZE = 1000
const LARGE_BATCH_BODY = `
const records = Array.from({ length: ${BATCH_SIZE} }, (_, i) => ({ kind: 'meter', rid: 'meter-' + i, q: 'power', v: i / 2, t: ${NOW} - i }))
const body = new Uint8Array(${JSON.stringify([...encode(Array.from({ length: BATCH_SIZE }, (_, i) => ({ kind: 'meter', rid: `meter-${i}`, q: 'power', v: i / 2, t: NOW - i })))])})
try {
  const decoded = parseIngestBody(body, 'application/cbor')
  result = { same: JSON.stringify(decoded) === JSON.stringify(records), ...validateRecords(decoded, ${NOW}).result }
} catch (error) {
  result = String(error)
}
`
const expectedLargeBatch = { same: true, accepted: BATCH_SIZE, rejected: 0, errors: [] }

describe.runIf(process.versions.bun !== undefined)('CBOR bodies decoded in a child Bun process', () => {
  test('random and mutated CBOR bodies give an array or a DecodeError (JavaScript CBOR decoder)', async () => {
    const outcome = await inChildBun(CBOR_FUZZ, false)
    expect(outcome).toMatchObject({ status: 0, signal: null, result: { runs: 10_000, violations: [] } })
    const report = outcome.result as FuzzReport
    expect(report.arrays).toBeGreaterThan(100)
    expect(report.decodeErrors).toBeGreaterThan(1000)
  })

  // Regression (fixed in data-plane/cbor-setup.ts): with the native cbor-extract addon, random CBOR bodies crash
  // the Bun process (SIGSEGV / abort) instead of giving a DecodeError: one POST /v1/telemetry
  // can take the node down.
  test('random and mutated CBOR bodies give an array or a DecodeError (CBOR decoder as shipped)', async () => {
    const outcome = await inChildBun(CBOR_FUZZ, true)
    expect(outcome).toMatchObject({ status: 0, signal: null, result: { runs: 10_000, violations: [] } })
  })

  test('a batch of 1000 records decodes (JavaScript CBOR decoder)', async () => {
    expect(await inChildBun(LARGE_BATCH_BODY, false)).toEqual({
      status: 0,
      signal: null,
      result: expectedLargeBatch,
    })
  })

  // Regression (fixed in data-plane/cbor-setup.ts): with the native cbor-extract addon, a CBOR body of plain ASCII
  // records past about 8 KB (here 1000 records, ~70 KB) kills the Bun process (SIGSEGV/abort).
  test('a batch of 1000 records decodes (CBOR decoder as shipped)', async () => {
    expect(await inChildBun(LARGE_BATCH_BODY, true)).toEqual({
      status: 0,
      signal: null,
      result: expectedLargeBatch,
    })
  })

  test('temperature readings with the canonical unit °C are accepted (JavaScript CBOR decoder)', async () => {
    expect(await inChildBun(DEGREES_BODY, false)).toEqual({
      status: 0,
      signal: null,
      result: expectedDegrees,
    })
  })

  // Regression (fixed in data-plane/cbor-setup.ts): with the native cbor-extract addon, a CBOR batch of temperature
  // readings carrying u: '°C' (the canonical unit) is refused as "malformed CBOR: string.slice
  // is not a function", or crashes the process.
  test('temperature readings with the canonical unit °C are accepted (CBOR decoder as shipped)', async () => {
    expect(await inChildBun(DEGREES_BODY, true)).toEqual({ status: 0, signal: null, result: expectedDegrees })
  })
})
