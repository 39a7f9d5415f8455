import { describe, expect, test } from 'vitest'
import { decodeCbor, decodeForDisplay, encodeCbor, encodeTelemetryPayload } from './codec.ts'
import type { TelemetryRecord } from './model.ts'

const text = (value: string): Uint8Array => new TextEncoder().encode(value)

/** Run `action`, expect it to throw a DecodeError, and return it. */
function decodeError(action: () => unknown): Error {
  let caught: unknown
  try {
    action()
  } catch (error) {
    caught = error
  }
  expect(caught, 'expected a DecodeError to be thrown').toBeInstanceOf(Error)
  expect((caught as Error).name).toBe('DecodeError')
  return caught as Error
}

const record: TelemetryRecord = {
  kind: 'meter',
  rid: 'm1',
  q: 'power_l1',
  v: -1520.25,
  t: 1_700_000_000_123,
  u: 'W',
  ql: 'estimated',
}

describe('encodeCbor / decodeCbor', () => {
  test.each([
    ['zero', 0],
    ['small integer', 23],
    ['negative integer', -4200],
    ['epoch milliseconds', 1_700_000_000_123],
    ['largest safe integer', Number.MAX_SAFE_INTEGER],
    ['float', 230.125],
    ['tiny float', 1e-300],
    ['empty string', ''],
    ['unicode string', 'temperature in °C – ✓'],
    ['true', true],
    ['false', false],
    ['null', null],
    ['empty array', []],
    ['mixed array', [1, 'two', null, [3], { four: 4 }]],
    ['empty object', {}],
    ['telemetry payload', { v: 1.5, t: 1_700_000_000_000, u: 'kWh', ql: 'good' }],
    ['nested object', { attrs: { phases: 3, ratings: [16, 32], vendor: { name: 'ACME' } }, updated: 1 }],
  ])('round trips %s', (_label, value) => {
    expect(decodeCbor(encodeCbor(value))).toStrictEqual(value)
  })

  test('round trips byte strings as bytes', () => {
    const decoded = decodeCbor(encodeCbor(new Uint8Array([0, 1, 2, 254, 255])))
    expect(decoded).toBeInstanceOf(Uint8Array)
    expect([...(decoded as Uint8Array)]).toEqual([0, 1, 2, 254, 255])
  })

  test('round trips non-finite numbers', () => {
    expect(decodeCbor(encodeCbor(Number.POSITIVE_INFINITY))).toBe(Number.POSITIVE_INFINITY)
    expect(decodeCbor(encodeCbor(Number.NEGATIVE_INFINITY))).toBe(Number.NEGATIVE_INFINITY)
    expect(decodeCbor(encodeCbor(Number.NaN))).toBeNaN()
  })

  test('decodes maps to plain objects', () => {
    const decoded = decodeCbor(encodeCbor({ a: 1 }))
    expect(decoded).not.toBeInstanceOf(Map)
    expect(Object.getPrototypeOf(decoded)).toBe(Object.prototype)
  })

  test('decodes standard CBOR written by another encoder', () => {
    // RFC 8949: {"v": 1, "t": 2} as a definite map of two text keys.
    expect(decodeCbor(new Uint8Array([0xa2, 0x61, 0x76, 0x01, 0x61, 0x74, 0x02]))).toStrictEqual({
      v: 1,
      t: 2,
    })
    // An indefinite-length array [1, 2].
    expect(decodeCbor(new Uint8Array([0x9f, 0x01, 0x02, 0xff]))).toStrictEqual([1, 2])
  })

  test('encodes objects as standard CBOR maps that stand on their own', () => {
    const first = encodeCbor({ v: 1, t: 2 })
    const second = encodeCbor({ v: 3, t: 4 })
    // A plain map (major type 5), not a cbor-x record extension (tag 105) that needs context.
    expect(first[0]! >> 5).toBe(5)
    expect(second[0]! >> 5).toBe(5)
    // The second payload decodes without having seen the first.
    expect(decodeCbor(second)).toStrictEqual({ v: 3, t: 4 })
  })
})

describe('encodeTelemetryPayload', () => {
  test('carries value, time, unit and quality but not what the subject says', () => {
    expect(decodeCbor(encodeTelemetryPayload(record))).toStrictEqual({
      v: -1520.25,
      t: 1_700_000_000_123,
      u: 'W',
      ql: 'estimated',
    })
  })

  test('drops a missing unit and quality instead of encoding them', () => {
    const { u: _u, ql: _ql, ...bare } = record
    const decoded = decodeCbor(encodeTelemetryPayload(bare)) as Record<string, unknown>
    expect(decoded).toStrictEqual({ v: -1520.25, t: 1_700_000_000_123 })
    expect(Object.keys(decoded).sort()).toEqual(['t', 'v'])
  })

  test('drops explicitly undefined unit and quality', () => {
    const decoded = decodeCbor(encodeTelemetryPayload({ ...record, u: undefined, ql: undefined }))
    expect(Object.keys(decoded as object).sort()).toEqual(['t', 'v'])
  })

  test('keeps the unit without a quality and the quality without a unit', () => {
    expect(decodeCbor(encodeTelemetryPayload({ ...record, ql: undefined }))).toStrictEqual({
      v: record.v,
      t: record.t,
      u: 'W',
    })
    expect(decodeCbor(encodeTelemetryPayload({ ...record, u: undefined }))).toStrictEqual({
      v: record.v,
      t: record.t,
      ql: 'estimated',
    })
  })

  test('keeps integer epoch milliseconds exact', () => {
    const t = 1_799_999_999_999
    expect((decodeCbor(encodeTelemetryPayload({ ...record, t })) as { t: number }).t).toBe(t)
  })
})

describe('decodeCbor errors', () => {
  test('throws DecodeError for every truncation of a valid payload', () => {
    const bytes = encodeTelemetryPayload(record)
    expect(bytes.length).toBeGreaterThan(10)
    for (let length = 0; length < bytes.length; length++) {
      decodeError(() => decodeCbor(bytes.subarray(0, length)))
    }
  })

  test.each([
    ['empty input', []],
    ['a lone break code', [0xff]],
    ['trailing bytes after an item', [0x01, 0x02]],
    ['a text string longer than the input', [0x78, 0x10, 0x61]],
    ['a map missing its value', [0xa1, 0x61, 0x76]],
    ['an unterminated indefinite array', [0x9f, 0x01]],
    ['an array claiming 2^64 items', [0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]],
    ['an array claiming 4 billion items', [0x9a, 0xff, 0xff, 0xff, 0xff]],
    ['a map claiming 100 million pairs', [0xba, 0x06, 0xb9, 0x00, 0x00]],
  ])('throws DecodeError on %s', (_label, bytes) => {
    decodeError(() => decodeCbor(new Uint8Array(bytes)))
  })

  test('throws DecodeError on plain text', () => {
    decodeError(() => decodeCbor(text('hello world')))
    decodeError(() => decodeCbor(text('{"v":1,"t":2}')))
  })

  test('says it is CBOR that is malformed and chains the cause', () => {
    const error = decodeError(() => decodeCbor(new Uint8Array([0xff])))
    expect(error.message).toMatch(/CBOR/)
    expect(error.cause).toBeInstanceOf(Error)
  })
})

describe('decodeForDisplay', () => {
  test('shows an empty payload as null', () => {
    expect(decodeForDisplay(new Uint8Array())).toBeNull()
  })

  test('shows CBOR as its decoded value', () => {
    expect(decodeForDisplay(encodeTelemetryPayload(record))).toStrictEqual({
      v: -1520.25,
      t: 1_700_000_000_123,
      u: 'W',
      ql: 'estimated',
    })
  })

  test('shows byte strings inside CBOR as base64', () => {
    expect(decodeForDisplay(encodeCbor({ raw: new Uint8Array([0xff, 0xfe, 0xfd]) }))).toStrictEqual({
      raw: { base64: '//79' },
    })
  })

  test('shows integers too large for a number as decimal strings', () => {
    const shown = decodeForDisplay(
      new Uint8Array([0xa1, 0x61, 0x62, 0x1b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
    )
    expect(shown).toStrictEqual({ b: '18446744073709551615' })
  })

  test('always returns something JSON can serialise', () => {
    const payloads = [
      encodeCbor({ raw: new Uint8Array([1, 2, 3]), list: [new Uint8Array([4])] }),
      new Uint8Array([0x1b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
      text('plain text'),
      new Uint8Array([0xc3, 0x28, 0xa0, 0xa1]),
    ]
    for (const payload of payloads) expect(() => JSON.stringify(decodeForDisplay(payload))).not.toThrow()
  })

  test.each(['hello world', '{"v":1,"t":2}', 'temperature is 21 °C today', 'line one\nline two'])(
    'falls back to text for %j',
    (value) => {
      expect(decodeForDisplay(text(value))).toBe(value)
    },
  )

  test.each([
    [[0xff, 0xfe, 0xfd], '//79'],
    [[0xc3, 0x28, 0xa0, 0xa1], 'wyigoQ=='],
    [[0x80, 0x81, 0x82, 0x83, 0x84], 'gIGCg4Q='],
  ])('falls back to base64 for invalid UTF-8 %j', (bytes, base64) => {
    expect(decodeForDisplay(new Uint8Array(bytes))).toStrictEqual({ base64 })
  })
})
