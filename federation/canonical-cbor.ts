/**
 * Deterministic CBOR (RFC 8949 §4.2.1, core deterministic encoding) for what gets signed:
 * definite lengths, integers in their shortest form, floats only where no integer fits and then
 * in the shortest width that keeps the value, and map keys sorted by their encoded bytes.
 * Two parties that hold the same document therefore hash the same bytes.
 */
import { DecodeError, decodeCbor } from '../data-plane/index.ts'
import { AgreementFormatError } from './errors.ts'

class Writer {
  private buffer = new Uint8Array(256)
  private view = new DataView(this.buffer.buffer)
  length = 0

  private ensure(extra: number): void {
    if (this.length + extra <= this.buffer.length) return
    let size = this.buffer.length * 2
    while (size < this.length + extra) size *= 2
    const next = new Uint8Array(size)
    next.set(this.buffer.subarray(0, this.length))
    this.buffer = next
    this.view = new DataView(next.buffer)
  }

  byte(value: number): void {
    this.ensure(1)
    this.buffer[this.length++] = value
  }

  bytes(value: Uint8Array): void {
    this.ensure(value.length)
    this.buffer.set(value, this.length)
    this.length += value.length
  }

  head(major: number, value: number): void {
    this.ensure(9)
    this.length = putHead(this.buffer, this.view, this.length, major, value)
  }

  float(value: number): void {
    const half = toFloat16(value)
    if (half !== undefined) {
      this.byte(0xf9)
      this.ensure(2)
      this.view.setUint16(this.length, half)
      this.length += 2
    } else if (Math.fround(value) === value) {
      this.byte(0xfa)
      this.ensure(4)
      this.view.setFloat32(this.length, value)
      this.length += 4
    } else {
      this.byte(0xfb)
      this.ensure(8)
      this.view.setFloat64(this.length, value)
      this.length += 8
    }
  }

  result(): Uint8Array {
    return this.buffer.slice(0, this.length)
  }
}

/**
 * Write a CBOR head (major type and argument, shortest form) at `at`; returns where it ends.
 * The caller makes room: at most 9 bytes.
 */
export function putHead(
  buffer: Uint8Array,
  view: DataView,
  at: number,
  major: number,
  value: number,
): number {
  const type = major << 5
  if (value < 24) {
    buffer[at] = type | value
    return at + 1
  }
  if (value < 0x100) {
    buffer[at] = type | 24
    buffer[at + 1] = value
    return at + 2
  }
  if (value < 0x10000) {
    buffer[at] = type | 25
    view.setUint16(at + 1, value)
    return at + 3
  }
  if (value < 0x100000000) {
    buffer[at] = type | 26
    view.setUint32(at + 1, value)
    return at + 5
  }
  buffer[at] = type | 27
  view.setBigUint64(at + 1, BigInt(value))
  return at + 9
}

/** The float16 bits of `value` when float16 holds it exactly, else undefined. */
function toFloat16(value: number): number | undefined {
  if (value === 0) return Object.is(value, -0) ? 0x8000 : 0
  const sign = value < 0 ? 0x8000 : 0
  const magnitude = Math.abs(value)
  const exponent = Math.floor(Math.log2(magnitude))
  if (exponent > 15 || exponent < -24) return undefined
  if (exponent >= -14) {
    const mantissa = (magnitude / 2 ** exponent - 1) * 1024
    if (!Number.isInteger(mantissa)) return undefined
    return sign | ((exponent + 15) << 10) | mantissa
  }
  const subnormal = magnitude / 2 ** -24
  if (!Number.isInteger(subnormal)) return undefined
  return sign | subnormal
}

const textEncoder = new TextEncoder()

function compareBytes(a: Uint8Array, b: Uint8Array): number {
  const length = Math.min(a.length, b.length)
  for (let i = 0; i < length; i++) if (a[i] !== b[i]) return a[i]! - b[i]!
  return a.length - b.length
}

function write(writer: Writer, value: unknown, path: string, depth: number): void {
  if (depth > 32) throw new AgreementFormatError(path, 'nests too deeply')
  if (value === null || value === true || value === false) {
    writer.byte(value === null ? 0xf6 : value ? 0xf5 : 0xf4)
    return
  }
  if (typeof value === 'number') {
    if (!Number.isFinite(value)) throw new AgreementFormatError(path, 'must be a finite number')
    // Whole numbers beyond 2^53 are not exact integers in JavaScript: they travel as floats.
    if (!Number.isSafeInteger(value)) writer.float(value)
    else if (value >= 0) writer.head(0, value)
    else writer.head(1, -1 - value)
    return
  }
  if (typeof value === 'string' || value instanceof Uint8Array) {
    const bytes = typeof value === 'string' ? textEncoder.encode(value) : value
    writer.head(typeof value === 'string' ? 3 : 2, bytes.length)
    writer.bytes(bytes)
    return
  }
  if (Array.isArray(value)) {
    writer.head(4, value.length)
    value.forEach((item, index) => {
      write(writer, item, `${path}[${index}]`, depth + 1)
    })
    return
  }
  if (typeof value === 'object' && Object.getPrototypeOf(value) === Object.prototype) {
    const entries = Object.entries(value as Record<string, unknown>)
      .filter(([, inner]) => inner !== undefined)
      .map(([key, inner]) => ({ key: encodeCanonical(key), path: path ? `${path}.${key}` : key, inner }))
      .sort((a, b) => compareBytes(a.key, b.key))
    writer.head(5, entries.length)
    for (const entry of entries) {
      writer.bytes(entry.key)
      write(writer, entry.inner, entry.path, depth + 1)
    }
    return
  }
  throw new AgreementFormatError(path, `cannot be encoded canonically (${typeof value})`)
}

/** Encode a plain value (null, boolean, number, string, bytes, arrays, plain objects) canonically. */
export function encodeCanonical(value: unknown): Uint8Array {
  const writer = new Writer()
  write(writer, value, '', 0)
  return writer.result()
}

/**
 * Decode CBOR from a peer or a file into plain values: 64-bit integers come back as numbers
 * when they are safe integers (timestamps are), and anything larger is refused.
 */
export function decodeFederationCbor(bytes: Uint8Array): unknown {
  return normalize(decodeCbor(bytes), '', 0)
}

function normalize(value: unknown, path: string, depth: number): unknown {
  if (depth > 32) throw new DecodeError(`${path || 'value'} nests too deeply`)
  if (typeof value === 'bigint') {
    if (value > BigInt(Number.MAX_SAFE_INTEGER) || value < BigInt(Number.MIN_SAFE_INTEGER)) {
      throw new DecodeError(`${path || 'value'}: integer is too large`)
    }
    return Number(value)
  }
  if (Array.isArray(value)) return value.map((item, index) => normalize(item, `${path}[${index}]`, depth + 1))
  if (typeof value === 'object' && value !== null && !(value instanceof Uint8Array)) {
    const out: Record<string, unknown> = {}
    for (const [key, inner] of Object.entries(value))
      out[key] = normalize(inner, path ? `${path}.${key}` : key, depth + 1)
    return out
  }
  return value
}
