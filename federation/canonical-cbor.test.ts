import { describe, expect, it, test } from 'vitest'
import { prng, thrown } from '../test/helpers/check.ts'
import { decodeFederationCbor, encodeCanonical } from './canonical-cbor.ts'

const hex = (bytes: Uint8Array): string => Buffer.from(bytes).toString('hex')
const unhex = (text: string): Uint8Array => new Uint8Array(Buffer.from(text, 'hex'))

describe('encodeCanonical: RFC 8949 Appendix A vectors', () => {
  it.each([
    [0, '00'],
    [1, '01'],
    [10, '0a'],
    [23, '17'],
    [24, '1818'],
    [25, '1819'],
    [100, '1864'],
    [255, '18ff'],
    [256, '190100'],
    [1000, '1903e8'],
    [65535, '19ffff'],
    [65536, '1a00010000'],
    [1000000, '1a000f4240'],
    [2 ** 32 - 1, '1affffffff'],
    [2 ** 32, '1b0000000100000000'],
    [1000000000000, '1b000000e8d4a51000'],
    [Number.MAX_SAFE_INTEGER, '1b001fffffffffffff'],
    [-1, '20'],
    [-10, '29'],
    [-24, '37'],
    [-25, '3818'],
    [-100, '3863'],
    [-256, '38ff'],
    [-257, '390100'],
    [-1000, '3903e7'],
    [-(2 ** 32), '3affffffff'],
    [-(2 ** 32) - 1, '3b0000000100000000'],
    [Number.MIN_SAFE_INTEGER, '3b001ffffffffffffe'],
  ])('integer %d → %s', (value, expected) => {
    expect(hex(encodeCanonical(value))).toBe(expected)
  })

  it.each([
    [1.5, 'f93e00'],
    [1.1, 'fb3ff199999999999a'],
    [-4.1, 'fbc010666666666666'],
    [2 ** -24, 'f90001'], // the RFC's 5.960464477539063e-8, the smallest float16 subnormal
    [0.00006103515625, 'f90400'],
    [0.5, 'f93800'],
    [-1.5, 'f9be00'],
    [65503.5, 'fa477fdf80'], // not a float16 (its ulp at that size is 32), exact in float32
    [0.1, 'fb3fb999999999999a'],
  ])('float %d → %s (shortest width that keeps the value)', (value, expected) => {
    expect(hex(encodeCanonical(value))).toBe(expected)
  })

  it.each([
    [1.0, '01'],
    [0.0, '00'],
    [-4.0, '23'],
    [65504.0, '19ffe0'],
    [100000.0, '1a000186a0'],
  ])('integral float %d → integer %s (no float where an integer fits)', (value, expected) => {
    expect(hex(encodeCanonical(value))).toBe(expected)
  })

  it('encodes -0 as the integer 0 (numeric reduction), not the RFC preferred f98000', () => {
    // RFC 8949 Appendix A lists -0.0 → f98000 for preferred serialisation; ARCHITECTURE §6 asks
    // for "no floats where an integer fits", and the encoder reduces -0 to 0 like any integral
    // float. Both ends hash the same bytes either way; the sign of zero does not survive.
    expect(hex(encodeCanonical(-0))).toBe('00')
    expect(hex(encodeCanonical({ x: -0 }))).toBe(hex(encodeCanonical({ x: 0 })))
  })

  // Integral doubles at or above 2^53 fit no safe integer, so a float is the only encoding that
  // keeps them; RFC 8949 Appendix A gives these vectors.
  test('3.4028234663852886e38 → fa7f7fffff (RFC 8949 Appendix A)', () => {
    expect(hex(encodeCanonical(3.4028234663852886e38))).toBe('fa7f7fffff')
  })
  test('1.0e+300 → fb7e37e43c8800759c (RFC 8949 Appendix A)', () => {
    expect(hex(encodeCanonical(1.0e300))).toBe('fb7e37e43c8800759c')
  })

  it.each([
    [false, 'f4'],
    [true, 'f5'],
    [null, 'f6'],
  ])('simple %s → %s', (value, expected) => {
    expect(hex(encodeCanonical(value))).toBe(expected)
  })

  it.each([
    ['', '60'],
    ['a', '6161'],
    ['IETF', '6449455446'],
    ['"\\', '62225c'],
    ['\u00fc', '62c3bc'],
    ['\u6c34', '63e6b0b4'],
    ['\u{10151}', '64f0908591'],
  ])('text %j → %s', (value, expected) => {
    expect(hex(encodeCanonical(value))).toBe(expected)
  })

  it('text of 24 and 256 bytes takes a one- and two-byte length', () => {
    expect(hex(encodeCanonical('x'.repeat(23))).slice(0, 2)).toBe('77')
    expect(hex(encodeCanonical('x'.repeat(24))).slice(0, 4)).toBe('7818')
    expect(hex(encodeCanonical('x'.repeat(256))).slice(0, 6)).toBe('790100')
  })

  it.each([
    [new Uint8Array(0), '40'],
    [new Uint8Array([1, 2, 3, 4]), '4401020304'],
    [Buffer.from([0xff]), '41ff'],
  ])('bytes %s → %s', (value, expected) => {
    expect(hex(encodeCanonical(value))).toBe(expected)
  })

  it.each([
    [[], '80'],
    [[1, 2, 3], '83010203'],
    [[1, [2, 3], [4, 5]], '8301820203820405'],
    [
      Array.from({ length: 25 }, (_, i) => i + 1),
      '98190102030405060708090a0b0c0d0e0f101112131415161718181819',
    ],
    [['a', { b: 'c' }], '826161a161626163'],
  ])('array %j → %s', (value, expected) => {
    expect(hex(encodeCanonical(value))).toBe(expected)
  })

  it.each([
    [{}, 'a0'],
    [{ a: 1, b: [2, 3] }, 'a26161016162820203'],
    [{ a: 'A', b: 'B', c: 'C', d: 'D', e: 'E' }, 'a56161614161626142616361436164614461656145'],
  ])('map %j → %s', (value, expected) => {
    expect(hex(encodeCanonical(value))).toBe(expected)
  })
})

describe('encodeCanonical: float widths against every float16 and random float32/float64', () => {
  const half = new DataView(new ArrayBuffer(2))
  /** The number a float16 bit pattern stands for (computed here, not by the code under test). */
  function fromHalf(bits: number): number {
    const sign = bits & 0x8000 ? -1 : 1
    const exponent = (bits >> 10) & 0x1f
    const fraction = bits & 0x3ff
    if (exponent === 0) return sign * fraction * 2 ** -24
    return sign * (1 + fraction / 1024) * 2 ** (exponent - 15)
  }

  const halfValues = new Set<number>()
  for (let bits = 0; bits < 0x10000; bits++)
    if (((bits >> 10) & 0x1f) !== 0x1f) halfValues.add(fromHalf(bits))

  it('every finite non-integral float16 value is encoded as f9 with exactly its bits', () => {
    const wrong: string[] = []
    for (let bits = 0; bits < 0x10000; bits++) {
      if (((bits >> 10) & 0x1f) === 0x1f) continue
      const value = fromHalf(bits)
      if (Number.isInteger(value)) continue
      half.setUint16(0, bits)
      const expected = `f9${hex(new Uint8Array(half.buffer))}`
      const actual = hex(encodeCanonical(value))
      if (actual !== expected) wrong.push(`${value}: ${actual} (want ${expected})`)
    }
    expect(wrong.slice(0, 5)).toEqual([])
  })

  it('random float32 values that float16 cannot hold are encoded as fa with their bits', () => {
    const random = prng(32)
    const view = new DataView(new ArrayBuffer(4))
    let checked = 0
    while (checked < 3000) {
      view.setUint32(0, Math.floor(random() * 2 ** 32))
      const value = view.getFloat32(0)
      if (!Number.isFinite(value) || Number.isInteger(value) || halfValues.has(value)) continue
      expect(hex(encodeCanonical(value))).toBe(`fa${hex(new Uint8Array(view.buffer))}`)
      checked++
    }
  })

  it('random doubles that float32 cannot hold are encoded as fb with their bits', () => {
    const random = prng(64)
    const view = new DataView(new ArrayBuffer(8))
    let checked = 0
    while (checked < 3000) {
      view.setUint32(0, Math.floor(random() * 2 ** 32))
      view.setUint32(4, Math.floor(random() * 2 ** 32))
      const value = view.getFloat64(0)
      if (!Number.isFinite(value) || Number.isInteger(value) || Math.fround(value) === value) continue
      expect(hex(encodeCanonical(value))).toBe(`fb${hex(new Uint8Array(view.buffer))}`)
      checked++
    }
  })
})

describe('encodeCanonical: maps', () => {
  it('sorts keys by their encoded bytes, so shorter keys come first', () => {
    expect(hex(encodeCanonical({ b: 1, a: 2, aa: 3 }))).toBe('a3616102616201626161' + '03')
  })

  it('sorts by UTF-8 bytes, not by JavaScript (UTF-16) string order', () => {
    // Both keys are 4 UTF-8 bytes; ef… sorts before f0…, although JS orders the emoji first.
    const value = { '\u{1F600}': 1, '\uff61a': 2 }
    expect(hex(encodeCanonical(value))).toBe('a2' + '64efbda16102' + '64f09f988001')
  })

  it('puts a 23-byte key before a 24-byte key whatever their letters', () => {
    const long = 'a'.repeat(24)
    const short = 'z'.repeat(23)
    const encoded = hex(encodeCanonical({ [long]: 1, [short]: 2 }))
    expect(encoded.indexOf('77')).toBe(2)
    expect(encoded.indexOf('7818')).toBeGreaterThan(encoded.indexOf('77'))
  })

  it('omits keys whose value is undefined', () => {
    expect(hex(encodeCanonical({ a: 1, b: undefined }))).toBe(hex(encodeCanonical({ a: 1 })))
    expect(hex(encodeCanonical({ z: undefined }))).toBe('a0')
  })

  it('encodes the same object identically whatever order its keys were inserted in', () => {
    const random = prng(7)
    const keys = ['v', 'provider', 'consumer', 'purpose', 'created', 'nonce', 'grants', 'x', 'yy', 'ü', '10']
    const values: Record<string, unknown> = {}
    for (const key of keys)
      values[key] = { n: key.length, list: [key, 1.5, null], inner: { b: true, a: false } }
    const reference = hex(encodeCanonical(values))
    for (let round = 0; round < 50; round++) {
      const shuffled = [...keys]
      for (let i = shuffled.length - 1; i > 0; i--) {
        const j = Math.floor(random() * (i + 1))
        ;[shuffled[i], shuffled[j]] = [shuffled[j]!, shuffled[i]!]
      }
      const copy: Record<string, unknown> = {}
      for (const key of shuffled) {
        const inner = values[key] as Record<string, unknown>
        copy[key] = { inner: { a: false, b: true }, list: inner.list, n: inner.n }
      }
      expect(hex(encodeCanonical(copy))).toBe(reference)
    }
  })
})

describe('encodeCanonical: whole numbers beyond 2^53', () => {
  it('travel as the shortest exact float, since they are not exact integers in JavaScript', () => {
    expect(hex(encodeCanonical(2 ** 53))).toBe('fa5a000000')
    expect(hex(encodeCanonical(-(2 ** 53)))).toBe('fada000000')
    expect(decodeFederationCbor(encodeCanonical({ n: [1, 2 ** 60] }))).toEqual({ n: [1, 2 ** 60] })
  })
})

describe('encodeCanonical: refusals', () => {
  it.each([
    ['NaN', Number.NaN, ''],
    ['Infinity', Number.POSITIVE_INFINITY, ''],
    ['-Infinity', { a: { b: Number.NEGATIVE_INFINITY } }, 'a.b'],
    ['a function', { list: [1, () => 1] }, 'list[1]'],
    ['a Map', { a: new Map([['k', 1]]) }, 'a'],
    ['a Date', { when: new Date(0) }, 'when'],
    ['a class instance', { x: new (class Point {})() }, 'x'],
    ['a Set', [new Set([1])], '[0]'],
    ['a bigint', { big: 1n }, 'big'],
    ['a symbol', { s: Symbol('s') }, 's'],
    ['undefined inside an array', [1, undefined], '[1]'],
    ['undefined at the top', undefined, ''],
  ])('refuses %s with an AgreementFormatError naming the path', (_, value, path) => {
    const error = thrown(() => encodeCanonical(value))
    expect(error.name).toBe('AgreementFormatError')
    expect(error.path).toBe(path)
  })

  it('refuses deep nesting with an AgreementFormatError, not a stack overflow', () => {
    let deep: unknown = 1
    for (let i = 0; i < 10_000; i++) deep = [deep]
    const error = thrown(() => encodeCanonical({ deep }))
    expect(error.name).toBe('AgreementFormatError')
    expect(error.path?.startsWith('deep[0][0]')).toBe(true)
  })

  it('accepts nesting as deep as the decoder accepts, and no deeper', () => {
    let value: unknown = 1
    for (let i = 0; i < 32; i++) value = [value]
    expect(decodeFederationCbor(encodeCanonical(value))).toEqual(value)
    expect(thrown(() => encodeCanonical([value])).name).toBe('AgreementFormatError')
  })
})

describe('decodeFederationCbor', () => {
  /** A random JSON-like value (no -0: the encoder reduces it to 0 on purpose). */
  function randomValue(random: () => number, depth: number): unknown {
    const pick = Math.floor(random() * (depth > 3 ? 8 : 11))
    const int = (max: number) => Math.floor(random() * max)
    switch (pick) {
      case 0:
        return null
      case 1:
        return random() < 0.5
      case 2:
        return int(2 ** 53) * (random() < 0.5 ? -1 : 1) || 0
      case 3:
        return [0, 23, 24, 255, 256, 65535, 65536, 2 ** 32 - 1, 2 ** 32, -1, -25, -257][int(12)]
      case 4: {
        const value = (random() - 0.5) * 10 ** int(20)
        return Number.isInteger(value) || Object.is(value, -0) ? 0.25 : value
      }
      case 5:
        return [1.5, -0.75, 2 ** -24, 1.1, 3.4e-30, 65503.5][int(6)]
      case 6: {
        const chars = ['a', 'Z', '0', ' ', '\u00fc', '\u6c34', '\u{1F600}', '"', '\n', '\u0000']
        return Array.from({ length: int(30) }, () => chars[int(chars.length)]).join('')
      }
      case 7:
        return new Uint8Array(Array.from({ length: int(40) }, () => int(256)))
      case 8:
      case 9: {
        const out: Record<string, unknown> = {}
        const count = int(6)
        for (let i = 0; i < count; i++) out[`k${int(50)}${i % 2 ? 'ü' : ''}`] = randomValue(random, depth + 1)
        return out
      }
      default:
        return Array.from({ length: int(6) }, () => randomValue(random, depth + 1))
    }
  }

  it('gives back what encodeCanonical encoded, for 2000 random JSON-like values', () => {
    const random = prng(2024)
    for (let i = 0; i < 2000; i++) {
      const value = randomValue(random, 0)
      const encoded = encodeCanonical(value)
      const decoded = decodeFederationCbor(encoded)
      expect(decoded).toEqual(value)
      // Re-encoding what was decoded is byte-identical: the encoding is a fixed point.
      expect(hex(encodeCanonical(decoded))).toBe(hex(encoded))
    }
  })

  it('decodes byte strings as bytes', () => {
    const decoded = decodeFederationCbor(unhex('4401020304'))
    expect(decoded).toBeInstanceOf(Uint8Array)
    expect([...(decoded as Uint8Array)]).toEqual([1, 2, 3, 4])
  })

  it.each([
    ['1b0000000100000000', 2 ** 32],
    ['1b001fffffffffffff', Number.MAX_SAFE_INTEGER],
    ['3b001ffffffffffffe', Number.MIN_SAFE_INTEGER],
    ['1b0000000000000001', 1], // non-shortest 64-bit form from some other encoder
    ['a1616b1b000001890a2b3c4d', { k: 0x1890a2b3c4d }],
  ])('turns the 64-bit integer %s into a number', (bytes, expected) => {
    expect(decodeFederationCbor(unhex(bytes))).toStrictEqual(expected)
  })

  it.each([
    ['2^53', '1b0020000000000000'],
    ['2^64 - 1', '1bffffffffffffffff'],
    ['-2^53', '3b001fffffffffffff'],
    ['-2^64', '3bffffffffffffffff'],
    ['2^53 inside a map', 'a1616b1b0020000000000000'],
    ['2^53 inside an array', '82011b0020000000000000'],
  ])('refuses the integer %s with DecodeError', (_, bytes) => {
    expect(thrown(() => decodeFederationCbor(unhex(bytes))).name).toBe('DecodeError')
  })

  it.each([
    ['truncated', '82'],
    ['trailing bytes', '0000'],
    ['a cut-off string', '6461'],
    ['a reserved additional-info value', '1c'],
  ])('refuses %s input with DecodeError', (_, bytes) => {
    expect(thrown(() => decodeFederationCbor(unhex(bytes))).name).toBe('DecodeError')
  })

  it('refuses deep nesting with DecodeError, not a stack overflow', () => {
    const bytes = new Uint8Array(60_001).fill(0x81)
    bytes[60_000] = 0
    expect(thrown(() => decodeFederationCbor(bytes)).name).toBe('DecodeError')
    const moderate = new Uint8Array(41).fill(0x81)
    moderate[40] = 0
    expect(thrown(() => decodeFederationCbor(moderate)).name).toBe('DecodeError')
  })
})
